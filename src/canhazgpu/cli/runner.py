"""The CLI's event loop: plain asyncio, started lean (anyio works inside it as usual).

Costs of every command that the everyday ones do not need (docs/benchmarks.md):
- help, completion and a command answered by one request to the daemon await nothing of
  an event loop: they run without one, asyncio not imported.
- `anyio.run` imports anyio's asyncio backend, and with it anyio's sockets, TLS streams and
  `ssl`; `asyncio.run` does not, and anyio's functions load the backend when first called.
"""

from __future__ import annotations

from ..errors import NeedsEventLoop


def run(func, *args, loop: bool = True, server: bool = False):
    """func(*args) in a new asyncio event loop: its result.

    server=True (the daemon): on uvloop's event loop where it is installed, which costs
    the daemon's API about a tenth less CPU per request (docs/benchmarks.md); a command
    stays on plain asyncio, which starts faster.

    With loop=False, first without one: for what awaits nothing of an event loop (help,
    completion, one request to the daemon over a blocking socket), such a coroutine runs
    to its end at its first step. Code that needs a loop raises NeedsEventLoop before it
    changes or prints anything, and func(*args) runs again in a loop."""
    if not loop:
        try:
            return _without_loop(func(*args))
        except NeedsEventLoop:
            pass
    if server:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(func(*args))
    import asyncio
    return asyncio.run(func(*args))


def _without_loop(coro):
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError(f"{coro.__qualname__} awaited an event loop: raise NeedsEventLoop "
                       "before, or run it in a loop")
