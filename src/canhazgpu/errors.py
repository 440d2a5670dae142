"""The one error hierarchy of the core. The CLI maps each to a message and an exit code."""

from __future__ import annotations

import sys
from contextlib import contextmanager

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


class CanHazGpuError(Exception):
    """Base of every expected failure; str(error) is the one-line message for the user."""

    exit_code = 1


class InvalidRequest(CanHazGpuError):
    """A bad value from the user (count, ids, duration, URL, config): exit 2, nothing changed."""

    exit_code = 2


class NotEnoughGpus(CanHazGpuError):
    """Fewer allocatable GPUs than requested."""

    def __init__(self, requested: int, available: int, unreserved: int) -> None:
        self.requested = requested
        self.available = available
        self.unreserved = unreserved
        text = f"Not enough GPUs available. Requested: {requested}, Available: {available}"
        if unreserved:
            noun = "GPU" if unreserved == 1 else "GPUs"
            text += (
                f" ({unreserved} {noun} in use without reservation"
                " - run 'canhazgpu status' for details)"
            )
        super().__init__(text)


class GpusUnavailable(CanHazGpuError):
    """Specific GPUs asked for by id are held or in unreserved use."""


class NotHeld(CanHazGpuError):
    """Releasing a GPU that nobody holds: nothing changed, but not a usage error."""


class NotOwner(CanHazGpuError):
    """Releasing a reservation that belongs to someone else."""


class PoolNotInitialized(CanHazGpuError):
    """No pool yet: 'canhazgpu admin --gpus N' creates it."""


class PoolBusy(CanHazGpuError):
    """Resizing a pool that has live reservations, without --force."""


class BackendUnavailable(CanHazGpuError):
    """Redis cannot be reached or refuses us."""


class LimitReached(CanHazGpuError):
    """A per-user limit set by the admin (connections, waiters, GPUs, duration)."""


class FileUnreadable(CanHazGpuError):
    """A file we must read (a config file, the daemon's URL file) cannot be read, or the
    daemon's own file holds what it never writes: an operational failure (exit 1), fixed
    on that file, not by giving another value."""


class CorruptState(CanHazGpuError):
    """A key in Redis holds something we cannot read; the message names the key."""


class ProviderUnavailable(CanHazGpuError):
    """The GPU provider cannot be read (no NVIDIA driver, amd-smi failing, none found, a
    fake GPU file that cannot be read or parsed); names the fix."""


class NeedsEventLoop(BaseException):
    """Code driven without an event loop (the CLI's fast path, cli/runner.py) reached what
    needs one: raised before anything was changed or printed, so the CLI runs the command
    again in a loop. A BaseException: no handler of expected errors takes it."""


def without_loop() -> bool:
    """Whether this code runs without an event loop (driven by hand: cli/runner.py)."""
    asyncio = sys.modules.get("asyncio")
    return asyncio is None or asyncio._get_running_loop() is None


class WaitTimedOut(CanHazGpuError):
    """Gave up waiting (--timeout / --wait D); the place in the queue was given back.
    (Here, not in waitqueue.py: so it keeps its class through the daemon.)"""


class LostPlace(CanHazGpuError):
    """The queue entry vanished (Redis lost its data, or the entry expired)."""


class Interrupted(CanHazGpuError):
    """Ctrl+C or SIGTERM while waiting; the place in the queue was given back."""

    def __init__(self, signum: int) -> None:
        super().__init__("stopped waiting; left the queue")
        self.exit_code = 128 + signum


# ---------------------------------------------------------------------- the edge
def expected(exc: BaseException) -> CanHazGpuError | None:
    """The one error a user should read for `exc`, or None when it is a bug (or a
    cancellation) that must not be hidden.

    Task groups wrap what their tasks raise in (nested) exception groups; a group whose
    every error is expected stands for its first one. Redis and file errors that escaped
    the store become one-line messages here, so no expected failure shows a traceback.
    """
    if isinstance(exc, CanHazGpuError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        # cancellations beside an error are the error's doing: they do not count
        found = [expected(e) for e in exc.exceptions if isinstance(e, Exception)]
        if found and all(f is not None for f in found):
            return found[0]
        return None
    rexc = sys.modules.get("redis.exceptions")  # the store maps most; this catches the rest
    if rexc is None:  # redis-py not imported (the daemon's API): none of its errors
        pass
    elif isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError)):
        return BackendUnavailable(f"lost the connection to Redis ({exc})")
    elif isinstance(exc, rexc.RedisError):
        return BackendUnavailable(f"Redis refused a command ({exc})")
    if isinstance(exc, OSError) and exc.filename is not None:
        return CanHazGpuError(f"cannot use {exc.filename}: {exc.strerror or exc}")
    return None


@contextmanager
def boundary():
    """Raise the one expected error that a block's (possibly grouped) failure stands for;
    anything else passes through unchanged. Used at each edge: the CLI, the daemon, and
    the queue's grant (whose caller wants a plain error)."""
    try:
        yield
    except BaseException as exc:
        err = expected(exc)
        if err is None or err is exc:
            raise
        raise err from None
