"""Status output: a PoolView in, text or a JSON document out. Pure functions, no I/O.

Three views of the same state (docs/status.md):
- lines: the original one-line-per-GPU format of the documents, which users' scripts
  parse (`grep "WITHOUT RESERVATION"`, `by users? ([^-]+) - (\\d+)MB`, ...): keep it exact;
- table: the newer columns GPU STATUS USER DURATION TYPE MODEL DETAILS VALIDATION (and
  NOTE), fitted to the terminal's width;
- JSON: machine values (epoch ms, seconds, MB), version 1.
"""

from __future__ import annotations

from ..model import DEFAULT_THRESHOLD_MB, GpuProcess, GpuState, GpuUsage, Hold, PoolView
from ..request import HEARTBEAT
from ..text import printable
from ..timefmt import coarse, hm, hms, short
from .tables import Column, fit, line, rule_cells

JSON_VERSION = 1

# Minimum widths are the documents' own, so a table of short values matches them exactly.
# MODEL and NOTE appear only when some GPU has one.
# On a narrow terminal, GPU, STATUS, USER and DETAILS (until when) stay whole; the others
# give way in this order (docs/status.md): MODEL, NOTE, TYPE, VALIDATION are cut, then
# MODEL, NOTE, TYPE, VALIDATION, DURATION are left out; USER is cut only when nothing else is.
COLUMNS = (Column("GPU", 3), Column("STATUS", 9),
           Column("USER", 8, shrink=10, least=8),
           Column("DURATION", 11, drop=9), Column("TYPE", 7, shrink=3, drop=7, least=7),
           Column("MODEL", 16, shrink=1, drop=5, least=16),
           Column("DETAILS", 26),
           Column("VALIDATION", 21, shrink=4, drop=8, least=12),
           Column("NOTE", shrink=2, drop=6, least=10))
OPTIONAL = ("MODEL", "NOTE")
COLORS = {"available": "\033[32m", "reserved": "\033[33m", "unreserved": "\033[31m",
          "error": "\033[31m"}


# ---------------------------------------------------------------- shared pieces
def _model(usage: GpuUsage | None) -> str | None:
    """The model a GPU's processes serve (gpu/models.py, loaded only when a GPU has
    processes: start-up time)."""
    if usage is None or not usage.processes:
        return None
    from ..gpu.models import model_of
    return model_of(usage)


def _age_s(now_ms: int, then_ms: int) -> float:
    return max(0, now_ms - then_ms) / 1000


def _heartbeat_ms(hold: Hold) -> int:
    return hold.heartbeat_ms or hold.start_ms


def _validation(g: GpuState, *, busy: str, idle: str, failed: str) -> str:
    """What a reserved GPU is really doing, in one of three texts: `idle` when no process
    runs and the memory is below the threshold, `failed` when the GPU could not be read,
    else `busy`. They may use {mb}, {count} and {error}. Empty when no usage is known."""
    usage = g.usage
    if usage is None:
        return ""
    if usage.error:
        text = failed
    elif not usage.processes and not g.in_use:
        text = idle
    else:
        text = busy
    return text.format(mb=usage.memory_used_mb, count=len(usage.processes), error=usage.error)


def idle_text(g: GpuState, now_ms: int) -> str | None:
    """'idle 2h 10m' for a held GPU whose reservation the daemon saw idle, else None."""
    if g.hold is None or g.idle_since_ms is None:
        return None
    return f"idle {hm(_age_s(now_ms, g.idle_since_ms))}"


def _pids(processes: tuple[GpuProcess, ...]) -> str:
    """'PID 1 (a), PID 2 (b) and 3 more': the first two, then a count."""
    shown = ", ".join(f"PID {p.pid} ({p.name or 'unknown'})" for p in processes[:2])
    extra = len(processes) - 2
    return f"{shown} and {extra} more" if extra > 0 else shown


def _unreserved_usage(usage: GpuUsage) -> str:
    """'1024MB used by PID 12345 (python3), ...' (the device's memory, not the processes')."""
    text = f"{usage.memory_used_mb}MB used"
    return f"{text} by {_pids(usage.processes)}" if usage.processes else text


def _kind(hold: Hold) -> str:
    """The TYPE: run, manual, or `job NAME` for a named detached job (docs/jobs.md)."""
    name = printable(" ".join(hold.name.split()))[:40]
    return f"{hold.kind} {name}" if name else hold.kind


def _hold_detail(hold: Hold, now_ms: int, fmt) -> str:
    """What keeps a reservation alive: its heartbeat (run) or its expiry (manual)."""
    if hold.waiting:
        return "waiting for more GPUs"
    if hold.kind in HEARTBEAT:
        return f"heartbeat {fmt(_age_s(now_ms, _heartbeat_ms(hold)))} ago"
    if hold.expires_ms is not None:
        return f"expires in {fmt(_age_s(hold.expires_ms, now_ms))}"
    return ""


# ---------------------------------------------------------------- lines (seeds/003)
def render_lines(view: PoolView) -> str:
    """One line per GPU and nothing else, exactly as in the documents."""
    return "\n".join(printable(_line(g, view.now_ms)) for g in view.gpus)


def _line(g: GpuState, now_ms: int) -> str:
    head = f"GPU {g.gpu}: "
    status = g.status
    if status == "reserved":
        return head + _reserved_line(g, now_ms)
    if status == "error":
        return f"{head}ERROR ({g.error})"
    if status == "unreserved":
        return f"{head}IN USE WITHOUT RESERVATION by {_who(g.usage.users)} - " \
               + _unreserved_usage(g.usage)
    # never reserved: nothing in parentheses, as the original prints it
    since = "" if g.last_released_ms is None else \
        f" (last released {hms(_age_s(now_ms, g.last_released_ms))} ago)"
    seen = f" [validated: {g.usage.memory_used_mb}MB used]" if g.usage else ""
    return f"{head}AVAILABLE{since}{seen}"


def _reserved_line(g: GpuState, now_ms: int) -> str:
    hold = g.hold
    detail = _hold_detail(hold, now_ms, hms)
    if hold.kind in HEARTBEAT and not hold.waiting:
        detail = "last " + detail
    info = f"{_kind(hold)}, {detail}" if detail else _kind(hold)
    text = f"IN USE by {hold.user} for {hms(_age_s(now_ms, hold.start_ms))} ({info})"
    seen = _validation(g, busy="validated: {mb}MB, {count} processes",
                       idle="validated: no actual usage detected",
                       failed="validation failed: {error}")
    return f"{text} [{seen}]" if seen else text


def _who(users: tuple[str, ...]) -> str:
    """'user bob', 'users root, alice', 'users alice, bob and charlie' (the documents' forms)."""
    if len(users) <= 1:
        return f"user {users[0] if users else 'unknown'}"
    if len(users) == 2:
        return f"users {users[0]}, {users[1]}"
    return f"users {', '.join(users[:-1])} and {users[-1]}"


# ---------------------------------------------------------------- table (seeds/000)
def render_table(view: PoolView, *, color: bool = False, width: int | None = None) -> str:
    """The newer table; columns as wide as their widest value (at least the documents'),
    MODEL and NOTE only when some GPU has one. With `width` (the terminal's), the table
    fits it: the less telling columns are cut (with an ellipsis) or left out, in the order
    of COLUMNS' ranks (docs/status.md)."""
    rows = [(g.status, _cells(g, view.now_ms)) for g in view.gpus]
    shown = [i for i, col in enumerate(COLUMNS)
             if col.title not in OPTIONAL or any(cells[i] for _, cells in rows)]
    columns = [COLUMNS[i] for i in shown]
    rows = [(status, [cells[i] for i in shown]) for status, cells in rows]
    widths = fit(columns, [cells for _, cells in rows], width)
    lines = [line([col.title for col in columns], widths, columns),
             line(rule_cells(widths), widths, columns)]
    for status, cells in rows:
        lines.append(line(cells, widths, columns, colors={1: COLORS[status]} if color else None))
    return "\n".join(lines)


def _cells(g: GpuState, now_ms: int) -> list[str]:
    usage, hold, status = g.usage, g.hold, g.status
    model = _model(usage) or ""
    if status == "reserved":
        seen = idle_text(g, now_ms) or _validation(
            g, busy="{mb}MB, {count} processes", idle="no usage detected",
            failed="error: {error}")
        return [str(g.gpu), "reserved", hold.user, short(_age_s(now_ms, hold.start_ms)),
                _kind(hold), model, _hold_detail(hold, now_ms, short), seen,
                " ".join(hold.note.split())]  # one line, whatever the note holds
    if status == "error":
        # the message in DETAILS: the column that is always shown
        return [str(g.gpu), "error", "", "", "", "", g.error, "", ""]
    if status == "unreserved":
        return [str(g.gpu), "UNRESERVED", ",".join(usage.users) or "unknown", "", "", model,
                "WITHOUT RESERVATION", _unreserved_usage(usage), ""]
    free = "free" if g.last_released_ms is None else \
        f"free for {coarse(_age_s(now_ms, g.last_released_ms))}"
    seen = f"{usage.memory_used_mb}MB used" if usage else ""
    return [str(g.gpu), "available", "", "", "", model, free, seen, ""]


# ---------------------------------------------------------------- JSON
def render_json(view: PoolView) -> dict:
    """The documented JSON document (docs/status.md): machine values, stable keys."""
    threshold = view.gpus[0].threshold_mb if view.gpus else DEFAULT_THRESHOLD_MB
    return {
        "version": JSON_VERSION,
        "time_ms": view.now_ms,
        "provider": view.provider,
        "scanned_ms": view.scanned_ms,
        "threshold_mb": threshold,
        "summary": summary_counts(view),
        "gpus": [_gpu_json(g, view.now_ms) for g in view.gpus],
    }


def summary_counts(view: PoolView) -> dict[str, int]:
    counts = {"total": len(view.gpus), "available": 0, "reserved": 0, "unreserved": 0,
              "error": 0}
    for g in view.gpus:
        counts[g.status] += 1
    return counts


def _gpu_json(g: GpuState, now_ms: int) -> dict:
    usage, status = g.usage, g.status
    model = _model(usage)
    free = status == "available" and g.last_released_ms is not None
    return {
        "id": g.gpu,
        "status": status,
        "reservation": _hold_json(g, now_ms) if g.hold else None,
        "last_released_ms": g.last_released_ms,
        "free_for_s": _age_s(now_ms, g.last_released_ms) if free else None,
        "memory_used_mb": usage.memory_used_mb if usage else None,
        "memory_total_mb": usage.memory_total_mb if usage else None,
        "name": usage.name if usage else None,
        "uuid": usage.uuid if usage else None,
        "utilization_pct": usage.utilization_pct if usage else None,
        "error": g.error,
        "users": list(usage.users) if usage else [],
        "processes": [{"pid": p.pid, "name": p.name, "user": p.user,
                       "used_memory_mb": p.used_memory_mb, "cmdline": list(p.cmdline)}
                      for p in (usage.processes if usage else ())],
        "model": {"id": model, "provider": _provider(model)} if model else None,
    }


def _provider(model: str) -> str | None:
    from ..gpu.models import model_provider
    return model_provider(model)


def _hold_json(g: GpuState, now_ms: int) -> dict:
    hold, idle = g.hold, g.idle_since_ms
    beat = _heartbeat_ms(hold) if hold.kind in HEARTBEAT else None
    expires = hold.expires_ms
    return {
        "id": hold.rid, "user": hold.user, "uid": hold.uid, "host": hold.host,
        "pid": hold.pid, "type": hold.kind, "start_ms": hold.start_ms,
        "duration_s": _age_s(now_ms, hold.start_ms),
        "heartbeat_ms": beat,
        "heartbeat_age_s": _age_s(now_ms, beat) if beat is not None else None,
        "expires_ms": expires,
        "expires_in_s": _age_s(expires, now_ms) if expires is not None else None,
        "note": hold.note, "waiting": hold.waiting,
        "idle_since_ms": idle, "idle_s": _age_s(now_ms, idle) if idle is not None else None,
        "name": hold.name,  # a detached job's (type job), else ""
    }


# ---------------------------------------------------------------- summary (seeds/003)
def render_summary(view: PoolView) -> str:
    """The capacity lines: available, reserved, unreserved (and errors, when any)."""
    counts = summary_counts(view)
    lines = [f"Available GPUs: {counts['available']} out of {counts['total']}",
             f"In use with reservations: {_gpus(counts['reserved'])}",
             f"Unreserved usage: {_gpus(counts['unreserved'])}"]
    if counts["error"]:
        lines.append(f"In error: {_gpus(counts['error'])}")
    return "\n".join(lines)


def _gpus(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"
