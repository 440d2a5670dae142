"""Getting GPUs and running a job on them, shared by run, wait and reserve: allocate or
queue (with a progress line), then supervise the command until it ends."""

from __future__ import annotations

import os
import signal
import sys

import asyncclick as click

from ..errors import CanHazGpuError, InvalidRequest
from . import output
from .options import duration


# Ctrl+C or SIGTERM while queued (waitqueue.Interrupted, or the daemon's word for it)
STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM)


class ProgressLine:
    """Queue progress on stderr. On a terminal: one line redrawn in place, cut to the
    terminal's width (a wider line would wrap and leave a stale copy at every redraw).
    Elsewhere (a log file): a line only when the position, the grant or the queue's length
    changes, not every time the estimate ticks."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = output.is_tty(self.stream)
        self.last = None

    def __call__(self, progress) -> None:
        texts = self.texts(progress)
        seen = texts[0] if self.tty else (progress.status.position, progress.status.queued,
                                          len(progress.status.gpus))
        if seen == self.last:
            return
        self.last = seen
        if self.tty:  # the last column left free: writing it would wrap on some terminals
            room = max(1, self.columns() - 1)
            self.draw(next((t for t in texts if len(t) <= room), texts[-1][:room]))
        else:
            output.warn(texts[0], self.stream)

    @staticmethod
    def texts(progress) -> list[str]:
        """The progress, from the whole sentence to the shortest form: a narrow terminal
        gets the longest that fits, so the estimate is never cut in the middle."""
        from ..timefmt import short
        st, want = progress.status, progress.want
        eta = "" if progress.eta_s is None else \
            ("now" if progress.eta_s == 0 else f"in ~{short(progress.eta_s)}")
        granted = f"{len(st.gpus)}/{want} granted"
        return [f"waiting for {want} GPU(s): position {st.position} of {st.queued} in the "
                f"queue, {granted}" + (f", expected {eta}" if eta else ""),
                f"waiting: position {st.position} of {st.queued}, {granted}"
                + (f", expected {eta}" if eta else ""),
                f"queued {st.position}/{st.queued}, {granted}" + (f", {eta}" if eta else "")]

    def columns(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        if not columns:
            import shutil
            columns = shutil.get_terminal_size().columns
        return columns

    def draw(self, text: str) -> None:
        try:
            self.stream.write(f"\r\033[K{text}")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def done(self) -> None:
        if self.tty and self.last is not None:
            self.draw("")


async def acquire(state, req, caller, wait_s: float | None, quiet: bool = False):
    """Allocate now, or queue for at most wait_s (None: fail at once when short)."""
    if not state.remote:  # (a local daemon's host is this machine's by definition)
        from ..hosts import check_here
        await check_here(state.core)  # reservations are made by the host that runs the job
    line = None if quiet or wait_s is None else ProgressLine()
    try:
        return await state.core.acquire(req, caller, wait_s, progress=line, warn=output.warn)
    except CanHazGpuError as err:
        if err.exit_code not in STOPPED:
            raise
        if line is not None:
            line.done()
            line = None
        output.warn(str(err))  # a cancel the user asked for: a note, not an error
        raise SystemExit(err.exit_code) from None
    finally:
        if line is not None:
            line.done()


async def supervise(state, res, caller, command, timeout_s, queued=False) -> int:
    """Run the command on the reservation until it ends; returns its exit code."""
    from ..supervisor import Supervisor
    if output.is_tty(sys.stderr):
        output.warn(f"running on GPU {res.env_value()} (CUDA_VISIBLE_DEVICES={res.env_value()})")
    sup = Supervisor(state.core, res, caller, output.warn,
                     heartbeat_s=state.config.seconds("heartbeat_interval"),
                     timeout_s=timeout_s, kill_grace_s=state.config.seconds("kill_grace"),
                     renew_at_start=queued)
    return await sup.run(command)


def wait_option(func):
    """--wait D, --nonblock and --quiet, for run and reserve."""
    func = click.option("--quiet", "-q", is_flag=True,
                        help="With --wait: no queue progress on stderr.")(func)
    func = click.option("--nonblock", is_flag=True,
                        help="Fail at once when GPUs are short (the default without --wait).")(func)
    return click.option("--wait", "-w", "wait_text", metavar="D",
                        help="If GPUs are short, queue for at most D (e.g. 10m) instead of "
                             "failing at once.")(func)


def parse_wait(text: str | None, nonblock: bool = False) -> float | None:
    """How long to queue (None: not at all, fail at once when GPUs are short)."""
    if text is not None and nonblock:
        raise InvalidRequest(f"use either --wait {text} or --nonblock, not both")
    return None if text is None else duration(text, "wait", "1s")
