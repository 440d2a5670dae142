"""The operation table: every operation of the host's API, declared once (docs/api.md).

Each operation names its arguments with the one check each value gets (bounds, lengths,
printable text), its authority rule, whether it lasts (a wait, the events) and how a
client decodes its result. The same table is served two ways: over the daemon's socket
(server.py: the caller from the kernel) and in-process in direct mode (doors.py: the caller
of this process). Both call `Op.serve`, so both validate, authorize and answer alike; the
client's methods (doors.py) are bound from the table too.

Imported on the CLI's fast path: nothing heavy at import time.
"""

from __future__ import annotations

import os

from .. import errors
from ..errors import InvalidRequest, NotOwner
from ..identity import require_admin
from . import protocol
from .checks import (MAX_IDS, days, event_types, flag, gpu_ids, ident, json_object, kind,
                     name, note, optional, pid, reason, text, wait_s, whole)

CALLBACKS = ("progress", "warn", "signals")  # what a waiter in this process reports through
NOT_SENT = ("caller", *CALLBACKS)  # the kernel says who; callbacks stay here


# ---------------------------------------------------------------------- the table
class Op:
    """One operation: its name, arguments (name -> check; missing: None), authority
    (admin: what only root or the admin group may do), whether it lasts (streams lines
    until it ends or the client hangs up: True, or lasts(args)), the client's decoding of
    its result, and what it does (`run(served, **args)`)."""

    __slots__ = ("name", "params", "admin", "lasts", "decode", "run", "method", "pack")

    def __init__(self, name, params, admin, lasts, decode, run, method, pack) -> None:
        self.name, self.params, self.admin, self.lasts = name, params, admin, lasts
        self.decode, self.run, self.method, self.pack = decode, run, method, pack

    def lasting(self, args: dict) -> bool:
        return self.lasts(args) if callable(self.lasts) else self.lasts

    def parse(self, args: dict) -> dict:
        """The arguments, each checked once; InvalidRequest names the bad one."""
        unknown = set(args) - set(self.params)
        if unknown:
            named = ", ".join(repr(k[:40]) for k in sorted(unknown)[:5])
            raise InvalidRequest(f"unknown argument {named} of {self.name}: it takes "
                                 f"{', '.join(self.params) or 'none'}")
        return {key: check(args.get(key)) for key, check in self.params.items()}

    async def serve(self, served, args: dict):
        """Check, authorize, run: what the daemon does for a request, and direct mode for a
        call of this process."""
        values = self.parse(args)
        if self.admin:
            require_admin(served.caller, served.core.config.admin_group, self.admin)
        return await self.run(served, **values)


OPS: dict[str, Op] = {}
METHODS: dict[tuple[str, str], Op] = {}  # (door, method name) -> the op it calls


def op(name_: str, *, params: dict | None = None, admin: str = "", lasts=False,
       decode=None, method: tuple[str, str, tuple[str, ...]] | None = None, pack=None):
    """Declare operation `name_`; method (door, method name, its parameters in order, as
    the core's method takes them): how the doors (doors.py) expose it; pack(arguments by
    those names) -> the operation's arguments (default: the same names, caller left out:
    the server takes it from the kernel)."""
    def register(run):
        entry = OPS[name_] = Op(name_, {k: optional(v) for k, v in (params or {}).items()},
                                admin, lasts, decode, run, method, pack or _same)
        if method is not None:
            METHODS[method[:2]] = entry
        return run
    return register


def _same(args: dict) -> dict:
    return {k: protocol.encode(v) for k, v in args.items() if k not in NOT_SENT}



# ---------------------------------------------------------------------- the host


@op("hello", method=("core", "hello", ()))
async def hello(s) -> dict:
    from ..core import MACHINE
    from ..urls import store_identity
    return {"version": protocol.VERSION, "host": s.core.config.host_name,
            "redis": store_identity(s.core.store.url), "pid": os.getpid(),
            "machine": MACHINE, "user": s.caller.user, "uid": s.caller.uid,
            "admin": s.caller.is_admin,
            # why its Redis does not answer, when the daemon can tell (a full disk)
            "trouble": s.core.store.trouble() if s.core.store.trouble else None}


@op("pool_size", decode=int, method=("core", "pool_size", ()))
async def pool_size(s) -> int:
    return await s.core.pool_size()


@op("setup_pool", admin="change the pool",
    params={"count": lambda v: whole(v, "GPU count", 1, MAX_IDS),
            "provider": name("provider", 40), "force": flag},
    method=("core", "setup_pool", ("count", "provider", "force", "caller")))
async def setup_pool(s, count, provider, force) -> dict:
    return await s.core.setup_pool(count, provider, bool(force), s.caller)


@op("view", params={"queue": flag}, decode=protocol.view, method=("core", "view", ("queue",)))
async def view(s, queue) -> object:
    """The pool as status shows it; other users' command lines cut (model.seen_by); the
    queue (every waiter) only when asked for."""
    from ..model import seen_by
    found = await s.core_with("memory_threshold").view(queue=bool(queue))
    return seen_by(found, s.caller.user, s.caller.is_admin)


@op("queue", decode=lambda doc: (doc[0], tuple(protocol.waiter(w) for w in doc[1])),
    method=("core", "queue", ()))
async def queue(s) -> tuple:
    return await s.core.queue()


@op("report", params={"days": days}, method=("core", "report", ("days",)))
async def report(s, days) -> dict:
    return await s.core.report(days)


# ---------------------------------------------------------------------- reservations
def _pack_acquire(args: dict) -> dict:
    wait = args.get("wait_s")
    return {"request": protocol.encode(args["req"]),
            "wait_s": "inf" if wait == float("inf") else wait,
            "progress": args.get("progress") is not None}


@op("acquire", lasts=lambda args: args.get("wait_s") is not None, decode=protocol.reservation,
    pack=_pack_acquire,
    params={"request": protocol.request, "wait_s": wait_s, "resume": ident,
            "progress": flag, "name": name("job name", 100)},
    method=("core", "acquire", ("req", "caller", "wait_s")))
async def acquire(s, request, wait_s, resume, progress, name):
    """Allocate now, or (wait_s) queue while the caller is there: a client of the daemon
    that hangs up gives its place back. A queued request is told its id first
    ({"queued": {"wid"}}), then that it is in the queue ({"enqueued"}); `resume: wid`
    follows that place again (a client reconnecting after a daemon restart). `name`: a
    detached job's (kind job), which status shows."""
    if request is None:
        raise InvalidRequest("acquire needs a request")
    caller = await s.owner()
    core = s.core_with("strategy")
    if wait_s is None:
        return await core.acquire(request, caller)
    with s.queued_by(caller.uid):
        s.stay()  # the place in the queue lives while the client does
        res = await _queued(s, caller, resume, request) if resume is not None \
            else core.new_reservation(request, caller)
        if name and request.kind == "job":
            res.record["name"] = name
        await s.line({"queued": {"wid": res.rid}})
        return await core.acquire(
            request, caller, wait_s, reservation=res, resume=resume is not None,
            progress=s.progress if progress else None, warn=s.warn, signals=s.signals,
            on_queued=lambda: s.note({"enqueued": {"wid": res.rid}}))


async def _queued(s, caller, wid: str, req):
    """The caller's queued (or granted) reservation `wid`, to follow again."""
    from ..errors import NotHeld
    from ..request import Reservation
    state = await s.core.store.read_state()
    owners = {w.uid for w in state.queue if w.wid == wid} | \
        {h.uid for h in state.holds.values() if h.rid == wid}
    if not owners:
        raise NotHeld(f"queue entry {wid[:40]!r} is gone (granted and ended, or it expired): "
                      "run the command again")
    if owners - {caller.uid} and not caller.is_admin:
        raise NotOwner(f"queue entry {wid} is not yours")
    record = s.core.record(caller, req, rid=wid)
    return Reservation(wid, (), caller.user, req.kind, s.core.ttl_s(req), record)


def _pack_heartbeat(args: dict) -> dict:
    res = args["res"]
    return {"rid": res.rid, "gpus": list(res.gpus), "kind": res.kind,
            "note": res.record.get("note", ""), "owner_pid": res.record.get("pid")}


@op("heartbeat", params={"rid": ident, "gpus": gpu_ids, "kind": kind, "note": note,
                         "owner_pid": pid},
    method=("core", "heartbeat", ("res", "ttl_s")), pack=_pack_heartbeat)
async def heartbeat(s, rid, gpus, kind, note, owner_pid) -> list[int]:
    """Renew a reservation of the caller's uid (the script compares uids); returns the
    GPUs it lost. `owner_pid`, a process of the caller's uid, owns it from now on (a
    Jupyter kernel's). Over the socket a lapsed lease is lost, never taken again: only
    the core's own callers may re-establish one."""
    if rid is None:
        raise InvalidRequest("heartbeat needs rid")
    from ..identity import process_owner
    from ..request import Request
    record = s.core.record(s.caller, Request(kind=kind or "run", note=note or ""), rid=rid)
    uid, start = (None, 0.0) if owner_pid is None else process_owner(owner_pid) \
        if owner_pid != s.caller.pid else (s.caller.uid, s.caller.pid_start)
    if uid is None:  # none named, or gone (a job's agent): the holds keep theirs
        record.pop("pid"), record.pop("pid_start")
    elif uid != s.caller.uid:
        raise NotOwner(f"process {owner_pid} is not {s.caller.user}'s: a reservation moves "
                       "only to a process of its own user")
    else:
        record.update(pid=owner_pid, pid_start=start)
    return await s.core.renew(rid, gpus or (), record, regain=s.local)


@op("end", params={"rid": ident, "reason": reason},
    method=("core", "end", ("rid", "caller", "reason")))
async def end(s, rid, reason) -> list[int]:
    """End a reservation of the caller's (any, for an admin): the script decides."""
    if rid is None:
        raise InvalidRequest("end needs rid")
    return await s.core.end(rid, s.caller, reason=reason or "released")


@op("release", params={"ids": gpu_ids, "user": name("user", 64), "force": flag},
    method=("core", "release", ("caller", "ids", "user", "force")))
async def release(s, ids, user, force) -> list[int]:
    return await s.core.release(s.caller, ids=ids, user=user, force=bool(force))


@op("job_event", params={"event": lambda v: json_object(v, "event")},
    method=("core", "job_event", ("event",)))
async def job_event(s, event) -> None:
    """(issue 19) A detached job's step (job_submitted, job_started, job_ended), announced
    by its owner's agent or runner: each field checked, for the uid of the caller."""
    if event is None:
        raise InvalidRequest("job_event needs event")
    await s.core.job_event(protocol.job_event(event, s.caller.user, s.caller.uid))


# ---------------------------------------------------------------------- events
@op("events", lasts=True)
async def host_events(s) -> None:
    """The host's events as they come, until the client hangs up: first {"event": null}
    once subscribed (nothing after it is missed), then each event."""
    from ..events import Disconnected, Event, Resync
    if s.hub is None:
        raise errors.CanHazGpuError("this daemon serves no events")
    s.stay()
    async with s.hub.listen() as stream:
        await s.line({"event": None})
        async for item in stream:
            if isinstance(item, Event):
                await s.line({"event": item.data})
            elif isinstance(item, Disconnected):
                await s.line({"warn": item.error})
            elif isinstance(item, Resync) and item.reconnected:
                await s.line({"resync": True})


@op("events_since", params={"since": lambda v: whole(v, "since", 0, 2**62)},
    method=("store", "events_since", ("since",)))
async def events_since(s, since) -> list[dict]:
    """The kept events after sequence number `since`, oldest first."""
    return await s.core.store.events_since(since or 0)


# ---------------------------------------------------------------------- notifications
# (issue 20) The caller's own rules, for the uid the kernel named: never another's.
@op("notify_add", params={"channel": name("channel", 40), "url": text("url", 2000),
                          "events": event_types, "everyone": flag})
async def notify_add(s, channel, url, events, everyone) -> list[dict]:
    from .. import notify
    return await notify.add(s.core, s.caller, channel=channel, url=url or "", events=events,
                            everyone=bool(everyone))


@op("notify_list")
async def notify_list(s) -> list[dict]:
    from .. import notify
    return await notify.listed(s.core, s.caller)


@op("notify_remove", params={"id": name("rule id", 40)})
async def notify_remove(s, id) -> list[dict]:  # noqa: A002 (the wire's name)
    from .. import notify
    return await notify.remove(s.core, s.caller, rule_id=id or "")


@op("notify_test")
async def notify_test(s) -> list[dict]:
    from .. import notify
    return await notify.test(s.core, s.caller)


# ---------------------------------------------------------------------- across hosts
# The views that span the hosts of the daemon's Redis (any host on it, not only ours),
# for users who cannot reach that Redis: what direct mode reads (hosts.py).
HOSTS = {"hosts": protocol.host_names}


@op("hosts", params=HOSTS, method=("hosts", "document", ("hosts",)))
async def hosts_document(s, hosts) -> dict:
    from .. import hosts as across
    return await across.document(s.core, hosts)


@op("host_views", params=HOSTS, method=("hosts", "views", ("hosts",)),
    decode=lambda doc: (doc[0], [protocol.host_view(d) for d in doc[1]]))
async def host_views(s, hosts) -> list:
    from dataclasses import replace

    from .. import hosts as across
    from ..model import seen_by
    now, found = await across.views(s.core_with("memory_threshold"), hosts)
    return [now, [replace(hv, view=seen_by(hv.view, s.caller.user, s.caller.is_admin))
                  if hv.view else hv for hv in found]]


@op("host_queues", params=HOSTS, method=("hosts", "queues", ("hosts",)),
    decode=lambda doc: [(host, now, tuple(protocol.waiter(w) for w in waiters))
                        for host, now, waiters in doc])
async def host_queues(s, hosts) -> list:
    from .. import hosts as across
    return [list(row) for row in await across.queues(s.core, hosts)]


@op("host_report", params={"days": days, **HOSTS}, method=("hosts", "report", ("days", "hosts")))
async def host_report(s, days, hosts) -> dict:
    from .. import hosts as across
    return await across.report(s.core, days, hosts)


@op("retire", admin="retire a host", params={"host": protocol.host_name},
    method=("hosts", "retire", ("caller", "host")))
async def retire(s, host) -> str:
    from .. import hosts as across
    return await across.retire(s.core, s.caller, host or s.core.config.host_name)
