"""`canhazgpu queue`: who waits for GPUs, in order (docs/queue.md)."""

from __future__ import annotations

import shutil

import asyncclick as click

from . import output
from .main import cli


@cli.command(epilog="""\b
Examples:
  canhazgpu queue
  canhazgpu queue --json | jq length
""")
@click.option("--json", "as_json", is_flag=True, help="Print the queue as JSON.")
@click.pass_obj
async def queue(state, as_json):
    """Show who is waiting for GPUs, in order."""
    from ..render import render_queue
    view_state = await state.core.store.read_state()
    now = view_state["now_ms"]
    holds = view_state["holds"]
    rows = []
    for wid in view_state["queue"]:
        w = view_state["waiters"].get(wid)
        if not w or int(w.get("deadline_ms", 0)) < now:
            continue
        granted = sorted(i for i, h in holds.items() if h.get("rid") == wid)
        requested = w["ids"] if w.get("mode") == "ids" else int(w["count"])
        rows.append({"position": len(rows) + 1, "id": wid, "user": w["user"],
                     "requested": requested, "granted": granted,
                     "waiting_s": round((now - int(w["enqueued_ms"])) / 1000, 1),
                     "type": w.get("kind", ""), "note": w.get("note", "")})
    if as_json:
        output.emit_json(rows)
        return
    width = shutil.get_terminal_size().columns if output.is_tty() else None
    output.emit(render_queue(rows, width))
