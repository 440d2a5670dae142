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
    from ..render import queue_json, render_queue
    rows = queue_json(*await state.core.queue())
    if as_json:
        output.emit_json(rows)
        return
    width = shutil.get_terminal_size().columns if output.is_tty() else None
    output.emit(render_queue(rows, width))
