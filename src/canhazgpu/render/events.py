"""Event text: one human line per event, for `canhazgpu events`, `status --follow` and the
daemon's journal. Pure functions; the event types themselves live in canhazgpu.events."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..text import printable
from ..timefmt import hm

if TYPE_CHECKING:
    from ..events import Event


def _ids(gpus) -> str:
    return ",".join(map(str, gpus)) if gpus else "-"


def _owner(doc: dict) -> str:
    kind = f", {doc['kind']}" if doc.get("kind") else ""
    return f"{doc.get('user') or '?'}{kind}"


def _procs(doc: dict) -> str:
    procs = doc.get("processes") or []
    return ", ".join(f"PID {p.get('pid')} ({p.get('name') or 'unknown'}, {p.get('user') or '?'})"
                     for p in procs) or "no processes"


_DESCRIBE = {
    "reserved": lambda d: f"GPU {_ids(d.get('gpus'))} reserved by {d.get('user')} "
                          f"({d.get('kind')}{', re-acquired' if d.get('reacquired') else ''})",
    "released": lambda d: f"GPU {_ids(d.get('gpus'))} released ({_owner(d)})"
                          + (": idle too long" if d.get("reason") == "idle" else ""),
    "expired": lambda d: f"GPU {_ids(d.get('gpus'))} expired ({_owner(d)})",
    "reclaimed": lambda d: f"GPU {_ids(d.get('gpus'))} reclaimed ({_owner(d)}): owner died",
    "owner": lambda d: f"GPU {_ids(d.get('gpus'))} now held by PID {d.get('pid')} ({_owner(d)})",
    "forced": lambda d: f"GPU {_ids(d.get('gpus'))} ended by a pool resize ({_owner(d)})",
    "pool_changed": lambda d: f"pool is {d.get('count')} GPUs (was {d.get('old_count')}), "
                              f"provider {d.get('provider') or '?'}",
    "queued": lambda d: f"{d.get('user')} queued for "
                        + (f"GPU {_ids(d.get('ids'))}" if d.get("ids") else
                           f"{d.get('count')} GPU(s)") + f" at position {d.get('position')}",
    "granted": lambda d: f"GPU {_ids(d.get('gpus'))} granted to {d.get('user')}"
                         + ("" if d.get("complete") else " (partial, waiting for more)"),
    "left": lambda d: f"{d.get('user')} left the queue ({d.get('reason')})"
                      + (f", gave back GPU {_ids(d.get('gpus'))}" if d.get("gpus") else ""),
    "unreserved_detected": lambda d: f"GPU {_ids(d.get('gpus'))} IN USE WITHOUT RESERVATION by "
                                     f"{', '.join(d.get('users') or []) or 'unknown'} "
                                     f"({d.get('memory_used_mb')}MB)",
    "unreserved_cleared": lambda d: f"GPU {_ids(d.get('gpus'))} no longer in use without "
                                    f"reservation (now {d.get('status')})",
    "usage_changed": lambda d: f"GPU {_ids(d.get('gpus'))} {d.get('memory_used_mb')}MB used"
                               f"{' (in use)' if d.get('in_use') else ''}: {_procs(d)}",
    "gpu_error": lambda d: f"GPU {_ids(d.get('gpus'))} error: {d.get('error')}",
    "gpu_recovered": lambda d: f"GPU {_ids(d.get('gpus'))} readable again",
    "job_submitted": lambda d: f"{_job(d)} submitted by {d.get('user')}",
    "job_started": lambda d: f"{_job(d)} of {d.get('user')} started on GPU {_ids(d.get('gpus'))}",
    "job_ended": lambda d: f"{_job(d)} of {d.get('user')} {d.get('state')}"
                           + (f" (exit {d['exit_code']})" if d.get("exit_code") is not None
                              else "") + (f": {d['reason']}" if d.get("reason") else ""),
    "idle_warning": lambda d: f"GPU {_ids(d.get('gpus'))} ({_owner(d)}) idle for "
                              f"{hm((d.get('idle_ms') or 0) / 1000)}"
                              + (f": released in {hm(d['release_in_ms'] / 1000)} unless used"
                                 if d.get("release_in_ms") is not None else ""),
    "expiring": lambda d: f"GPU {_ids(d.get('gpus'))} ({_owner(d)}) expires in "
                          f"{hm((d.get('expires_in_ms') or 0) / 1000)}",
    "foreign_use": lambda d: f"GPU {_ids(d.get('gpus'))} reserved by {d.get('user')} is used "
                             f"by {', '.join(d.get('users') or []) or 'unknown'}",
}


def _job(doc: dict) -> str:
    name = f" ({doc['name']})" if doc.get("name") else ""
    return f"job {doc.get('job')}{name}"


def line(event: Event) -> str:
    """'#42 reserved: GPU 1,3 reserved by alice (run)': the journal's and `events`' format."""
    return f"#{event.seq} {printable(event.type)}: {describe(event)}"


def describe(event: Event) -> str:
    """One human line for an event (its fields, without time and sequence number)."""
    doc = {**event.data, "gpus": list(event.gpus)}
    try:
        return printable(_DESCRIBE[event.type](doc))  # names and notes are other users'
    except KeyError:
        extra = {k: v for k, v in event.data.items()
                 if k not in ("v", "seq", "host", "time_ms", "type")}
        return json.dumps(extra, sort_keys=True)
