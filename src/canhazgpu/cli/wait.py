"""`canhazgpu wait`: queue for GPUs, first come, first served."""

from __future__ import annotations

import asyncclick as click

from . import output
from .jobs import acquire, supervise
from .main import cli
from .options import COMMAND_LINE, build_request, command_line, duration, gpu_selection


@cli.command(context_settings=COMMAND_LINE, epilog="""\b
Examples:
  canhazgpu wait --gpus 2 -- python train.py      # queue, then run like `run`
  canhazgpu wait -G 3 -t 1h ./eval.sh --timeout 5  # the second --timeout is eval.sh's
  export CUDA_VISIBLE_DEVICES=$(canhazgpu wait --gpus 1 --duration 2h --short)
Our options go before the command: from its first word on, everything is the command's.
Exit code: the command's own; 1 when --timeout runs out; 2 for requests that can never be met.
""")
@gpu_selection
@click.option("--timeout", "-t", "timeout_text", metavar="D", help="Give up after waiting D.")
@click.option("--duration", "-d", "duration_text", metavar="D",
              help="Without a command: how long the granted reservation lasts (default 30m).")
@click.option("--short", "-s", is_flag=True,
              help="Without a command: print only the granted ids.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@command_line
@click.pass_obj
async def wait(state, count, gpu_ids, note, timeout_text, duration_text, short, quiet, command):
    """Queue for GPUs (first come, first served), then run a command or reserve them."""
    timeout_s = duration(timeout_text, "timeout", "1s") if timeout_text is not None else None
    kind = "run" if command else "manual"
    seconds = duration(duration_text, "duration", state.config.default_duration)
    req = await build_request(state, count, gpu_ids, kind, seconds, note)
    caller = state.caller()
    res = await acquire(state, req, caller, timeout_s or float("inf"), quiet)
    if command:
        return await supervise(state, res, caller, list(command), None, queued=True)
    output.emit(res.env_value() if short else
                f"Reserved {len(res.gpus)} GPU(s): {res.env_value()}")

