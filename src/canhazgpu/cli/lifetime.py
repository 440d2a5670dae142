"""How long-running commands end: SIGINT (Ctrl+C) and SIGTERM are normal, clean exits."""

from __future__ import annotations

import os
import signal
import sys

import anyio



async def until_signalled(func, *args) -> None:
    """Run func(*args) until it returns or SIGINT/SIGTERM arrives (a normal, clean exit)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(_cancel_on_signal, tg.cancel_scope)
        await func(*args)
        tg.cancel_scope.cancel()


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


class ReaderGone(Exception):
    """Whoever read our output went away (`| head`): stop quietly."""


def write_line(text: str) -> None:
    """One line on stdout, flushed now (a follower's reader wants each change as it comes)."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise ReaderGone() from None
