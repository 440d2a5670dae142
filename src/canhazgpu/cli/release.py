"""`canhazgpu release`: give reservations back. Apart from reserve.py: a release through the
daemon loads neither the queueing nor the request options (start-up time)."""

from __future__ import annotations

import asyncclick as click

from . import output
from .main import cli


@cli.command(epilog="""\b
Examples:
  canhazgpu release                     # all your manual reservations
  canhazgpu release --gpu-ids 1,3       # these GPUs (yours, run-type too)
  sudo canhazgpu release --user bob --force
""")
@click.option("--gpu-ids", "-G", metavar="IDS", help="Only these GPUs, comma-separated.")
@click.option("--user", metavar="NAME", help="Someone else's reservations (admin, with --force).")
@click.option("--force", is_flag=True, help="Release reservations you do not own (admin only).")
@click.option("--json", "-j", "as_json", is_flag=True, help="Print the released ids as JSON.")
@click.pass_obj
async def release(state, gpu_ids, user, force, as_json):
    """Release your reservations."""
    from ..request import parse_ids
    if force and user is None and gpu_ids is None:
        raise click.UsageError("--force releases someone else's reservations: say whose "
                               "with --user NAME, or which with --gpu-ids IDS", None)
    ids = parse_ids(gpu_ids) if gpu_ids is not None else None
    released = await state.core.release(state.caller(), ids=ids, user=user, force=force)
    if as_json:
        output.emit_json({"released": released})
    elif released:
        output.emit(f"Released {len(released)} GPU(s): {','.join(map(str, released))}")
    else:
        output.emit("No manual reservations to release")
