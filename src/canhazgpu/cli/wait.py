"""`canhazgpu wait`: queue for GPUs, first come, first served."""

from __future__ import annotations

import sys

import asyncclick as click

from . import output
from .main import cli
from .options import build_request, duration, gpu_selection


class ProgressLine:
    """Queue progress on stderr: redrawn in place on a terminal, a line per change otherwise."""

    def __init__(self) -> None:
        self.tty = output.is_tty(sys.stderr)
        self.last = None

    def __call__(self, progress) -> None:
        from ..timefmt import short
        st = progress.status
        text = (f"waiting for {progress.want} GPU(s): position {st.position} of {st.queued} "
                f"in the queue, {len(st.gpus)}/{progress.want} granted")
        if progress.eta_s is not None:
            text += ", expected now" if progress.eta_s == 0 else \
                f", expected in ~{short(progress.eta_s)}"
        if text == self.last:
            return
        self.last = text
        try:
            if self.tty:
                sys.stderr.write(f"\r\033[K{text}")
                sys.stderr.flush()
            else:
                output.warn(text)
        except (OSError, ValueError):
            pass

    def done(self) -> None:
        if self.tty and self.last is not None:
            try:
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass


async def acquire(state, req, caller, wait_s: float | None, quiet: bool = False):
    """Allocate now, or queue for at most wait_s (None: fail at once when short)."""
    line = None if quiet or wait_s is None else ProgressLine()
    try:
        return await state.core.acquire(req, caller, wait_s, progress=line, warn=output.warn)
    finally:
        if line is not None:
            line.done()


def wait_option(func):
    """--wait D and --quiet, for run and reserve."""
    func = click.option("--quiet", "-q", is_flag=True,
                        help="With --wait: no queue progress on stderr.")(func)
    return click.option("--wait", "wait_text", metavar="D",
                        help="If GPUs are short, queue for at most D (e.g. 10m) instead of "
                             "failing at once.")(func)


def parse_wait(text):
    return None if text is None else duration(text, "wait", "1s")


@cli.command(context_settings={"ignore_unknown_options": True}, epilog="""\b
Examples:
  canhazgpu wait --gpus 2 -- python train.py      # queue, then run like `run`
  canhazgpu wait --gpu-ids 3 --timeout 1h -- ./eval.sh
  export CUDA_VISIBLE_DEVICES=$(canhazgpu wait --gpus 1 --duration 2h --short)
Exit code: the command's own; 1 when --timeout runs out; 2 for requests that can never be met.
""")
@gpu_selection
@click.option("--timeout", "timeout_text", metavar="D", help="Give up after waiting D.")
@click.option("--duration", "-d", "duration_text", metavar="D",
              help="Without a command: how long the granted reservation lasts (default 30m).")
@click.option("--short", is_flag=True, help="Without a command: print only the granted ids.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
async def wait(state, count, gpu_ids, note, timeout_text, duration_text, short, quiet, command):
    """Queue for GPUs (first come, first served), then run a command or reserve them."""
    from .run import supervise
    timeout_s = duration(timeout_text, "timeout", "1s") if timeout_text is not None else None
    kind = "run" if command else "manual"
    seconds = duration(duration_text, "duration", state.config.default_duration)
    req, _ = await build_request(state, count, gpu_ids, kind, seconds, note)
    caller = state.caller()
    res = await acquire(state, req, caller, timeout_s or float("inf"), quiet)
    if command:
        return await supervise(state, res, caller, list(command), None, queued=True)
    output.emit(res.env_value() if short else
                f"Reserved {len(res.gpus)} GPU(s): {res.env_value()}")

