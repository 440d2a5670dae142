"""The daemon's side of the local API (docs/api.md): a unix socket, one request per
connection, the caller taken from the kernel (SO_PEERCRED), never from the request.

Every operation is a call of the same Core method the CLI makes in direct mode, for the
caller the kernel names. What one connection may cost is bounded in connection.py.
"""

from __future__ import annotations

import grp
import logging
import os
import socket
from collections import OrderedDict
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path

import anyio

from .. import hosts, identity
from ..errors import (CanHazGpuError, InvalidRequest, LimitReached, NotHeld, NotOwner,
                      boundary)
from ..identity import Caller
from ..model import seen_by
from ..request import Request, Reservation
from ..urls import store_identity
from . import protocol
from .connection import Connection, peer_credentials
from .protocol import ProtocolError

log = logging.getLogger("canhazgpu.serve")

GRANTED_KEPT = 10000  # reservations granted through us, remembered for heartbeats
MAX_DAYS = 3660
ACCOUNT_CACHE_S = 10.0  # a uid's name and admin rights, looked up again after this
ACCOUNTS_KEPT = 10000
ACCEPT_RETRY_S = 0.1


class ApiServer:
    """Answers API requests with Core calls made for the caller the kernel names."""

    def __init__(self, core, hub=None) -> None:
        self.core = core
        self.config = core.config
        self.hub = hub  # the daemon's event subscription, for the events operation
        self.granted: OrderedDict[str, Reservation] = OrderedDict()
        self.connections = PerUser(self.config.user_connections, "user_connections",
                                   "API connections open at once")
        self.waiters = PerUser(self.config.user_waiters, "user_waiters",
                               "requests queued at once")
        self._accounts: dict[tuple[int, int], tuple[float, str, bool]] = {}

    # ------------------------------------------------------------------ the socket
    async def serve(self, path: Path, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        """Listen on `path` (mode 0666: any local user may ask; the kernel says who)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a killed daemon's: we hold the host's lock
        listener = await anyio.create_unix_listener(path)
        os.chmod(path, 0o666)
        inode = path.stat().st_ino
        log.info("API on %s", path)
        _more_descriptors()
        try:
            async with listener, anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    try:
                        stream = await listener.accept()
                    except anyio.BrokenResourceError as err:  # EMFILE: out of descriptors
                        log.warning("API: cannot accept a connection (%s)",
                                    err.__cause__ or err)
                        await anyio.sleep(ACCEPT_RETRY_S)  # until some connection ends
                        continue
                    tg.start_soon(self.handle, stream)
        finally:
            with suppress(OSError):
                if path.stat().st_ino == inode:  # not a successor's socket
                    path.unlink()

    async def handle(self, stream) -> None:
        """One connection; whatever goes wrong with it ends it, never the daemon."""
        try:
            async with stream, anyio.create_task_group() as tg:
                conn = Connection(stream, tg)
                tg.start_soon(conn.writer)
                try:
                    with self.connections.one(peer_credentials(stream)[1]):
                        await conn.send(await self.answer(conn))
                except LimitReached as err:
                    await conn.send(protocol.error_doc(err))
                conn.done()
        except Exception:  # a bug: logged, the daemon and its other clients go on
            log.exception("API connection failed")

    async def answer(self, conn: Connection) -> dict:
        try:
            with boundary():
                doc = await conn.request()
                op = doc.get("op")
                if op not in protocol.OPS:
                    raise ProtocolError(f"unknown operation {str(op)[:40]!r}: use one of "
                                        f"{', '.join(protocol.OPS)}")
                args = doc.get("args") or {}
                if not isinstance(args, dict):
                    raise ProtocolError("args must be a JSON object")
                caller = await self.identify(*peer_credentials(conn.stream))
                result = await getattr(self, f"op_{op}")(conn, caller, args)
            return {"ok": protocol.encode(result)}
        except CanHazGpuError as err:
            return protocol.error_doc(err)
        except Exception:  # a bug: logged, the daemon and its other clients go on
            log.exception("API request failed")
            return protocol.error_doc(CanHazGpuError(
                "the daemon failed to answer (a bug: see its log)"))

    # ------------------------------------------------------------------ identity
    async def identify(self, pid: int, uid: int, gid: int) -> Caller:
        """The caller of a connection, from its credentials. Account name and admin
        rights are looked up (NSS: blocking, off the loop) once per ACCOUNT_CACHE_S."""
        now = anyio.current_time()
        known = self._accounts.get((uid, gid))
        if known is None or known[0] < now:
            if len(self._accounts) > ACCOUNTS_KEPT:
                self._accounts.clear()
            name = await anyio.to_thread.run_sync(identity.user_name, uid)
            admin = await anyio.to_thread.run_sync(self.is_admin, uid, gid, name)
            known = self._accounts[(uid, gid)] = (now + ACCOUNT_CACHE_S, name, admin)
        return Caller(user=known[1], uid=uid, pid=pid, pid_start=0.0, is_admin=known[2])

    def is_admin(self, uid: int, gid: int, name: str) -> bool:
        """root, or a member of admin_group (primary group or listed member)."""
        if uid == 0:
            return True
        if not self.config.admin_group:
            return False
        try:
            group = grp.getgrnam(self.config.admin_group)
            return gid == group.gr_gid or name in group.gr_mem or \
                group.gr_gid in os.getgrouplist(name, gid)
        except (KeyError, OSError):
            return False

    # ------------------------------------------------------------------ operations
    async def op_hello(self, conn, caller: Caller, args: dict) -> dict:
        return {"version": protocol.VERSION, "host": self.config.host_name,
                "redis": store_identity(self.core.store.url), "pid": os.getpid(),
                "machine": socket.gethostname(),
                "user": caller.user, "uid": caller.uid, "admin": caller.is_admin}

    async def op_pool_size(self, conn, caller, args) -> int:
        return await self.core.pool_size()

    async def op_setup_pool(self, conn, caller: Caller, args: dict) -> dict:
        """Root or the admin group only: the core checks the caller the kernel named."""
        return await self.core.setup_pool(args.get("count"), _opt_str(args.get("provider")),
                                          bool(args.get("force")), caller)

    def core_for(self, args: dict, *names: str):
        """The core, with the caller's own `settings` among `names` (a view's memory
        threshold, an allocation's strategy) where they differ from the daemon's."""
        settings = args.get("settings") if isinstance(args.get("settings"), dict) else {}
        mine = {k: settings[k] for k in names if k in settings
                and settings[k] != getattr(self.config, k)}
        if not mine:
            return self.core
        from ..config import _coerce
        config = replace(self.config, **{k: _coerce(k, v, "the request")
                                         for k, v in mine.items()})
        return type(self.core)(config, self.core.store, self.core.hub, self.core.beats)

    async def op_view(self, conn, caller: Caller, args):
        # status does not show the queue: not read (nor sent) unless asked for
        view = await self.core_for(args, "memory_threshold").view(
            queue=bool(args.get("queue")))
        return seen_by(view, caller.user, caller.is_admin)

    async def op_queue(self, conn, caller, args):
        now_ms, waiters = await self.core.queue()
        return [now_ms, [protocol.encode(w) for w in waiters]]

    async def op_report(self, conn, caller, args) -> dict:
        return await self.core.report(_days(args.get("days")))

    async def op_acquire(self, conn: Connection, caller: Caller, args: dict) -> Reservation:
        """Allocate now, or (wait_s) queue while the connection is open: hanging up
        cancels the wait, and the waiter gives its place back. A queued request is told
        its id first ({"queued": {"wid"}}), then that it is in the queue ({"enqueued"});
        `resume: wid` follows that place again (a client reconnecting after a daemon
        restart). At most user_waiters queued requests per uid."""
        req = protocol.request(args.get("request") or {})
        # the owner process's start time: a later process reusing its pid is not it
        caller = replace(caller, pid_start=await anyio.to_thread.run_sync(
            identity.process_start, caller.pid))
        wait_s = args.get("wait_s")
        if wait_s == "inf":
            wait_s = float("inf")
        elif wait_s is not None and (not isinstance(wait_s, (int, float)) or wait_s <= 0):
            raise InvalidRequest(f"invalid wait {wait_s!r}: seconds above 0, or \"inf\"")
        core = self.core_for(args, "strategy")
        if wait_s is None:
            return await self._acquire(conn, core, req, caller, args, None, None)
        with self.waiters.one(caller.uid):
            return await self._acquire(conn, core, req, caller, args, wait_s, args.get("resume"))

    async def _acquire(self, conn, core, req, caller, args, wait_s, resume) -> Reservation:
        queued = None
        if wait_s is not None:
            conn.cancel_on_hangup()  # the place in the queue lives while the client does
            queued = await self.queued(caller, str(resume), req) if resume is not None \
                else core.new_reservation(req, caller)
            if req.kind == "job" and args.get("name"):  # (issue 19) status: TYPE job NAME
                queued = replace(queued, record={**queued.record,
                                                 "name": protocol.job_text(args["name"], "name")})
            await conn.send({"queued": {"wid": queued.rid}})
        progress = (lambda p: conn.note({"progress": protocol.encode(p)})) \
            if args.get("progress") else None
        res = await core.acquire(req, caller, wait_s, progress=progress,
                                 warn=lambda text: conn.note({"warn": text}),
                                 signals=False, reservation=queued, resume=resume is not None,
                                 on_queued=lambda: conn.note({"enqueued": {"wid": queued.rid}}))
        self.granted[res.rid] = res
        while len(self.granted) > GRANTED_KEPT:
            self.granted.popitem(last=False)
        return res

    async def queued(self, caller: Caller, wid: str, req: Request) -> Reservation:
        """The caller's queued (or granted) reservation `wid`, to follow again."""
        state = await self.core.store.read_state()
        owners = {w.uid for w in state.queue if w.wid == wid} | \
            {h.uid for h in state.holds.values() if h.rid == wid}
        if not owners:
            raise NotHeld(f"queue entry {wid[:40]!r} is gone (granted and ended, or it "
                          "expired): run the command again")
        if owners - {caller.uid} and not caller.is_admin:
            raise NotOwner(f"queue entry {wid} is not yours")
        record = self.core.record(caller, req, rid=wid)
        return Reservation(wid, (), caller.user, req.kind, self.core.ttl_s(req), record)

    async def op_heartbeat(self, conn, caller: Caller, args: dict) -> list[int]:
        """Renew a reservation of the caller's held by a process; returns the GPUs it lost.
        `owner_pid` moves it to that process (of the reservation's uid): a Jupyter kernel."""
        res = await self.owned(caller, str(args.get("rid", "")))
        if res is None:
            return list(_ids(args.get("gpus")) or ())  # nothing of it left: all lost
        if args.get("owner_pid") is not None:
            res = await self.moved(res, args["owner_pid"])
        return await self.core.heartbeat(res)

    async def moved(self, res: Reservation, pid) -> Reservation:
        """res, owned from now on by process `pid`, which must run as the reservation's
        uid: the daemon then watches that process instead of the caller."""
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise InvalidRequest(f"invalid owner_pid {str(pid)[:20]!r}: a process id")
        if pid == res.record.get("pid"):
            return res
        uid, start = await anyio.to_thread.run_sync(identity.process_owner, pid)
        if uid != res.record.get("uid"):
            raise NotOwner(f"process {pid} is not {res.user}'s: a reservation moves only to "
                           "a process of its own user")
        res = replace(res, record={**res.record, "pid": pid, "pid_start": start})
        self.granted[res.rid] = res
        return res

    async def op_end(self, conn, caller: Caller, args: dict) -> list[int]:
        """End a reservation of the caller's (any, for an admin): the script decides."""
        rid = str(args.get("rid", ""))
        self.granted.pop(rid, None)
        return await self.core.end(rid, caller, reason=_reason(args.get("reason")))

    async def op_release(self, conn, caller: Caller, args: dict) -> list[int]:
        return await self.core.release(caller, ids=_ids(args.get("ids")),
                                       user=_opt_str(args.get("user")),
                                       force=bool(args.get("force")))

    async def op_events(self, conn: Connection, caller, args: dict) -> None:
        """The host's events as they come, until the client hangs up: first
        {"event": null} once subscribed (nothing after it is missed), then each event."""
        from ..events import Disconnected, Event, Resync
        if self.hub is None:
            raise CanHazGpuError("this daemon serves no events")
        conn.cancel_on_hangup()
        async with self.hub.listen() as stream:
            await conn.send({"event": None})
            async for item in stream:
                if isinstance(item, Event):
                    await conn.send({"event": item.data})
                elif isinstance(item, Disconnected):
                    await conn.send({"warn": item.error})
                elif isinstance(item, Resync) and item.reconnected:
                    await conn.send({"resync": True})

    async def op_events_since(self, conn, caller, args: dict) -> list[dict]:
        """The kept events after sequence number `since`, oldest first."""
        since = args.get("since")
        if not isinstance(since, int) or since < 0:
            raise InvalidRequest(f"invalid since {since!r}: an event sequence number >= 0")
        return await self.core.store.events_since(since)

    # ------------------------------------------------------------------ notifications
    # (issue 20) The caller's own rules, for the uid the kernel named: never another's.
    async def op_notify_add(self, conn, caller: Caller, args: dict) -> list[dict]:
        return await self.core.notify(caller, "add", channel=_opt_str(args.get("channel")),
                                      url=_opt_str(args.get("url")) or "",
                                      events=args.get("events"),
                                      everyone=args.get("everyone") is True)

    async def op_notify_list(self, conn, caller: Caller, args: dict) -> list[dict]:
        return await self.core.notify(caller, "list")

    async def op_notify_remove(self, conn, caller: Caller, args: dict) -> list[dict]:
        return await self.core.notify(caller, "remove", rule_id=str(args.get("id", "")))

    async def op_notify_test(self, conn, caller: Caller, args: dict) -> list[dict]:
        return await self.core.notify(caller, "test")

    # ------------------------------------------------------------------ across hosts
    # The views that span the hosts of the daemon's Redis (any host on it, not only ours),
    # for users who cannot reach that Redis: what direct mode reads (hosts.py).
    async def op_hosts(self, conn, caller, args) -> dict:
        return await hosts.document(self.core, protocol.host_names(args.get("hosts")))

    async def op_host_views(self, conn, caller: Caller, args) -> list:
        now, found = await hosts.views(self.core_for(args, "memory_threshold"),
                                       protocol.host_names(args.get("hosts")))
        return [now, [replace(hv, view=seen_by(hv.view, caller.user, caller.is_admin))
                      if hv.view else hv for hv in found]]

    async def op_host_queues(self, conn, caller, args) -> list:
        found = await hosts.queues(self.core, protocol.host_names(args.get("hosts")))
        return [[host, now, waiters] for host, now, waiters in found]

    async def op_host_report(self, conn, caller, args) -> dict:
        return await hosts.report(self.core, _days(args.get("days")),
                                  protocol.host_names(args.get("hosts")))

    async def op_retire(self, conn, caller: Caller, args) -> str:
        """Root or the admin group only: the core checks the caller the kernel named."""
        return await hosts.retire(self.core, caller, protocol.host_name(args.get("host")))

    # ------------------------------------------------------------------ detached jobs
    async def op_job_event(self, conn, caller: Caller, args: dict) -> None:
        """(issue 19) A job's step (job_submitted, job_started, job_ended), announced by its
        owner's agent or runner: checked field by field, for the uid the kernel named."""
        await self.core.job_event(protocol.job_event(args.get("event"), caller.user,
                                                     caller.uid))

    # ------------------------------------------------------------------ ownership
    async def owned(self, caller: Caller, rid: str) -> Reservation | None:
        """The caller's live reservation `rid` (NotOwner when it is someone else's): as
        granted through us, or rebuilt from Redis (granted before a restart)."""
        res = self.granted.get(rid)
        if res is not None:
            if res.record["uid"] != caller.uid and not caller.is_admin:
                raise NotOwner(f"reservation {rid} is {res.user}'s, not yours")
            return res
        state = await self.core.store.read_state(queue=False)  # holds only
        holds = [h for h in state.holds.values() if h.rid == rid]
        if not holds:
            return None
        hold = holds[0]
        if hold.uid != caller.uid and not caller.is_admin:
            raise NotOwner(f"reservation {rid} is {hold.user}'s, not yours")
        if hold.kind == "manual":
            raise InvalidRequest("manual reservations are not renewed through the API")
        record = {"rid": rid, "user": hold.user, "uid": hold.uid, "host": hold.host,
                  "machine": hold.machine, "pid": hold.pid, "pid_start": hold.pid_start,
                  "kind": hold.kind, "note": hold.note}
        return Reservation(rid, tuple(sorted(h.gpu for h in holds)), hold.user, hold.kind,
                           self.core.ttl_s(Request(kind="run")), record)


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


def _more_descriptors() -> None:
    """Raise the soft limit on open files to the hard one: one per connection."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _ids(value) -> tuple[int, ...] | None:
    try:
        return None if value is None else tuple(int(i) for i in value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"invalid GPU ids {str(value)[:40]!r}: a list of numbers") \
            from None


def _days(days) -> float:
    if not isinstance(days, (int, float)) or isinstance(days, bool) or \
            not 0 < days <= MAX_DAYS:
        raise InvalidRequest(f"invalid days {days!r}: above 0, up to {MAX_DAYS}")
    return float(days)


def _opt_str(value) -> str | None:
    return None if value is None else str(value)[:200]


def _reason(value) -> str:
    return "reclaimed" if value == "reclaimed" else "released"
