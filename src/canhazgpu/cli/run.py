"""`canhazgpu run`: reserve, run a command with CUDA_VISIBLE_DEVICES, release at the end."""

from __future__ import annotations

import asyncclick as click

from ..errors import InvalidRequest
from .jobs import acquire, parse_wait, supervise, wait_option
from .main import cli
from .options import COMMAND_LINE, build_request, command_line, duration, gpu_selection


@cli.command(context_settings=COMMAND_LINE, epilog="""\b
Examples:
  canhazgpu run --gpus 2 -- python train.py --epochs 10
  canhazgpu run -g 2 python train.py --gpus 2    # the second --gpus is train.py's
  canhazgpu run --gpu-ids 1,3 -- ./serve.sh
  canhazgpu run --gpus 1 --timeout 2h -- python sweep.py
  canhazgpu run --gpus 4 --wait 30m -- python big.py   # queue up to 30m if GPUs are short
Our options go before the command: from its first word on, everything is the command's.
Exit code: the command's own (128+N if killed by signal N); 127 when it cannot start.
""")
@gpu_selection
@click.option("--timeout", "-t", "timeout_text", metavar="D",
              help="Stop the command after D (SIGTERM, then SIGKILL after a grace period).")
@wait_option
@command_line
@click.pass_obj
async def run(state, count, gpu_ids, note, timeout_text, wait_text, nonblock, quiet, command):
    """Run a command on GPUs nobody else will get, and release them when it ends."""
    if not command:
        raise InvalidRequest("run needs a command, e.g. canhazgpu run --gpus 1 -- "
                             "python train.py")
    timeout_s = duration(timeout_text, "timeout", "1s") if timeout_text is not None else None
    wait_s = parse_wait(wait_text, nonblock)
    req = await build_request(state, count, gpu_ids, "run", 0, note)
    caller = state.caller()
    res = await acquire(state, req, caller, wait_s, quiet)
    return await supervise(state, res, caller, list(command), timeout_s,
                           queued=wait_s is not None)
