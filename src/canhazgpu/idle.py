"""Use it or lose it: how long each reservation's GPUs have been idle, and what follows.

The daemon's scanner calls `track` on every scan with the pool as it sees it. A GPU is idle
when no process of its holder (or of an unknown owner: a container) has memory at or above
the threshold and its utilisation is below `idle_utilization_pct`; a reservation is idle
while all its GPUs are. The result is stored with the usage snapshot (Usage.idle), so
`status` shows "idle 2h 10m" and a restarted daemon neither forgets a clock nor warns twice.

Policy (docs/idle.md), off unless configured: past `idle_warn_after` one `idle_warning`
event; past `idle_release_after` the reservation is released with reason `idle`. Only
manual reservations (and kernels' with `idle_kernels`); runs and jobs never. The same scan
also says when a manual reservation expires soon (`expiring`) and when someone else uses a
reserved GPU (`foreign_use`): events the notifier (notify/) delivers.
"""

from __future__ import annotations

from .config import Config
from .model import GpuState, PoolView, Value, at_threshold, fill

UNKNOWN_USER = "unknown"


class Policy(Value):
    """kinds: what the policy may release; expiry_ms: "expires soon" this long before the
    end. (A Value, not a dataclass: core.py imports this module on the views' path.)"""

    __slots__ = ("utilization_pct", "warn_after_ms", "release_after_ms", "kinds",
                 "expiry_ms")

    def __init__(self, utilization_pct: int = 5, warn_after_ms: int | None = None,
                 release_after_ms: int | None = None,
                 kinds: frozenset = frozenset({"manual"}),
                 expiry_ms: int | None = None) -> None:
        fill(self, locals())

    @classmethod
    def of(cls, config: Config) -> Policy:
        def ms(name: str) -> int | None:
            seconds = config.optional_seconds(name)
            return None if seconds is None else int(seconds * 1000)
        kinds = {"manual", "kernel"} if config.idle_kernels else {"manual"}
        return cls(config.idle_utilization_pct, ms("idle_warn_after"),
                   ms("idle_release_after"), frozenset(kinds), ms("notify_expiry"))


def gpu_idle(g: GpuState, utilization_pct: int) -> bool:
    """Nothing of the holder's computes on this GPU (unknown usage is never idle; `track`
    keeps a clock as it was while a GPU cannot be read)."""
    usage, hold = g.usage, g.hold
    if usage is None or usage.error or hold is None:
        return False
    if usage.utilization_pct is not None and usage.utilization_pct >= utilization_pct:
        return False
    if not usage.processes:  # processes hidden (another PID namespace): trust the memory
        return not g.in_use
    return not any(p.user in (hold.user, UNKNOWN_USER) and at_threshold(
        usage.memory_used_mb if p.used_memory_mb is None else p.used_memory_mb,
        g.threshold_mb) for p in usage.processes)


def _foreign(g: GpuState) -> list[str]:
    """Other users with processes on a reserved GPU."""
    users = g.usage.users if g.usage else ()
    return [u for u in users if u not in (g.hold.user, UNKNOWN_USER)]


def track(view: PoolView, before: dict, policy: Policy) -> tuple[dict, list[dict], list[str]]:
    """(the new idle map, events to publish, rids to release) for one scan at view.now_ms.

    `before` is the previous map: rid -> {"since": ms or None, "warned", "expiring",
    "foreign": ["gpu:user", ...]}. A reservation first seen idle starts its clock now."""
    now = view.now_ms
    by_rid: dict[str, list[GpuState]] = {}
    for g in view.gpus:
        if g.hold is not None and g.corrupt is None and not g.hold.waiting:
            by_rid.setdefault(g.hold.rid, []).append(g)
    after, events, release = {}, [], []
    for rid, gpus in by_rid.items():
        hold, ids = gpus[0].hold, [g.gpu for g in gpus]
        old = before.get(rid) or {}
        base = {"type": "", "rid": rid, "user": hold.user, "kind": hold.kind, "gpus": ids}
        if any(g.usage is None or g.usage.error for g in gpus):
            after[rid] = old  # cannot judge now: the clock neither runs on nor resets
            continue
        idle = all(gpu_idle(g, policy.utilization_pct) for g in gpus)
        since = (old.get("since") or now) if idle else None
        entry = {"since": since, "warned": bool(old.get("warned")) and idle,
                 "expiring": bool(old.get("expiring")), "foreign": []}
        idle_ms = now - since if since is not None else 0
        if idle and hold.kind in policy.kinds:
            due_release = policy.release_after_ms is not None \
                and idle_ms >= policy.release_after_ms
            due_warn = policy.warn_after_ms is not None and idle_ms >= policy.warn_after_ms
            if (due_warn or due_release) and not entry["warned"]:
                entry["warned"] = True
                left = None if policy.release_after_ms is None \
                    else max(0, policy.release_after_ms - idle_ms)
                events.append({**base, "type": "idle_warning", "idle_ms": idle_ms,
                               **({"release_in_ms": left} if left is not None else {})})
            if due_release:
                release.append(rid)
        if hold.kind == "manual" and hold.expires_ms is not None and policy.expiry_ms \
                and not entry["expiring"] and hold.expires_ms - hold.start_ms > policy.expiry_ms \
                and 0 < hold.expires_ms - now <= policy.expiry_ms:
            entry["expiring"] = True
            events.append({**base, "type": "expiring", "expires_ms": hold.expires_ms,
                           "expires_in_ms": hold.expires_ms - now})
        for g in gpus:
            for user in _foreign(g):
                key = f"{g.gpu}:{user}"
                entry["foreign"].append(key)
                if key not in (old.get("foreign") or ()):
                    events.append({**base, "type": "foreign_use", "gpus": [g.gpu],
                                   "users": [user], "memory_used_mb": g.usage.memory_used_mb})
        if not entry["foreign"]:
            del entry["foreign"]  # the snapshot stays small
        after[rid] = entry
    return after, events, release


def idle_since(usage_idle: dict, rid: str) -> int | None:
    """When reservation `rid` became idle, from a snapshot's idle map (None: busy/unknown)."""
    entry = usage_idle.get(rid)
    since = entry.get("since") if isinstance(entry, dict) else None
    return since if isinstance(since, int) else None
