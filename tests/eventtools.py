"""Helpers for the daemon, event and follow tests: an in-process daemon, an event recorder,
and line reading from child processes, each with a deadline (never a fixed sleep)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from canhazgpu.daemon import Daemon
from canhazgpu.events import Event, EventHub


async def first(receive, predicate, timeout: float):
    """The first item from receive(timeout) that satisfies predicate, within timeout."""
    with anyio.fail_after(timeout):
        while True:
            item = await receive(timeout)
            if predicate(item):
                return item


@asynccontextmanager
async def running_daemon(config, **settings):
    """A daemon as a task of this test (settings override the config, e.g. scan_interval)."""
    daemon = Daemon(replace(config, **{"scan_interval": "0.1s", **settings}))
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(daemon.run)
            yield daemon
            tg.cancel_scope.cancel()
    finally:
        await daemon.core.aclose()


class Recorder:
    """Every event of the host, from the moment it is entered (`buffer` of them may wait
    to be read: beyond, the hub drops them and says Resync)."""

    def __init__(self, store, buffer: int = 1000) -> None:
        self.hub = EventHub(store)
        self.buffer = buffer
        self.seen: list[Event] = []

    @asynccontextmanager
    async def running(self):
        async with self.hub.running(), self.hub.listen(self.buffer) as stream:
            self.stream = stream
            yield self

    async def next(self, timeout: float = 5.0) -> Event:
        with anyio.fail_after(timeout):
            while True:
                item = await self.stream.receive()
                if isinstance(item, Event):
                    self.seen.append(item)
                    return item

    async def expect(self, *types: str, timeout: float = 5.0) -> list[Event]:
        """The next events are exactly these types, in this order."""
        got = [await self.next(timeout) for _ in types]
        assert [e.type for e in got] == list(types), [e.data for e in got]
        return got

    async def until(self, predicate, timeout: float = 5.0) -> Event:
        """Skip events until one satisfies predicate."""
        return await first(self.next, predicate, timeout)


class Lines:
    """Lines from a child's pipe, each awaited with a deadline."""

    def __init__(self, stream) -> None:
        self.stream = BufferedByteReceiveStream(stream)

    async def next(self, timeout: float = 10.0) -> str:
        with anyio.fail_after(timeout):
            return (await self.stream.receive_until(b"\n", 1 << 20)).decode()

    async def until(self, predicate, timeout: float = 10.0) -> str:
        return await first(self.next, predicate, timeout)


async def sleeper():
    """A live process we own, to stand in for a `run` supervisor."""
    return await anyio.open_process(["sleep", "60"])


async def rest(stream) -> str:
    """Everything a child writes until it closes the stream."""
    chunks = []
    with anyio.fail_after(10):
        try:
            while True:
                chunks.append(await stream.receive())
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass
    return b"".join(chunks).decode()


async def stop(proc, signum=None) -> int:
    """Signal a child (SIGTERM by default) and wait for its exit code, with a deadline."""
    import signal
    if proc.returncode is None:
        proc.send_signal(signum or signal.SIGTERM)
    with anyio.fail_after(15):
        return await proc.wait()


async def reap(*procs) -> None:
    """Kill whatever is still running (a failed test), then release the pipes."""
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.aclose()
