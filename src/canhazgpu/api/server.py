"""The daemon's side of the local API (docs/api.md): a unix socket, a request per
connection (or several, one after another, where the client keeps it), the caller taken
from the kernel (SO_PEERCRED, SO_PEERGROUPS), never from the request.

Every request is an operation of the table (ops.py), served for the caller the kernel
names: the same code direct mode runs in-process. What one connection and one uid may cost
is bounded here and in connection.py. A short request is one task that reads, answers and
writes; only a request that lasts (a wait, the events) gets a writer and a hang-up watcher.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket
import time
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path

import anyio

from .. import identity
from ..errors import CanHazGpuError, LimitReached, boundary
from ..identity import Caller
from . import protocol
from .connection import Connection, Requests, peer_credentials, peer_groups, send_all
from .ops import OPS
from .protocol import ProtocolError

log = logging.getLogger("canhazgpu.serve")

ACCOUNT_CACHE_S = 10.0  # a uid's name and the admin group's gid, looked up again after this
ACCOUNTS_KEPT = 10000
ACCEPT_RETRY_S = 0.1
BACKLOG = 4096
OUT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class ApiServer:
    """Answers API requests: the operation table, for the caller the kernel names."""

    def __init__(self, core, hub=None) -> None:
        self.core = core
        self.config = core.config
        self.hub = hub  # the daemon's event subscription, for the events operation
        self.connections = PerUser(self.config.user_connections, "user_connections",
                                   "API connections open at once")
        self.waiters = PerUser(self.config.user_waiters, "user_waiters",
                               "requests queued at once")
        self.kept: dict[Requests, anyio.CancelScope] = {}  # connections that may idle
        self._names: dict[int, tuple[float, str]] = {}
        self._admin_gid: tuple[float, int | None] = (-1.0, None)

    # ------------------------------------------------------------------ the socket
    async def serve(self, path: Path, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        """Listen on `path` (mode 0666: any local user may ask; the kernel says who)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a killed daemon's: we hold the host's lock
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        os.chmod(path, 0o666)
        listener.listen(BACKLOG)
        listener.setblocking(False)
        inode = path.stat().st_ino
        log.info("API on %s", path)
        _more_descriptors()
        try:
            with listener:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._reap)
                    task_status.started()
                    while True:
                        await anyio.wait_readable(listener)
                        await self._accept(listener, tg)
        finally:
            with suppress(OSError):
                if path.stat().st_ino == inode:  # not a successor's socket
                    path.unlink()

    async def _accept(self, listener: socket.socket, tg) -> None:
        """Every connection waiting now, each its own task."""
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno not in OUT_OF:
                    raise
                log.warning("API: cannot accept a connection (%s)", err)
                await anyio.sleep(ACCEPT_RETRY_S)  # until some connection ends
                return
            sock.setblocking(False)
            tg.start_soon(self.handle, sock)

    async def handle(self, sock: socket.socket) -> None:
        """One connection; whatever goes wrong with it ends it, never the daemon."""
        with sock:
            try:
                peer = Peer(*peer_credentials(sock), sock)
                try:
                    with self.connections.one(peer.uid):
                        await self.converse(sock, peer)
                except LimitReached as err:
                    await send_all(sock, protocol.dump(protocol.error_doc(err)))
            except (OSError, TimeoutError):
                pass  # the client went away
            except Exception:  # a bug: logged, the daemon and its other clients go on
                log.exception("API connection failed")

    async def converse(self, sock, peer: Peer) -> None:
        """The connection's requests, each answered before the next is read: a short
        request with "keep": true leaves the connection open for another (a client
        making many calls pays for one connection); any other ends it."""
        requests = Requests(sock)
        with anyio.CancelScope() as scope:  # the reaper's, for a kept connection left idle
            self.kept[requests] = scope
            try:
                while True:
                    reply, keep = await self.answer(requests, peer)
                    if reply is not None:
                        await send_all(sock, protocol.dump({**reply, "keep": True}
                                                           if keep else reply))
                    if not keep:
                        return
            finally:
                del self.kept[requests]
                requests.unwatch()

    async def _reap(self) -> None:
        """End the kept connections that waited KEEP_IDLE_S for a next request: one clock
        for them all, not a timer per request."""
        while True:
            await anyio.sleep(protocol.KEEP_IDLE_S / 4)
            too_old = time.monotonic() - protocol.KEEP_IDLE_S
            for requests, scope in list(self.kept.items()):
                if requests.idle_since is not None and requests.idle_since < too_old:
                    scope.cancel()

    async def answer(self, requests: Requests, peer: Peer) -> tuple[dict | None, bool]:
        """(the reply to the connection's next request, whether the connection stays
        open for another); the reply is None when it was sent already (an operation that
        lasts sends its own lines) or when a kept connection ended between requests."""
        keep = False
        try:
            with boundary():
                doc = await requests.next()
                if doc is None:
                    return None, False
                op = OPS.get(doc.get("op"))  # type: ignore[arg-type]
                if op is None:
                    raise ProtocolError(f"unknown operation {str(doc.get('op'))[:40]!r}: use "
                                        f"one of {', '.join(OPS)}")
                args = doc.get("args") or {}
                if not isinstance(args, dict):
                    raise ProtocolError("args must be a JSON object")
                settings = args.pop("settings", None)
                caller = await self.identify(peer)
                if op.lasting(args):
                    requests.unwatch()  # its hang-up watcher waits on the socket now
                    await self.lasting(peer, op, caller, args, settings)
                    return None, False
                keep = doc.get("keep") is True
                result = await op.serve(Served(self, peer, caller, settings), args)
            return {"ok": protocol.encode(result)}, keep
        except CanHazGpuError as err:
            return protocol.error_doc(err), keep and not isinstance(err, ProtocolError)
        except Exception:
            return _bug(), False

    async def lasting(self, peer: Peer, op, caller: Caller, args: dict, settings) -> None:
        """An operation that streams lines (a wait, the events) until it ends or the client
        hangs up: a writer task takes its lines, in order."""
        async with anyio.create_task_group() as tg:
            conn = Connection(peer.sock, tg)
            tg.start_soon(conn.writer)
            try:
                with boundary():
                    result = await op.serve(Served(self, peer, caller, settings, conn), args)
                reply = {"ok": protocol.encode(result)}
            except CanHazGpuError as err:
                reply = protocol.error_doc(err)
            except Exception:
                reply = _bug()
            await conn.send(reply)
            conn.done()

    # ------------------------------------------------------------------ identity
    async def identify(self, peer: Peer) -> Caller:
        """The caller of a connection, from its credentials: admin rights by gid (its
        supplementary groups, from the kernel), never by name. Names are looked up (NSS:
        blocking, off the loop) once per ACCOUNT_CACHE_S, so a kept connection's rights
        follow the accounts as a new one's would."""
        now = time.monotonic()
        uid = peer.uid
        known = self._names.get(uid)
        if known is None or known[0] < now:
            if len(self._names) > ACCOUNTS_KEPT:
                self._names.clear()
            name = await anyio.to_thread.run_sync(identity.user_name, uid)
            known = self._names[uid] = (now + ACCOUNT_CACHE_S, name)
        admin = uid == 0
        if not admin and self.config.admin_group:
            admin_gid = await self.admin_gid(now)
            admin = admin_gid is not None and admin_gid in peer_groups(peer.sock)
        return Caller(user=known[1], uid=uid, pid=peer.pid, pid_start=0.0, is_admin=admin)

    async def admin_gid(self, now: float) -> int | None:
        until, gid = self._admin_gid
        if until < now:
            gid = await anyio.to_thread.run_sync(_group_id, self.config.admin_group)
            self._admin_gid = (now + ACCOUNT_CACHE_S, gid)
        return gid

    def core_for(self, settings, names: tuple[str, ...]):
        """The core, with the caller's own `settings` among `names` (a view's memory
        threshold, an allocation's strategy) where they differ from the daemon's."""
        if not isinstance(settings, dict):
            return self.core
        mine = {k: settings[k] for k in names if k in settings
                and settings[k] != getattr(self.config, k)}
        if not mine:
            return self.core
        from ..config import _coerce
        config = replace(self.config, **{k: _coerce(k, v, "the request")
                                         for k, v in mine.items()})
        core = type(self.core)(config, self.core.store, self.core.hub, self.core.beats)
        core.snapshot = self.core.snapshot
        return core


class Served:
    """What an operation is served with over the socket: the daemon's core, the caller
    the kernel named, and (for an operation that lasts) its connection, to which
    progress and warnings go as reply lines (doors.Served is direct mode's)."""

    local = False
    signals = False  # the daemon's waiters leave SIGINT/SIGTERM to the daemon

    def __init__(self, server: ApiServer, peer: Peer, caller: Caller, settings,
                 conn=None) -> None:
        self.server, self.peer, self.caller = server, peer, caller
        self.settings, self.conn = settings, conn
        self.core, self.hub = server.core, server.hub

    def core_with(self, *names: str):
        return self.server.core_for(self.settings, names)

    async def owner(self) -> Caller:
        """The caller with its process's start time: a later process reusing its pid is
        not it (one read of /proc/PID/stat, once per connection)."""
        peer = self.peer
        if peer.started is None:
            peer.started = identity.process_start(peer.pid)
        return replace(self.caller, pid_start=peer.started)

    def queued_by(self, uid: int):
        return self.server.waiters.one(uid)

    def stay(self) -> None:
        self.conn.cancel_on_hangup()

    async def line(self, doc: dict) -> None:
        await self.conn.send(doc)

    def note(self, doc: dict) -> None:
        self.conn.note(doc)

    def progress(self, p) -> None:
        self.conn.note({"progress": protocol.encode(p)})

    def warn(self, text: str) -> None:
        self.conn.note({"warn": text})


class Peer:
    """The process at the other end of a connection, as the kernel named it when it
    connected, and its start time once looked up."""

    __slots__ = ("pid", "uid", "gid", "sock", "started")

    def __init__(self, pid: int, uid: int, gid: int, sock: socket.socket) -> None:
        self.pid, self.uid, self.gid, self.sock = pid, uid, gid, sock
        self.started: float | None = None


class PerUser:
    """What each uid has open now, against the admin's limit (0: none; root: never)."""

    def __init__(self, limit: int, key: str, what: str) -> None:
        self.limit, self.key, self.what = limit, key, what
        self.open: dict[int, int] = {}

    @contextmanager
    def one(self, uid: int):
        count = self.open.get(uid, 0)
        if self.limit and count >= self.limit and uid != 0:
            raise LimitReached(f"too many {self.what}: uid {uid} has {count}, the limit is "
                               f"{self.limit} (set by the admin: {self.key}); end some first")
        self.open[uid] = count + 1
        try:
            yield
        finally:
            self.open[uid] -= 1
            if not self.open[uid]:
                del self.open[uid]


def _bug() -> dict:
    log.exception("API request failed")  # a bug: logged, the daemon and its clients go on
    return protocol.error_doc(CanHazGpuError("the daemon failed to answer (a bug: see its log)"))


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _more_descriptors() -> None:
    """Raise the soft limit on open files to the hard one: one per connection."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
