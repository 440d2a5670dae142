"""The service API: allocate, release, heartbeat, sweep, pool set-up, views and reports.

Every state change is one Lua script (see lua/); this module validates requests, gathers
what the scripts need (the caller, a GPU usage scan) and decodes their replies. It never
prints.
"""

from __future__ import annotations

import json
import socket
import time

import anyio

from . import gpu, identity
from .accounting import summarize
from .config import Config
from .errors import (CanHazGpuError, CorruptState, GpusUnavailable, InvalidRequest,
                     LimitReached, NotEnoughGpus, NotHeld, NotOwner, PoolBusy,
                     PoolNotInitialized, ProviderUnavailable, boundary)
from .identity import Caller
from .idle import idle_since
from .model import GpuState, GpuUsage, PoolView, Record, State, Usage, Waiter, replace
from .request import QueueStatus, Request, Reservation, parse_count, parse_ids
from .timefmt import hms

MACHINE = socket.gethostname()  # this machine's name, in every record made here
# who releases a reservation by the idle policy (the daemon, on nobody's behalf)
IDLE_POLICY = Caller(user="(idle policy)", uid=0, pid=0, pid_start=0.0, is_admin=True)

__all__ = ["Core", "QueueStatus", "Request", "Reservation", "Usage", "parse_count", "parse_ids"]


class Core:
    """The async service API for the pool of one host."""

    def __init__(self, config: Config, store=None, hub=None,
                 beats=None) -> None:
        self.config = config
        # The process's one event subscription and its waiters' heartbeats (the daemon's:
        # waitqueue.QueueBeats), shared by every waiter; None: each waiter subscribes and
        # beats for itself (a CLI process waits once).
        self.hub, self.beats = hub, beats
        if store is None:
            redis = config.redis  # the URL and where it came from, for "cannot reach" lines
            from .store import Store  # (here: loopless reads pass theirs, quickread.py)
            store = Store(redis.url, config.host_name, explain=redis.unreachable)
        self.store = store
        self._provider = None
        self._size: int | None = None  # cached; every script says STALE if it changed
        # (the daemon's) the snapshot its scanner stored last, and when (time.monotonic)
        self.snapshot: tuple[float, Usage] | None = None

    async def aclose(self) -> None:
        await self.store.close()

    # ------------------------------------------------------------------ pool
    async def pool(self) -> dict:
        """The pool's settings (count, provider); PoolNotInitialized when there is none."""
        pool = await self.store.read_pool()
        count = str(pool.get("count", "0") or "0")
        if pool and not count.isdigit():
            raise CorruptState(f"corrupt pool size {count[:40]!r} in key "
                               f"{self.store.key('pool')} (field count): an admin can set it "
                               "again with 'canhazgpu admin --gpus N --force'")
        if not pool or int(count) < 1:
            raise PoolNotInitialized(
                "no GPU pool on this host yet: run 'canhazgpu admin --gpus N' first"
            )
        return pool

    def forget_pool(self) -> None:
        """Drop what is cached about the pool (size, provider): someone changed it."""
        self._size = None
        self._provider = None

    async def pool_size(self) -> int:
        if self._size is None:
            self._size = int((await self.pool())["count"])
        return self._size

    async def _script(self, name: str, /, replies: tuple[str, ...] = ("OK",), check=None,
                      **args) -> tuple[str, str]:
        """Run a state-change script at the cached pool size, re-reading it when stale.

        `replies` are the statuses the caller maps (anything else is a loud failure);
        `check(size)` validates the request against the pool size before each attempt.
        """
        while True:
            size = await self.pool_size()
            if check is not None:
                check(size)
            status, data = await self.store.run(name, size, **args)
            if status == "STALE":
                self._size = int(data) if data.isdigit() else None
                continue
            if status == "NOPOOL":
                self._size = None
                await self.pool()  # raises PoolNotInitialized
            if status in replies:
                return status, data
            raise CorruptState(f"unexpected reply {status!r} from Redis script {name}")

    async def setup_pool(self, count: int | None, provider: str | None, force: bool,
                         caller: Caller | None = None) -> dict:
        """Create or resize the pool: root or the admin group only (caller None: this
        process). The provider must read this machine; it gives the count when none is."""
        if caller is None:
            caller = await anyio.to_thread.run_sync(identity.current, self.config.admin_group)
        identity.require_admin(caller, self.config.admin_group, "change the pool")
        pool = await self.store.read_pool()
        # a re-run keeps the provider the pool was made with (docs/admin.md)
        prov = self.provider_named(provider or self.config.provider or pool.get("provider")
                                   or None, count)
        try:
            found = await prov.count()  # a provider that cannot read this machine is refused
        except ProviderUnavailable as err:
            raise ProviderUnavailable(f"pool not changed: provider {prov.name} does not work "
                                      f"here: {err}") from None
        count = parse_count(found if count is None else count)
        current = pool.get("count", "0")
        span = max(count, int(current) if str(current).isdigit() else 0)
        status, data = await self.store.run("pool", span, count=count, provider=prov.name,
                                            force=int(force))
        if status == "STALE":
            return await self.setup_pool(count, provider, force, caller)
        if status == "BUSY":
            held = json.loads(data)
            who = ", ".join(f"GPU {h['gpu']} ({h['user']}, {h['kind']})" for h in held)
            noun = "GPU is" if len(held) == 1 else "GPUs are"
            raise PoolBusy(f"{len(held)} {noun} reserved: {who} - wait for them, "
                           "or pass --force to end those reservations")
        self._size = None
        if status == "UNCHANGED":
            return {"old": count, "new": count, "provider": prov.name, "changed": False}
        return {**json.loads(data), "provider": prov.name, "changed": True}

    # ------------------------------------------------------------------ GPUs
    def provider_named(self, name: str | None, count: int | None = None):
        """A provider by name (None: auto-detect); `count` sizes the file-less fake one."""
        return gpu.get_provider(name or None, fake_path=self.config.fake_gpus or None,
                                fake_count=count)

    async def provider(self):
        if self._provider is None:
            pool = await self.store.read_pool()
            name = self.config.provider or pool.get("provider") or None
            count = pool.get("count", "")
            self._provider = self.provider_named(name, int(count) if count.isdigit() else None)
        return self._provider

    async def usage(self) -> Usage:
        """Current GPU usage: the daemon's snapshot while fresh (by Redis's clock; in the
        daemon, the one its scanner stored, without reading it back), else a scan of our
        own."""
        if self.snapshot is not None and time.monotonic() - self.snapshot[0] <= \
                self.config.seconds("snapshot_max_age"):
            return self.snapshot[1]
        now_ms, snap = await self.store.read_usage()
        return snap if self.fresh(now_ms, snap) else await self.scan(now_ms)

    def fresh(self, now_ms: int, snap: Usage | None) -> bool:
        """Whether a stored snapshot is the daemon's and young enough to show as is."""
        max_age_ms = self.config.seconds("snapshot_max_age") * 1000
        return snap is not None and snap.source == "daemon" and \
            now_ms - snap.scanned_ms <= max_age_ms

    async def scan(self, now_ms: int = 0, source: str = "cli") -> Usage:
        """Read every GPU now (stored by the allocate or usage script, stamped there)."""
        provider = await self.provider()
        return Usage(now_ms, tuple(await provider.scan()), source)

    async def publish_usage(self, usage: Usage, events: list[dict]) -> list[int]:
        """Store a scan as the host's snapshot and publish the events derived from it;
        returns the GPUs whose unreserved_detected was dropped (reserved meanwhile)."""
        threshold = self.config.memory_threshold
        _, data = await self._script("usage", snapshot=json.dumps(usage.to_json(threshold)),
                                     busy=usage.busy_csv(threshold), events=json.dumps(events))
        reply = json.loads(data)
        self.snapshot = (time.monotonic(), replace(usage, scanned_ms=reply["scanned_ms"],
                                                       source="daemon"))
        return reply["dropped"]

    # ------------------------------------------------------------------ views
    async def view(self, usage: Usage | None = None, queue: bool = True,
                   state: State | None = None) -> PoolView:
        """Holds, releases and usage of every GPU, as status shows them. A GPU whose
        stored state cannot be read is shown in error (naming the key); when the provider
        fails, the GPUs are shown unreadable and the reservations still listed.
        queue=False: without the waiters (PoolView.queue empty). state: already read."""
        if state is None:
            state = await self.store.read_state(queue)
        if state.count < 1:
            await self.pool()  # raises PoolNotInitialized
        if usage is None:
            try:
                usage = await self.usage()
            except PoolNotInitialized:
                raise
            except CanHazGpuError as err:  # the provider failed, or its snapshot is corrupt
                usage = Usage(state.now_ms, tuple(GpuUsage(index=i, error=str(err))
                                                  for i in range(state.count)))
        by_index = {g.index: g for g in usage.gpus}
        holds = state.holds
        gpus = tuple(GpuState(
            gpu=i, hold=holds.get(i),
            last_released_ms=state.released[i][0] if i in state.released else None,
            usage=by_index.get(i), threshold_mb=self.config.memory_threshold,
            corrupt=state.corrupt.get(i),
            idle_since_ms=idle_since(usage.idle, holds[i].rid) if i in holds else None)
            for i in range(state.count))
        return PoolView(now_ms=state.now_ms, gpus=gpus, provider=state.provider,
                        scanned_ms=usage.scanned_ms or state.now_ms, queue=state.queue)

    async def host_view(self, here: bool, read=None) -> PoolView:
        """The view as the views across hosts show it, from one read (store.read_view, or
        `read`: what store.read_views() read of this host). here: our own host, viewed as
        `view()` does; another host's usage is its daemon's last snapshot, whatever its age
        (this machine cannot see that host's GPUs), or unknown without one; a corrupt
        snapshot there is that host's error."""
        if isinstance(read, CanHazGpuError):
            raise read
        state, snap = read or await self.store.read_view()
        if here:
            fresh = not isinstance(snap, CanHazGpuError) and self.fresh(state.now_ms, snap)
            return await self.view(snap if fresh else None, state=state)
        if isinstance(snap, CanHazGpuError):
            raise snap
        return await self.view(snap or Usage(state.now_ms, (), "none"), state=state)

    async def queue(self) -> tuple[int, tuple[Waiter, ...]]:
        """(Redis time, the live waiters in arrival order with what each holds so far)."""
        state = await self.store.read_state()
        return state.now_ms, state.queue

    # ------------------------------------------------------------------ changes
    def record(self, caller: Caller, req: Request, rid: str | None = None) -> dict:
        # machine: the real one, so a daemon never judges PIDs of another machine that
        # shares this host name
        import secrets  # (~4 ms: not on the views' path)
        return {"rid": rid or secrets.token_hex(8), "user": caller.user, "uid": caller.uid,
                "host": self.config.host_name, "machine": MACHINE,
                "pid": caller.pid, "pid_start": caller.pid_start, "kind": req.kind,
                "note": req.note}

    def ttl_s(self, req: Request) -> float:
        return req.duration_s if req.kind == "manual" else self.config.seconds("run_lease")

    def check(self, req: Request):
        """A validator of req against a pool size, for _script."""
        def check(size: int) -> None:
            if req.ids is not None:
                parse_ids(",".join(map(str, req.ids)), size)
            else:
                parse_count(req.count, size)
        return check

    async def validate(self, req: Request) -> int:
        """Check a request against the pool; returns the pool size."""
        size = await self.pool_size()
        self.check(req)(size)
        return size

    def gpu_limit(self, caller: Caller) -> int:
        """The most GPUs `caller` may hold at once (user_gpus; root and admins: 0, none)."""
        return 0 if caller.is_admin else self.config.user_gpus

    def within_limits(self, req: Request, caller: Caller) -> None:
        """The admin's per-user limits on a request (root and the admin group: none)."""
        if self.config.user_gpus and req.size > self.config.user_gpus and not caller.is_admin:
            raise LimitReached(f"{req.size} GPUs is more than one user may hold at once here "
                               f"(user_gpus {self.config.user_gpus}): ask for fewer")
        longest = self.config.seconds("max_duration")
        if req.kind == "manual" and req.duration_s > longest and not caller.is_admin:
            raise LimitReached(f"a reservation of {hms(req.duration_s)} is longer than this "
                               f"host allows (max_duration {self.config.max_duration}): "
                               "ask for less")

    async def allocate(self, req: Request, caller: Caller) -> Reservation:
        """Reserve GPUs now, or raise NotEnoughGpus / GpusUnavailable. Never waits."""
        self.within_limits(req, caller)
        await self.validate(req)
        usage = await self.usage()
        record = self.record(caller, req)
        ttl = self.ttl_s(req)
        threshold = self.config.memory_threshold
        mode, want = ("ids", ",".join(map(str, req.ids))) if req.ids is not None \
            else ("count", req.count)
        own = {g.index for g in usage.gpus  # reserve --force: claim our own stray job
               if req.claim_own and set(g.users) == {caller.user}}
        status, data = await self._script(
            "allocate", ("OK", "SHORT", "UNAVAILABLE", "LIMIT"), check=self.check(req),
            mode=mode, want=want,
            unreserved=",".join(str(i) for i in usage.busy(threshold) if i not in own),
            errored=",".join(map(str, usage.errors())), record=json.dumps(record),
            ttl_ms=int(ttl * 1000), strategy=self.config.strategy,
            # our own scan tells the queue which GPUs are busy (the daemon's is stored)
            busy="-" if usage.source == "daemon" else usage.busy_csv(threshold),
            limit=self.gpu_limit(caller))
        if status == "LIMIT":
            held, limit = data.split(",")
            raise LimitReached(f"{req.size} more GPUs would make {int(held) + req.size}, the "
                               f"limit is {limit} at once (set by the admin: user_gpus); you "
                               f"hold {held}: release some first")
        if status == "OK":
            return Reservation(record["rid"], tuple(json.loads(data)), caller.user, req.kind,
                               ttl, record)
        if status == "SHORT":
            available, unreserved = (int(x) for x in data.split(","))
            raise NotEnoughGpus(req.size, available, unreserved)
        reasons = "; ".join(f"GPU {r['gpu']} is {r['reason']}" for r in json.loads(data))
        raise GpusUnavailable(f"{reasons} - run 'canhazgpu status' for details")

    async def acquire(self, req: Request, caller: Caller, wait_s: float | None = None, *,
                      progress=None, warn=lambda text: None, signals: bool = True,
                      reservation: Reservation | None = None, resume: bool = False,
                      on_queued=None) -> Reservation:
        """The allocate-or-queue policy: allocate now when wait_s is None (fail at once when
        short), else queue first come first served for at most wait_s (inf: no limit).
        `progress` (None: quiet) and `warn` are the waiter's callbacks; signals=False: the
        waiter leaves SIGINT/SIGTERM alone (the daemon waits for its API clients). A waiter
        may queue with a `reservation` made beforehand (new_reservation), or `resume` one
        that is queued already (a client of the daemon reconnecting); on_queued() is called
        once the request is in the queue."""
        if wait_s is None:
            return await self.allocate(req, caller)
        self.within_limits(req, caller)
        from .waitqueue import Waiter as QueueWaiter
        waiter = QueueWaiter(self, req, caller, progress=progress, warn=warn, signals=signals,
                             reservation=reservation, resume=resume, on_queued=on_queued)
        with boundary():  # callers want the one error, not the waiter's task group
            res = await waiter.wait(None if wait_s == float("inf") else wait_s)
        if req.kind == "manual":  # the grant held GPUs on the queue lease: now the duration
            await self.heartbeat(res)
        return res

    async def _release(self, mode: str, target: str, caller: Caller, force: bool,
                       reason: str = "released") -> list[int]:
        status, data = await self._script(
            "release", ("OK", "NOTHELD", "NOTOWNER"), mode=mode, target=target,
            caller=caller.uid, force=int(force), reason=reason)
        if status == "OK":
            return json.loads(data)
        if status == "NOTHELD":
            ids = ", ".join(map(str, json.loads(data)))
            raise NotHeld(f"GPU {ids} is not reserved: nothing to release "
                          "(see 'canhazgpu status')")
        raise NotOwner(_not_yours(data, "release") +
                       " (an admin can use 'release --user NAME --force')")

    async def release(self, caller: Caller, ids: tuple[int, ...] | None = None,
                      user: str | None = None, force: bool = False) -> list[int]:
        """Release the caller's manual reservations, the listed GPUs, or (admin) a user's."""
        if force and not caller.is_admin:
            raise NotOwner("--force is for root or the admin group only")
        if user is not None:
            if not force:
                raise InvalidRequest("release --user NAME needs --force (root or admin group)")
            if ids is not None:
                return await self._release("ids", ",".join(map(str, ids)), caller, True)
            return await self._release("user", user, caller, True)
        if ids is not None:
            parse_ids(",".join(map(str, ids)), await self.pool_size())
            return await self._release("ids", ",".join(map(str, ids)), caller, force)
        return await self._release("mine", "", caller, False)

    async def end(self, rid: str, caller: Caller, reason: str = "released",
                  force: bool | None = None) -> list[int]:
        """End one reservation by id: the caller's own (a run supervisor finishing), any
        for an admin, or force=True (the daemon reclaiming one whose owner died)."""
        return await self._release("rid", rid, caller,
                                   caller.is_admin if force is None else force, reason)

    async def release_idle(self, rid: str) -> list[int]:
        """End reservation `rid` by the idle policy: event `released`, reason `idle`."""
        return await self._release("rid", rid, IDLE_POLICY, True, "idle")

    async def heartbeat(self, res: Reservation, ttl_s: float | None = None) -> list[int]:
        """Refresh a reservation's leases (re-establishing lapsed ones); returns lost GPUs."""
        return await self.renew(res.rid, res.gpus, res.record, ttl_s or res.ttl_s)

    async def renew(self, rid: str, gpus, record: dict, ttl_s: float | None = None,
                    regain: bool = True) -> list[int]:
        """Refresh the leases of reservation `rid` on `gpus` for the uid of `record`;
        returns the GPUs lost. regain: re-establish a lapsed lease when nobody else took
        the GPU (the core's own callers; never a client of the API)."""
        status, data = await self._script(
            "heartbeat", ("OK", "NOTOWNER", "MANUAL"), rid=rid,
            ids=",".join(map(str, gpus)), record=json.dumps(record),
            ttl_ms=int((ttl_s or self.config.seconds("run_lease")) * 1000),
            regain=int(regain))
        if status == "NOTOWNER":
            raise NotOwner(_not_yours(data, "renew"))
        if status == "MANUAL":
            raise InvalidRequest(f"reservation {rid} is manual: it lasts its duration, "
                                 "and is not renewed by heartbeats")
        return json.loads(data)

    async def sweep(self) -> list[int]:
        """Finalize every reservation whose lease is gone; returns the GPUs finalized."""
        _, data = await self._script("sweep")
        return json.loads(data)

    # ------------------------------------------------------------------ queue
    def new_reservation(self, req: Request, caller: Caller) -> Reservation:
        """A reservation not granted yet (no GPUs): what a waiter queues with."""
        record = self.record(caller, req)
        return Reservation(record["rid"], (), caller.user, req.kind, self.ttl_s(req), record)

    async def enqueue(self, res: Reservation, req: Request, limit: int = 0) -> QueueStatus:
        """Join the FIFO queue with res (granted at once if the GPUs are free). limit: the
        most GPUs its uid may hold once granted (gpu_limit; 0: none): a grant waits while
        the user holds that many."""
        record = res.record
        waiter = {"wid": record["rid"], "user": record["user"], "uid": record["uid"],
                  "host": record["host"], "pid": record["pid"], "note": req.note,
                  "kind": req.kind, "base": record, "limit": limit,
                  **({"mode": "ids", "ids": list(req.ids)} if req.ids is not None
                     else {"mode": "count", "count": req.count})}
        _, data = await self._script(
            "enqueue", check=self.check(req), waiter=json.dumps(waiter),
            ttl_ms=int(self.config.seconds("queue_lease") * 1000))
        return QueueStatus.decode(data)

    async def queue_heartbeat(self, wid: str) -> QueueStatus | None:
        """Keep a waiter's place; None when it is no longer in the queue nor granted."""
        return (await self.queue_heartbeats([wid]))[wid]

    async def queue_heartbeats(self, wids: list[str]) -> dict[str, QueueStatus | None]:
        """Keep many waiters' places in one script (the daemon's): each one's status, None
        for those no longer in the queue nor granted."""
        _, data = await self._script("queue_heartbeat", wids=",".join(wids),
                                     ttl_ms=int(self.config.seconds("queue_lease") * 1000))
        found = {}
        for wid, doc in json.loads(data).items():
            st = QueueStatus.from_doc(doc)
            found[wid] = None if st.position == 0 and not st.done else st
        return found

    async def leave(self, wid: str, reason: str) -> list[int]:
        """Leave the queue, giving back whatever was granted so far (also a grant that
        completed just before)."""
        _, data = await self._script("leave", wid=wid, reason=reason)
        return json.loads(data)

    async def job_event(self, event: dict) -> None:
        """Publish a detached job's step (job_submitted/started/ended, docs/jobs.md)."""
        await self._script("job_event", event=json.dumps(event))

    # ------------------------------------------------------------------ report
    async def report(self, days: float) -> dict:
        """GPU hours per user over the last `days`, in-progress reservations up to now."""
        rows, since, now = await self.records(days)
        return summarize(rows, since, now, days)

    async def records(self, days: float) -> tuple[list[dict], int, int]:
        """(per-GPU reservation records of the last `days`, in-progress ones up to now;
        since_ms; now_ms): what a report sums, also over several hosts (hosts.py)."""
        state = await self.store.read_state(queue=False)  # holds only
        now = state.now_ms
        since = now - int(days * 86400 * 1000)
        rows = await self.store.history(since)
        rows += [Record(gpu=h.gpu, rid=h.rid, user=h.user, kind=h.kind, start_ms=h.start_ms,
                        end_ms=now) for h in state.holds.values()]
        from dataclasses import asdict  # (only the report needs it)
        return [asdict(r) for r in rows], since, now


def _not_yours(data: str, verb: str) -> str:
    """The NOTOWNER reply of a script ([{gpu, user}]) as one line."""
    who = "; ".join(f"GPU {r['gpu']} is reserved by {r['user']}" for r in json.loads(data))
    return f"{who}: only its owner can {verb} it"
