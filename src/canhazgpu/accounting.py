"""GPU-hour accounting: history records in, per-user totals out. Pure functions."""

from __future__ import annotations

HOURS_DECIMALS = 6


def summarize(rows: list[dict], since_ms: int, now_ms: int, days: float) -> dict:
    """GPU hours per user from per-GPU reservation records (ended or in progress).

    Time before `since_ms` is not counted; a reservation over several GPUs counts once in
    the run/manual tallies and once per GPU in the hours.
    """
    users: dict[str, dict] = {}
    seen: set = set()
    for row in rows:
        start = max(int(row["start_ms"]), since_ms)
        hours = max(0, int(row["end_ms"]) - start) / 3_600_000
        entry = users.setdefault(row["user"], {"user": row["user"], "gpu_hours": 0.0,
                                               "run": 0, "manual": 0, "idle_released": 0})
        entry["gpu_hours"] += hours
        key = (row["rid"], row.get("start_ms"))
        if key not in seen:
            seen.add(key)
            kind = "run" if row.get("kind") == "job" else row.get("kind")  # a detached run
            if kind in ("run", "manual"):
                entry[kind] += 1
            if row.get("reason") == "idle":  # released by the idle policy (docs/idle.md)
                entry["idle_released"] += 1
    # Shares of the hours as reported (6 decimals: 3.6 ms), so that no one has 0 hours and a
    # share at once; text shows what two decimals would hide as "<0.01" (render.tables).
    for u in users.values():
        u["gpu_hours"] = round(u["gpu_hours"], HOURS_DECIMALS)
    total = round(sum(u["gpu_hours"] for u in users.values()), HOURS_DECIMALS)
    for u in users.values():
        u["percent"] = round(100 * u["gpu_hours"] / total, 1) if total else 0.0
    ordered = sorted(users.values(), key=lambda u: (-u["gpu_hours"], u["user"]))
    return {"days": days, "since_ms": since_ms, "now_ms": now_ms,
            "total_gpu_hours": total, "users": ordered}
