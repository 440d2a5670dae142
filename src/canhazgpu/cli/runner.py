"""The CLI's event loop: plain asyncio, started lean (anyio works inside it as usual).

Costs of every command that the everyday ones do not need (docs/benchmarks.md):
- help, completion and a command answered by one request to the daemon await nothing of
  an event loop: they run without one, asyncio not imported.
- `anyio.run` imports anyio's asyncio backend, and with it anyio's sockets, TLS streams and
  `ssl`; `asyncio.run` does not, and anyio's functions load the backend when first called.
- asyncio imports `ssl` (~8 ms) for TLS alone. It is imported here with `ssl` hidden, and
  the first real `import ssl` of the process (redis-py, anyio's sockets, the web page...)
  hands the module to asyncio, so TLS works for whoever asks for it.
"""

from __future__ import annotations

import sys
from importlib import reload

from ..errors import NeedsEventLoop

# asyncio's modules that import ssl when they are imported, and look it up when they run.
SSL_USERS = ("asyncio.base_events", "asyncio.selector_events", "asyncio.sslproto")


def run(func, *args, loop: bool = True):
    """func(*args) in a new asyncio event loop: its result.

    With loop=False, first without one: for what awaits nothing of an event loop (help,
    completion, one request to the daemon over a blocking socket), such a coroutine runs
    to its end at its first step. Code that needs a loop raises NeedsEventLoop before it
    changes or prints anything, and func(*args) runs again in a loop."""
    if not loop:
        try:
            return _without_loop(func(*args))
        except NeedsEventLoop:
            pass
    import_asyncio()
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


def import_asyncio() -> None:
    """Import asyncio without ssl, unless either is imported already."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # `import ssl` raises ImportError: asyncio does without
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]
    sys.meta_path.insert(0, _SslFinder())


class _SslFinder:
    """Finds nothing but `ssl`, once: the real module, which asyncio is then given."""

    def find_spec(self, name, path=None, target=None):
        if name != "ssl":
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec
        spec = find_spec("ssl")
        if spec is not None and spec.loader is not None:
            spec.loader = _GivingToAsyncio(spec.loader)
        return spec


class _GivingToAsyncio:
    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        for name in SSL_USERS:
            if name in sys.modules:
                sys.modules[name].ssl = module
        if "asyncio.sslproto" in sys.modules:  # it defines names from ssl when imported
            reload(sys.modules["asyncio.sslproto"])
