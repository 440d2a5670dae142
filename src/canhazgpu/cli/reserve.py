"""`canhazgpu reserve`: manual reservations (`canhazgpu release`: release.py)."""

from __future__ import annotations

import asyncclick as click

from ..errors import InvalidRequest
from . import output
from .jobs import acquire, parse_wait, wait_option
from .main import cli
from .options import build_request, duration, gpu_selection


@cli.command(epilog="""\b
Examples:
  canhazgpu reserve                          # 1 GPU for 30m
  canhazgpu reserve --gpus 2 --duration 4h   # or: canhazgpu reserve -g 2 -d 4h
  canhazgpu reserve --gpu-ids 1,3 --note "debugging"
  export CUDA_VISIBLE_DEVICES=$(canhazgpu reserve --short)
  canhazgpu reserve --gpus 2 --wait 15m      # queue up to 15m if GPUs are short
  canhazgpu reserve --gpu-ids 2 --force      # GPU 2 runs your own unreserved job: claim it
""")
@gpu_selection
@click.option("--duration", "-d", "duration_text", metavar="D",
              help="How long: 30s, 30m, 2h, 1h30m, 1d (default 30m).")
@click.option("--short", "-s", is_flag=True, help="Print only the GPU ids, comma-separated.")
@click.option("--json", "-j", "as_json", is_flag=True, help="Print the reservation as JSON.")
@click.option("--force", is_flag=True,
              help="Also take GPUs in unreserved use by your own processes (never anyone "
                   "else's).")
@wait_option
@click.pass_obj
async def reserve(state, count, gpu_ids, note, duration_text, short, as_json, force, wait_text,
                  nonblock, quiet):
    """Reserve GPUs for interactive work until released or expired."""
    seconds = duration(duration_text, "duration", state.config.default_duration)
    wait_s = parse_wait(wait_text, nonblock)
    if force and wait_s is not None:
        raise InvalidRequest("--force claims GPUs now: use it without --wait")
    req = await build_request(state, count, gpu_ids, "manual", seconds, note, claim_own=force)
    res = await acquire(state, req, state.caller(), wait_s, quiet)
    if as_json:
        output.emit_json({"id": res.rid, "gpus": list(res.gpus), "user": res.user,
                          "type": res.kind, "duration_s": seconds})
    elif short:
        output.emit(res.env_value())
    else:
        from ..timefmt import hms
        output.emit(f"Reserved {len(res.gpus)} GPU(s): {res.env_value()} for {hms(seconds)}")
        output.emit(f"export CUDA_VISIBLE_DEVICES={res.env_value()}")
