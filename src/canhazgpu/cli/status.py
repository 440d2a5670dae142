"""`canhazgpu status`: who holds what, and who uses GPUs without a reservation."""

from __future__ import annotations

import asyncclick as click

from . import output
from .hosts import all_hosts_option, spanned, status_of_hosts
from .main import cli


@cli.command(epilog="""\b
Examples:
  canhazgpu status                      # table on a terminal, GPU lines in a pipe
  canhazgpu status --format lines | grep "WITHOUT RESERVATION"
  canhazgpu status --json | jq '.gpus[] | select(.status == "available") | .id'
  canhazgpu status --summary
  canhazgpu status --follow             # redrawn on every change (JSON Lines in a pipe)
  canhazgpu status --all-hosts          # every registered host, one section each
""")
@click.option("--format", "fmt", type=click.Choice(["table", "lines"]),
              help="Force the table or the one-line-per-GPU format (default: table on a "
                   "terminal, lines otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document (canhazgpu help status).")
@click.option("--summary", is_flag=True, help="Only the capacity lines.")
@click.option("--follow", "-f", is_flag=True,
              help="Keep going: redraw on every change (a terminal), or write one JSON "
                   "document per change (--json, or not a terminal). Ctrl+C stops.")
@all_hosts_option("The GPUs")
@click.pass_obj
async def status(state, fmt, as_json, summary, follow, all_hosts):
    """Show every GPU: available, reserved (by whom, how long) or in use unreserved."""
    from .. import render
    span = spanned(state, all_hosts)
    if span is not None:
        if follow:
            raise click.UsageError("--follow shows one host: leave out --all-hosts "
                                   "(or follow them all with 'canhazgpu events --all-hosts')")
        return await status_of_hosts(state, span, fmt, as_json, summary)
    if follow:
        from .stream import follow_status
        return await follow_status(state, fmt, as_json, summary)
    view = await state.core.view()
    if as_json:
        output.emit_json(render.render_json(view))
    elif summary:
        output.emit(render.render_summary(view))
    elif (fmt or ("table" if output.is_tty() else "lines")) == "table":
        # fitted to a terminal; whole in a pipe or a file
        width = output.width()
        output.emit(render.render_table(view, color=output.use_color(), width=width))
    else:
        output.emit(render.render_lines(view))
