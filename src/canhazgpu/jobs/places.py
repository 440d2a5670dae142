"""Where the agent keeps its queued jobs' places, and which core the agent and the runners
talk to: Redis itself (direct mode) or the daemon's API (daemon mode: on a secured host the
daemon's Redis is private, and the API is the only way in).

- DirectPlaces: one event subscription and one heartbeat script for every queued job (as in
  the daemon); a place outlives the agent for its queue lease, and a new agent resumes it.
- RemotePlaces: each queued job is one waiting `acquire` request over its own connection to
  the daemon, which holds the place while the connection is open (a killed agent's places
  are given back when the kernel closes its connections; the next agent queues them again,
  in submission order).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import anyio

from ..errors import BackendUnavailable

QUEUE_LEASE = "2m"  # direct mode: a dead agent's places wait this long for the next agent


def connect(config):
    """The core of the agent and its runners, picked as the CLI picks it (setting
    `client`): the daemon's API when one serves our host and Redis, else Redis. `submit`
    starts the agent with the mode its own command used (client = daemon or direct)."""
    if config.client != "direct":
        from ..api.client import RemoteCore, find_daemon
        path, why = find_daemon(config)
        if path is not None:
            return RemoteCore(config, path)
        if config.client == "daemon":
            where = " or ".join(map(str, config.api_paths()))
            raise BackendUnavailable(why or f"no canhazgpu daemon answers at {where}")
    from ..core import Core
    return Core(config)


def request_of(doc: dict):
    """The Request of a job document."""
    from ..request import Request
    ids = doc.get("ids")
    return Request(count=None if ids else doc.get("count", 1),
                   ids=tuple(ids) if ids else None, kind="job", note=doc.get("note", ""))


def places_for(config, caller, log):
    core = connect(config)
    from ..api.client import RemoteCore
    if isinstance(core, RemoteCore):
        return RemotePlaces(core, log)
    return DirectPlaces(core, caller, log)


class DirectPlaces:
    """Places kept in Redis by the agent itself (direct mode)."""

    remote = False

    def __init__(self, core, caller, log) -> None:
        from dataclasses import replace
        from ..core import Core
        self.core = Core(replace(core.config, queue_lease=QUEUE_LEASE), core.store)
        self.caller, self.log = caller, log

    @asynccontextmanager
    async def running(self):
        """One subscription for every waiter, routed to each by its reservation id, and one
        heartbeat script for all their places: a queued job costs no Redis connection."""
        from ..events import EventHub
        from ..waitqueue import QueueBeats
        store = self.core.store
        self.core.hub = EventHub(store, (store.expired_channel,))
        self.core.beats = QueueBeats(self.core)
        async with self.core.hub.running(), anyio.create_task_group() as tg:
            await tg.start(self.core.beats.run)
            yield
            tg.cancel_scope.cancel()
        await self.core.aclose()

    async def wait(self, job, queued):
        """Join the queue (or keep the place a previous agent left), call queued(), and
        wait for the grant: the granted Reservation. One job at a time joins, in id order,
        so that the queue's order is the order of submission."""
        from ..request import Reservation
        from ..waitqueue import Waiter
        req = request_of(job.doc)
        rid = job.doc.get("rid")
        if rid and await self.core.queue_heartbeat(rid) is not None:
            record = job.doc["record"]
            res = Reservation(rid, (), record["user"], "job", self.core.ttl_s(req), record)
            self.log(f"job {job.id}: resumed its place ({rid})")
        else:
            res = self.core.new_reservation(req, self.caller)
            record = {**res.record, "name": job.doc.get("name", ""), "job": job.id}
            res = Reservation(res.rid, (), res.user, "job", res.ttl_s, record)
            job.save(state="queued", rid=res.rid, record=record)  # before: a restart finds it
            await self.core.enqueue(res, req, self.core.gpu_limit(self.caller))
            self.log(f"job {job.id}: queued ({res.rid})")
        queued()
        waiter = Waiter(self.core, req, self.caller, signals=False, reservation=res,
                        resume=True)
        return await waiter.wait(None)

    async def present(self) -> set[str]:
        """The ids of every place in the queue and every reservation held."""
        state = await self.core.store.read_state()
        return {w.wid for w in state.queue} | {h.rid for h in state.holds.values()}

    async def leave(self, job, granted: bool = False) -> None:
        """Give back the job's place, and whatever was granted to it."""
        from ..errors import CanHazGpuError
        if job.doc.get("rid"):
            try:
                await self.core.leave(job.doc["rid"], "cancelled")
            except CanHazGpuError:
                pass  # the place expires with its lease


class RemotePlaces:
    """Places held by the daemon, one waiting request each (daemon mode)."""

    remote = True

    def __init__(self, core, log) -> None:
        self.core, self.log = core, log

    @asynccontextmanager
    async def running(self):
        yield

    async def wait(self, job, queued):
        from ..errors import NotHeld
        req, rid = request_of(job.doc), job.doc.get("rid")
        told = False

        def on_queued(wid: str) -> None:
            nonlocal told
            if job.doc.get("rid") != wid:
                job.save(state="queued", rid=wid)
                self.log(f"job {job.id}: queued ({wid})")
            if not told:
                told = True
                queued()
        try:
            return await self.core.acquire(req, wait_s=float("inf"), signals=False,
                                           resume=rid, on_queued=on_queued,
                                           name=job.doc.get("name", ""))
        except NotHeld:
            if rid is None:
                raise
        # the previous agent's place was given back with its connection: queue again
        return await self.core.acquire(req, wait_s=float("inf"), signals=False,
                                       on_queued=on_queued, name=job.doc.get("name", ""))

    async def present(self) -> set[str]:
        view = await self.core.view(queue=True)
        return {w.wid for w in view.queue} | {g.hold.rid for g in view.gpus if g.hold}

    async def leave(self, job, granted: bool = False) -> None:
        """A queued place leaves with its connection; GPUs granted are ended here."""
        from ..errors import CanHazGpuError
        if granted and job.doc.get("rid"):
            try:
                await self.core.end(job.doc["rid"], reason="released")
            except CanHazGpuError:
                pass  # its lease runs out by itself
