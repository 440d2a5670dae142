"""`canhazgpu serve`: the daemon of one host, an accelerator and never a dependency.

Sibling tasks in one task group, all on one pub/sub subscription (events.EventHub):
- the scanner (scanner.py): GPU truth every interval, as a snapshot plus change events;
- the expiry listener: finalizes a lease the moment Redis reports it expired;
- the owner watcher (watch.py): reclaims a `run` reservation when its supervisor dies;
- the notifier (notify/): events to the users' and the admin's channels, off the loop's path;
- the journal: one log line per state change on the host, whoever made it;
- the lock keeper: one daemon per host, through a Redis key with a TTL;
- the registry heartbeat: the host is listed, daemon up, for every view across hosts.
- the API server (api/server.py): local clients on a unix socket (docs/api.md).
Everything the daemon does is a core call; with no daemon running every command still works.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import redis

from . import hosts, identity
from .api.server import ApiServer
from .config import Config
from .core import Core
from .embedded import RedisServer, private_dir, private_password
from .errors import BackendUnavailable, CanHazGpuError, PoolNotInitialized, boundary
from .notify.service import Notifier
from .events import Disconnected, Event, EventHub, Message, Resync
from .render import line
from .scanner import Scanner
from .store import HostLock, no_space, redacted
from .text import printable
from .waitqueue import QueueBeats
from .watch import Owner, OwnerWatcher, exited, pidfd, same_process

log = logging.getLogger("canhazgpu.serve")

LOCK_TTL_S = 5.0  # a killed daemon's lock frees itself after this
LOCK_RENEW_S = 1.0
RESTART_BACKOFF_S = (0.05, 30.0)  # the private Redis restarted after this, doubling to that
FULL_BYTES = 1 << 20  # less free than this where its AOF is: a full disk


class DaemonRunning(CanHazGpuError):
    """Another daemon already serves this host (or this state directory)."""


class Daemon:
    """The scanner, expiry listener, owner watcher, journal and lock keeper of one host."""

    def __init__(self, config: Config, core: Core | None = None) -> None:
        self.config = config
        self.core = core or Core(config)
        self.scanner = Scanner(self.core, config.seconds("scan_interval"), self.trouble)
        self.watcher: OwnerWatcher | None = None  # needs our identity: made in run()
        self.notifier = Notifier(self.core)
        self.lock: HostLock | None = None
        self.notifications = True  # False: CONFIG refused, expiry found by periodic sweeps
        self.serving = False
        self.api: ApiServer | None = None  # the socket's server, once serving
        self._problems: set[str] = set()  # where something is failing now

    def trouble(self, where: str, err: BaseException | str | None) -> None:
        """Log a problem when it starts and when it ends, not on every retry."""
        if (where in self._problems) == (err is not None):
            return
        if err is None:
            log.info("%s: working again", where)
            self._problems.discard(where)
        else:
            log.warning("%s: %s", where, err)
            self._problems.add(where)

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; raises DaemonRunning / BackendUnavailable at start."""
        store = self.core.store
        caller = await anyio.to_thread.run_sync(identity.current, self.config.admin_group)
        self.watcher = OwnerWatcher(self.core, caller, self.trouble)
        self.lock = store.host_lock(json.dumps({
            "machine": socket.gethostname(), "pid": caller.pid, "pid_start": caller.pid_start,
            "since_ms": int(time.time() * 1000)}), LOCK_TTL_S)
        await self._take_lock()
        try:
            hub = self.core.hub = EventHub(store, (store.expired_channel,))
            self.core.beats = QueueBeats(self.core)
            async with hub.running():
                await self._prepare(hub)
                with hub.observing(self._journal):
                    await self._serving(hub, task_status)
        finally:
            with anyio.CancelScope(shield=True):
                if self.serving:
                    await self._registered("down")  # shown down at once, never dropped
                await self._drop_lock()
            if self.serving:
                log.info("stopped")

    async def _serving(self, hub: EventHub, task_status) -> None:
        """The daemon's tasks, each on the host's one subscription."""
        async with anyio.create_task_group() as tg:
            await tg.start(self._listening, hub, self._expiry_listener,
                           lambda item: isinstance(item, Message))
            await tg.start(self._listening, hub, self.watcher.run, self.watcher.wants)
            await tg.start(self._listening, hub, self.notifier.run,  # notify/
                           self.notifier.wants)
            await tg.start(self.scanner.run)
            await tg.start(self.core.beats.run)
            self.api = ApiServer(self.core, hub)
            await tg.start(self.api.serve, self.config.api_path)
            tg.start_soon(self._keep_lock)
            await tg.start(self._keep_registered)
            self.serving = True
            log.info("serving host %s: Redis %s, scanning every %gs",
                     self.config.host_name, redacted(self.core.store.url),
                     self.scanner.interval_s)
            task_status.started()

    async def _prepare(self, hub: EventHub) -> None:
        """Subscribed, notifications on, leases that ran out meanwhile finalized."""
        if not hub.connected.is_set():
            raise BackendUnavailable(self.core.store.unreachable(
                ConnectionError("the subscription failed")))
        await self._enable_notifications()
        await self._sweep()

    async def _listening(self, hub: EventHub, consumer, wants=None, *,
                         task_status=anyio.TASK_STATUS_IGNORED) -> None:
        async with hub.listen(wants=wants) as stream:
            await consumer(stream, task_status=task_status)

    # ------------------------------------------------------------------ the lock
    async def _take_lock(self) -> None:
        if await self.lock.acquire():
            return
        holder = await self.lock.holder()
        if holder is not None and await self.lock.without_ttl():
            log.warning("the host lock %s has no TTL (%s): taken over after %gs",
                        self.core.store.key("daemon"), printable(holder[:200]), LOCK_TTL_S)
            await anyio.sleep(LOCK_TTL_S)  # a live daemon renews it with a TTL meanwhile
            if await self.lock.without_ttl():
                await self.lock.break_stale(holder)
                if await self.lock.acquire():
                    return
                holder = await self.lock.holder()
        if holder is not None and await anyio.to_thread.run_sync(self._dead_here, holder):
            await self.lock.break_stale(holder)
            if await self.lock.acquire():
                log.info("took over from a daemon that died without unlocking (%s)", holder)
                return
        raise DaemonRunning(f"another canhazgpu daemon is already serving host "
                            f"{self.config.host_name} ({_who(holder)}): stop it first")

    @staticmethod
    def _dead_here(holder: str) -> bool:
        """Whether the lock's owner was a daemon on this machine that no longer runs."""
        try:
            doc = json.loads(holder)
            if doc["machine"] != socket.gethostname():
                return False
            return not same_process(Owner(int(doc["pid"]), float(doc["pid_start"])))
        except (ValueError, KeyError, TypeError):
            return False

    async def _keep_lock(self) -> None:
        while True:
            await anyio.sleep(LOCK_RENEW_S)
            try:
                if await self.lock.renew() or await self.lock.acquire():
                    continue  # renewed, or re-taken after Redis lost it
                holder = await self.lock.holder()
            except CanHazGpuError:
                continue  # the journal reports the outage
            raise DaemonRunning(f"another daemon took over host {self.config.host_name} "
                                f"({_who(holder)}); stopping")

    async def _drop_lock(self) -> None:
        with anyio.move_on_after(5):
            try:
                await self.lock.release()
            except CanHazGpuError:
                pass  # Redis away: the lock frees itself after LOCK_TTL_S

    # ------------------------------------------------------------------ the registry
    async def _keep_registered(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        await self._registered("up")
        task_status.started()
        while True:
            await anyio.sleep(hosts.HEARTBEAT_S)
            await self._registered("up")

    async def _registered(self, op: str) -> None:
        with anyio.move_on_after(5):
            try:
                await hosts.register(self.core, op)
                self.trouble("registry", None)
            except CanHazGpuError as err:
                self.trouble("registry", err)

    # ------------------------------------------------------------------ expiry
    async def _enable_notifications(self) -> None:
        refused = await self.core.store.enable_expiry_notifications()
        if refused is None:
            self.notifications = True
        elif self.notifications:
            self.notifications = False
            log.warning("Redis refused to enable keyspace notifications (%s): expired leases "
                        "are finalized by a sweep every %gs instead", refused,
                        self.scanner.interval_s)

    async def _sweep(self) -> None:
        try:
            await self.core.sweep()
            self.trouble("expiry", None)
        except PoolNotInitialized:
            pass  # no pool, no leases
        except CanHazGpuError as err:
            self.trouble("expiry", err)

    async def _expiry_listener(self, stream, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        store = self.core.store
        while True:
            item = None
            with anyio.move_on_after(None if self.notifications else self.scanner.interval_s):
                item = await stream.receive()
            if item is None:
                await self._sweep()  # no notifications: sweep on a clock
            elif isinstance(item, Message) and store.gpu_of_lease_key(item.data) is not None:
                await self._sweep()
            elif isinstance(item, Resync) and item.reconnected:
                # A restarted Redis may have lost its CONFIG; leases may have run out meanwhile.
                try:
                    await self._enable_notifications()
                except CanHazGpuError as err:
                    self.trouble("expiry", err)
                await self._sweep()

    # ------------------------------------------------------------------ journal
    def _journal(self, item) -> None:
        """One log line per event, as the hub takes it (EventHub.observing)."""
        if isinstance(item, Event):
            log.info("%s", line(item))
            if item.type == "pool_changed":
                self.core.forget_pool()
        elif isinstance(item, Disconnected):
            self.trouble("redis", item.error)
        elif isinstance(item, Resync) and item.reconnected:
            self.trouble("redis", None)


def _who(holder: str | None) -> str:
    try:
        doc = json.loads(holder or "")
        return f"PID {doc['pid']} on {doc['machine']}"
    except (ValueError, KeyError, TypeError):
        return "owner unknown"


# ---------------------------------------------------------------------- embedded Redis
@asynccontextmanager
async def embedded_redis(state_dir: Path, fsync: str = "always"):
    """A private redis-server (AOF on, fsync `fsync`) in state_dir, announced in
    state_dir/redis.url (kept after a stop: clients keep naming this Redis), and started
    again if it dies while we serve."""
    private_dir(state_dir)
    lock_fd = os.open(state_dir / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DaemonRunning(f"another 'canhazgpu serve --embedded-redis' is using "
                                f"{state_dir}: stop it first") from None
        server = RedisServer(state_dir, persist=True, fsync=fsync, log=True,
                             password=private_password(state_dir))
        if await anyio.to_thread.run_sync(_answers, server.socket):
            raise DaemonRunning(f"a redis-server already listens on {server.socket} (left by a "
                                f"killed daemon?): stop it with 'redis-cli -s {server.socket} "
                                "shutdown'")
        await anyio.to_thread.run_sync(server.start)
        url_file = state_dir / "redis.url"
        tmp = state_dir / "redis.url.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the password
        with os.fdopen(fd, "w") as out:
            out.write(server.url + "\n")
        tmp.replace(url_file)  # clients never read half a URL
        log.info("private redis-server at %s (AOF in %s)", redacted(server.url), state_dir)
        try:
            async with anyio.create_task_group() as tg:
                health = RedisHealth(state_dir)
                tg.start_soon(_keep_running, server, health)
                yield server.url, health
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.stop)
                log.info("private redis-server stopped")
    finally:
        os.close(lock_fd)


class RedisHealth:
    """Why the daemon's private redis-server does not answer, when the daemon can tell: a
    full disk is said to users as such (Store.trouble), not as "cannot reach Redis"."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def trouble(self) -> str | None:
        free = disk_free(self.state_dir)
        if free is not None and free < FULL_BYTES:
            return no_space(f"the canhazgpu daemon's Redis (AOF in {self.state_dir})",
                            f"{free} bytes free")
        return None


def disk_free(path: Path) -> int | None:
    """Bytes that can still be written under `path` (root may use the reserved blocks)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


async def _keep_running(server: RedisServer, health: RedisHealth) -> None:
    """Start the private redis-server again (from its AOF) whenever it dies; one that keeps
    dying (a full disk, a broken AOF: its own lines in our log say why) is started again
    less and less often, up to once every RESTART_BACKOFF_S[1]."""
    delay = RESTART_BACKOFF_S[0]
    while True:
        started = anyio.current_time()
        await _exited(server.proc)
        if anyio.current_time() - started > RESTART_BACKOFF_S[1]:
            delay = RESTART_BACKOFF_S[0]  # it ran for a good while: a fresh failure
        log.warning("private redis-server exited (status %s): %sstarting it again in %gs",
                    server.proc.returncode, f"{health.trouble()}; " if health.trouble()
                    else "", delay)
        while True:
            await anyio.sleep(delay)
            delay = min(delay * 2, RESTART_BACKOFF_S[1])
            try:
                await anyio.to_thread.run_sync(server.start)
                log.info("private redis-server running again")
                break
            except CanHazGpuError as err:
                log.warning("private redis-server: %s; trying again in %gs", err, delay)


async def _exited(proc) -> None:
    """Return once our child `proc` has exited (and reap it)."""
    try:
        with pidfd(proc.pid) as fd:
            await exited(fd, lambda: proc.poll() is None)
    except ProcessLookupError:
        pass
    proc.wait()  # it has exited: this only reaps it


def _answers(path: Path) -> bool:
    if not path.exists():
        return False
    client = redis.Redis(unix_socket_path=str(path), socket_connect_timeout=1)
    try:
        client.ping()
        return True
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    except redis.ResponseError:  # NOAUTH and the like: someone is there
        return True
    finally:
        client.close()


# ---------------------------------------------------------------------- the process
async def serve(config: Config, embedded: bool = False, *, prepare=None,
                task_status=anyio.TASK_STATUS_IGNORED) -> None:
    """The `serve` command: a daemon (and its private Redis) until cancelled. Its errors
    come out as the one error they stand for (the daemon's edge).

    `await prepare(core)` runs once Redis is up, before the daemon starts (cli/serve.py)."""
    with boundary():
        async with AsyncExitStack() as stack:
            health = None
            if embedded:
                url, health = await stack.enter_async_context(
                    embedded_redis(config.state_path, config.embedded_fsync))
                config = replace(config, redis_url=url)
            daemon = Daemon(config)
            if health is not None:
                daemon.core.store.trouble = health.trouble
            stack.push_async_callback(daemon.core.aclose)
            if prepare is not None:
                await prepare(daemon.core)
            await daemon.run(task_status=task_status)


class LogLines(logging.Formatter):
    """The daemon's log lines, the time of day formatted once a second: the journal
    writes a line per event, hundreds a second under load."""

    _second: tuple = (None, "")

    def formatTime(self, record, datefmt=None) -> str:
        whole = int(record.created)
        if self._second[0] != whole:
            self._second = (whole, time.strftime(self.default_time_format,
                                                 self.converter(record.created)))
        return self.default_msec_format % (self._second[1], record.msecs)
