"""The daemon's scanner: GPU truth every interval, published as events only when it changes.

Each scan is stored as the host's usage snapshot (what `status` reads while it is fresh) by
core.publish_usage, together with the events derived from it, so the snapshot and its events
share one script and one sequence. What counts as a change is decided on a few facts per GPU
(`Facts`), never on raw memory figures, so an idle pool publishes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import anyio

from .core import Core
from .errors import CanHazGpuError, PoolNotInitialized
from .idle import Policy, track
from .model import GpuState, GpuUsage, PoolView, Usage

log = logging.getLogger("canhazgpu.serve")


@dataclass(frozen=True)
class Facts:
    """What events are about, for one GPU: a change in any of these is an event."""

    error: str | None
    in_use: bool  # used memory at or above the threshold
    pids: tuple[int, ...]
    unreserved: bool

    @classmethod
    def of(cls, g: GpuState) -> Facts:
        usage = g.usage
        return cls(error=usage.error if usage else None, in_use=g.in_use,
                   pids=tuple(sorted(p.pid for p in usage.processes)) if usage else (),
                   unreserved=g.unreserved)


def facts_of(view: PoolView) -> dict[int, Facts]:
    return {g.gpu: Facts.of(g) for g in view.gpus}


def _processes(g: GpuState) -> list[dict]:
    return [{"pid": p.pid, "name": p.name, "user": p.user, "used_memory_mb": p.used_memory_mb}
            for p in (g.usage.processes if g.usage else ())]


def _usage_event(g: GpuState, old: Facts, new: Facts) -> dict:
    ev = {"type": "usage_changed", "gpus": [g.gpu], "in_use": new.in_use,
          "memory_used_mb": g.usage.memory_used_mb if g.usage else 0,
          "memory_total_mb": g.usage.memory_total_mb if g.usage else 0}
    # Lua's cjson writes an empty list as {}: lists are left out when empty.
    lists = {"processes": _processes(g),
             "started": sorted(set(new.pids) - set(old.pids)),
             "ended": sorted(set(old.pids) - set(new.pids))}
    ev.update({k: v for k, v in lists.items() if v})
    return ev


def _unreserved_event(g: GpuState) -> dict:
    users = list(g.usage.users) if g.usage else []
    ev = {"type": "unreserved_detected", "gpus": [g.gpu], "user": users[0] if users else None,
          "memory_used_mb": g.usage.memory_used_mb if g.usage else 0}
    if users:
        ev["users"] = users
    if _processes(g):
        ev["processes"] = _processes(g)
    return ev


NOTHING_KNOWN = Facts(error=None, in_use=False, pids=(), unreserved=False)


def diff(before: dict[int, Facts], view: PoolView) -> list[dict]:
    """The events that take `before` to `view`, per GPU in id order: error, usage, unreserved.

    A GPU without a `before` (first scan with no stored snapshot, pool grown) is a baseline
    for its usage, but what is wrong with it is news: unreserved use and errors are published.
    """
    events: list[dict] = []
    for g in view.gpus:
        old, new = before.get(g.gpu), Facts.of(g)
        baseline = old is None
        old = old or NOTHING_KNOWN
        if old == new:
            continue
        if new.error != old.error:
            events.append({"type": "gpu_error", "gpus": [g.gpu], "error": new.error}
                          if new.error else {"type": "gpu_recovered", "gpus": [g.gpu]})
        if (new.in_use, new.pids) != (old.in_use, old.pids) and not baseline:
            events.append(_usage_event(g, old, new))
        if new.unreserved and not old.unreserved:
            events.append(_unreserved_event(g))
        elif old.unreserved and not new.unreserved:
            events.append({"type": "unreserved_cleared", "gpus": [g.gpu], "status": g.status})
    return events


class Scanner:
    """Scan, compare with what was last published, store the snapshot and publish changes."""

    def __init__(self, core: Core, interval_s: float, trouble) -> None:
        self.core = core
        self.interval_s = interval_s
        self.trouble = trouble  # trouble(where, error | None): the daemon logs each once
        self.published: dict[int, Facts] = {}  # empty: nothing known yet
        self.policy = Policy.of(core.config)  # use it or lose it (idle.py)
        self.idle: dict = {}  # rid -> its idle clock, as stored with the snapshot

    async def baseline(self) -> None:
        """Start from the stored snapshot, so a daemon restart neither repeats nor misses."""
        try:
            _, snap = await self.core.store.read_usage()
            if snap is not None and snap.source == "daemon":
                self.published = facts_of(await self.core.view(snap))
                self.idle = snap.idle
        except PoolNotInitialized:
            pass  # nothing to compare with: the first scan is the baseline
        except CanHazGpuError as err:
            log.warning("ignoring the stored usage snapshot: %s", err)

    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        await self.baseline()
        started = False
        while True:
            due = anyio.current_time() + self.interval_s
            await self.scan_once()
            if not started:
                task_status.started()
                started = True
            await anyio.sleep_until(due)

    async def scan_once(self) -> list[dict]:
        """One scan; returns the events published (none when the scan or Redis failed)."""
        try:
            usage = await self.core.scan(source="daemon")
            self.trouble("scan", None)
        except PoolNotInitialized:
            return []
        except CanHazGpuError as err:
            # Every GPU unreadable, at once: status shows why instead of the last scan's
            # usage until it ages, and each GPU's gpu_error event says the scan failed.
            self.trouble("scan", err)
            try:
                size = await self.core.pool_size()
            except CanHazGpuError:
                return []
            usage = Usage(0, tuple(GpuUsage(index=i, error=f"scan failed: {err}")
                                   for i in range(size)), "daemon")
        try:
            view = await self.core.view(usage, queue=False)  # GPUs only: not the waiters
            idle, noticed, idle_rids = track(view, self.idle, self.policy)
            events = diff(self.published, view) + noticed
            dropped = await self.core.publish_usage(replace(usage, idle=idle), events)
        except CanHazGpuError as err:
            self.trouble("snapshot", err)  # nothing published: the same changes next time
            return []
        self.trouble("snapshot", None)
        # unreadable state is shown as an error row by status; the log names its key once
        self.trouble("state", "; ".join(g.corrupt for g in view.gpus if g.corrupt) or None)
        facts = facts_of(view)
        for gpu in dropped:  # reserved while we scanned: not unreserved, nothing published
            facts[gpu] = replace(facts[gpu], unreserved=False)
        self.published = facts
        self.idle = idle
        for rid in idle_rids:  # warned in this scan or before: idle past idle_release_after
            try:
                await self.core.release_idle(rid)
            except CanHazGpuError as err:
                self.trouble("idle release", err)
        return [e for e in events
                if not (e["type"] == "unreserved_detected" and e["gpus"][0] in dropped)]
