"""The service API: allocate, release, heartbeat, sweep, pool set-up, views and reports.

Every state change is one Lua script (see lua/); this module validates requests, gathers
what the scripts need (the caller, a GPU usage scan) and decodes their replies. It never
prints.
"""

from __future__ import annotations

import json
import secrets
import socket
import time

import anyio

from . import gpu, identity
from .accounting import summarize
from .config import Config
from .errors import (CorruptState, GpusUnavailable, InvalidRequest, NotEnoughGpus, NotOwner,
                     PoolBusy, PoolNotInitialized, ProviderUnavailable)
from .identity import Caller
from .model import GpuState, Hold, PoolView, Usage
from .request import QueueStatus, Request, Reservation, parse_count, parse_ids
from .store import Store

__all__ = ["Core", "QueueStatus", "Request", "Reservation", "Usage", "parse_count", "parse_ids"]


def _hold(gpu_id: int, raw: dict) -> Hold:
    try:
        return Hold(gpu=gpu_id, rid=raw["rid"], user=raw["user"], kind=raw["kind"],
                    start_ms=int(raw["start_ms"]), uid=int(raw.get("uid", -1)),
                    host=raw.get("host", ""), pid=int(raw.get("pid", 0)),
                    pid_start=float(raw.get("pid_start", 0.0)),
                    heartbeat_ms=int(raw.get("heartbeat_ms", 0)),
                    expires_ms=int(raw["expires_ms"]) if raw.get("expires_ms") else None,
                    note=raw.get("note", "") or "", waiting=bool(raw.get("waiting")))
    except (KeyError, TypeError, ValueError):
        raise CorruptState(f"corrupt reservation for GPU {gpu_id}: {raw!r}") from None


class Core:
    """The async service API for the pool of one host."""

    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        if store is None:
            redis = config.redis  # the URL and where it came from, for "cannot reach" lines
            store = Store(redis.url, config.host_name, explain=redis.unreachable)
        self.store = store
        self._provider = None
        self._size: int | None = None  # cached; every script says STALE if it changed

    async def aclose(self) -> None:
        await self.store.close()

    # ------------------------------------------------------------------ pool
    async def pool(self) -> dict:
        """The pool's settings (count, provider); PoolNotInitialized when there is none."""
        pool = await self.store.guard(self.store.redis.hgetall(self.store.key("pool")))
        if not pool or int(pool.get("count", 0) or 0) < 1:
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

    async def _script(self, name: str, args: list, check=None) -> tuple[str, str]:
        """Run a state-change script at the cached pool size, re-reading it when stale.

        `check(size)` validates the request against the pool size before each attempt.
        """
        while True:
            size = await self.pool_size()
            if check is not None:
                check(size)
            status, data = await self.store.run(name, size, args)
            if status == "STALE":
                self._size = int(data) if data else None
                continue
            if status == "NOPOOL":
                self._size = None
                await self.pool()  # raises PoolNotInitialized
            if status in ("OK", "SHORT", "UNAVAILABLE", "NOTHELD", "NOTOWNER", "GONE"):
                return status, data
            raise CorruptState(f"unexpected reply {status!r} from Redis script {name}")

    async def setup_pool(self, count: int | None, provider: str | None, force: bool,
                         caller: Caller | None = None) -> dict:
        """Create or resize the pool: root or the admin group only (caller None: this
        process). The provider must read this machine; it gives the count when none is."""
        if caller is None:
            caller = await anyio.to_thread.run_sync(identity.current, self.config.admin_group)
        if not caller.is_admin:
            group = self.config.admin_group
            who = f"root or members of group {group!r} (admin_group)" if group else \
                "root (no admin_group is configured)"
            raise NotOwner(f"only {who} may change the pool; you are {caller.user}: "
                           "ask an admin, or run it with sudo")
        prov = self.provider_named(provider or self.config.provider or None, count)
        try:
            found = await prov.count()  # a provider that cannot read this machine is refused
        except ProviderUnavailable as err:
            raise ProviderUnavailable(f"pool not changed: provider {prov.name} does not work "
                                      f"here: {err}") from None
        count = parse_count(found if count is None else count)
        current = await self.store.guard(self.store.redis.hget(self.store.key("pool"), "count"))
        span = max(count, int(current or 0))
        status, data = await self.store.run("pool", span, [count, prov.name, int(force)])
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
            pool = await self.store.guard(self.store.redis.hgetall(self.store.key("pool")))
            name = self.config.provider or pool.get("provider") or None
            self._provider = self.provider_named(name, int(pool.get("count") or 0) or None)
        return self._provider

    async def usage(self) -> Usage:
        """Current GPU usage: the daemon's snapshot when fresh, else a scan of our own."""
        snap = await self.store.read_usage()
        max_age_ms = self.config.seconds("snapshot_max_age") * 1000
        if snap and snap.get("source") == "daemon" and \
                time.time() * 1000 - int(snap.get("scanned_ms", 0)) <= max_age_ms:
            return Usage.from_json(snap)
        return await self.scan()

    async def scan(self, source: str = "cli") -> Usage:
        """Read every GPU now (the snapshot is stored by the allocate or usage script)."""
        provider = await self.provider()
        return Usage(int(time.time() * 1000), tuple(await provider.scan()), source)

    async def publish_usage(self, usage: Usage, events: list[dict]) -> int:
        """Store a scan as the host's snapshot and publish the events derived from it."""
        _, data = await self._script("usage", [
            json.dumps(usage.to_json(self.config.memory_threshold)), json.dumps(events)])
        return int(data)

    # ------------------------------------------------------------------ views
    async def view(self, usage: Usage | None = None) -> PoolView:
        """Holds, releases and usage of every GPU, as status shows them."""
        state = await self.store.read_state()
        count = int(state["pool"].get("count", 0) or 0)
        if count < 1:
            await self.pool()  # raises PoolNotInitialized
        usage = usage or await self.usage()
        by_index = {g.index: g for g in usage.gpus}
        gpus = []
        for i in range(count):
            raw = state["live"].get(i)
            released = state["released"].get(str(i))
            gpus.append(GpuState(
                gpu=i,
                hold=_hold(i, raw) if raw is not None else None,
                last_released_ms=int(released.split("|")[0]) if released else None,
                usage=by_index.get(i),
                threshold_mb=self.config.memory_threshold,
            ))
        queue = tuple(state["waiters"][w] for w in state["queue"] if w in state["waiters"])
        return PoolView(now_ms=state["now_ms"], gpus=tuple(gpus),
                        provider=state["pool"].get("provider", ""),
                        scanned_ms=usage.scanned_ms, queue=queue)

    # ------------------------------------------------------------------ changes
    def record(self, caller: Caller, req: Request, rid: str | None = None) -> dict:
        # machine: the real one, so a daemon never judges PIDs of another machine that
        # shares this host name
        return {"rid": rid or secrets.token_hex(8), "user": caller.user, "uid": caller.uid,
                "host": self.config.host_name, "machine": socket.gethostname(),
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

    async def allocate(self, req: Request, caller: Caller) -> Reservation:
        """Reserve GPUs now, or raise NotEnoughGpus / GpusUnavailable. Never waits."""
        await self.validate(req)
        usage = await self.usage()
        record = self.record(caller, req)
        ttl = self.ttl_s(req)
        threshold = self.config.memory_threshold
        mode, want = ("ids", ",".join(map(str, req.ids))) if req.ids is not None \
            else ("count", req.count)
        # our own scan tells the queue which GPUs are busy (the daemon's is stored already)
        snapshot = json.dumps(usage.to_json(threshold, full=False)) \
            if usage.source != "daemon" else ""
        status, data = await self._script("allocate", [
            mode, want, ",".join(map(str, usage.busy(threshold))),
            ",".join(map(str, usage.errors())), json.dumps(record), int(ttl * 1000),
            self.config.strategy, snapshot], check=self.check(req))
        if status == "OK":
            return Reservation(record["rid"], tuple(json.loads(data)), caller.user, req.kind,
                               ttl, record)
        if status == "SHORT":
            available, unreserved = (int(x) for x in data.split(","))
            raise NotEnoughGpus(req.size, available, unreserved)
        reasons = "; ".join(f"GPU {r['gpu']} is {r['reason']}" for r in json.loads(data))
        raise GpusUnavailable(f"{reasons} - run 'canhazgpu status' for details")

    async def _release(self, mode: str, arg: str, caller: Caller, force: bool,
                       reason: str = "released") -> list[int]:
        status, data = await self._script(
            "release", [mode, arg, caller.user, int(force), reason])
        if status == "OK":
            return json.loads(data)
        if status == "NOTHELD":
            ids = ", ".join(map(str, json.loads(data)))
            raise InvalidRequest(f"GPU {ids} is not reserved: nothing to release "
                                 "(see 'canhazgpu status')")
        who = "; ".join(f"GPU {r['gpu']} is reserved by {r['user']}" for r in json.loads(data))
        raise NotOwner(f"{who}: only its owner can release it "
                       "(an admin can use 'release --user NAME --force')")

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

    async def end(self, rid: str, caller: Caller, reason: str = "released") -> list[int]:
        """End one reservation by id (a run supervisor finishing, or a reclaim)."""
        return await self._release("rid", rid, caller, True, reason)

    async def heartbeat(self, res: Reservation, ttl_s: float | None = None) -> list[int]:
        """Refresh a reservation's leases (re-establishing lapsed ones); returns lost GPUs."""
        _, data = await self._script("heartbeat", [
            res.rid, res.env_value(), json.dumps(res.record), int((ttl_s or res.ttl_s) * 1000)])
        return json.loads(data)

    async def sweep(self) -> list[int]:
        """Finalize every reservation whose lease is gone; returns the GPUs finalized."""
        _, data = await self._script("sweep", [])
        return json.loads(data)

    # ------------------------------------------------------------------ queue
    def new_reservation(self, req: Request, caller: Caller) -> Reservation:
        """A reservation not granted yet (no GPUs): what a waiter queues with."""
        record = self.record(caller, req)
        return Reservation(record["rid"], (), caller.user, req.kind, self.ttl_s(req), record)

    async def enqueue(self, res: Reservation, req: Request) -> QueueStatus:
        """Join the FIFO queue with res (granted at once if the GPUs are free)."""
        record = res.record
        waiter = {"wid": record["rid"], "user": record["user"], "uid": record["uid"],
                  "host": record["host"], "pid": record["pid"], "note": req.note,
                  "kind": req.kind, "base": record,
                  **({"mode": "ids", "ids": list(req.ids)} if req.ids is not None
                     else {"mode": "count", "count": req.count})}
        _, data = await self._script("enqueue", [
            json.dumps(waiter), int(self.config.seconds("queue_lease") * 1000)],
            check=self.check(req))
        return QueueStatus.decode(data)

    async def queue_heartbeat(self, wid: str) -> QueueStatus | None:
        """Keep a waiter's place; None when it is no longer in the queue nor granted."""
        status, data = await self._script("queue_heartbeat", [
            wid, int(self.config.seconds("queue_lease") * 1000)])
        return None if status == "GONE" else QueueStatus.decode(data)

    async def leave(self, wid: str, reason: str) -> list[int]:
        """Leave the queue, giving back whatever was granted so far."""
        _, data = await self._script("leave", [wid, reason])
        return json.loads(data)

    # ------------------------------------------------------------------ report
    async def report(self, days: float) -> dict:
        """GPU hours per user over the last `days`, in-progress reservations up to now."""
        state = await self.store.read_state()
        now = state["now_ms"]
        since = now - int(days * 86400 * 1000)
        rows = await self.store.history(since)
        rows += [{**raw, "end_ms": now} for raw in state["live"].values()]
        return summarize(rows, since, now, days)
