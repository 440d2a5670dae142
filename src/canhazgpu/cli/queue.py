"""`canhazgpu queue`: who waits for GPUs, in order (docs/queue.md)."""

from __future__ import annotations

import asyncclick as click

from . import output
from .hosts import all_hosts_option, queue_of_hosts, spanned
from .main import cli


@cli.command(epilog="""\b
Examples:
  canhazgpu queue
  canhazgpu queue --json | jq length
  canhazgpu queue --all-hosts
""")
@click.option("--json", "as_json", is_flag=True, help="Print the queue as JSON.")
@all_hosts_option("The queue")
@click.pass_obj
async def queue(state, as_json, all_hosts):
    """Show who is waiting for GPUs, in order."""
    span = spanned(state, all_hosts)
    if span is not None:
        return await queue_of_hosts(state, span, as_json)
    from ..render import queue_json, render_queue
    rows = queue_json(*await state.core.queue())
    if as_json:
        output.emit_json(rows)
        return
    width = output.width()
    output.emit(render_queue(rows, width))
