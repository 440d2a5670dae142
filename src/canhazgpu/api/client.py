"""The CLI's side of the local API: a RemoteCore with the methods of Core that the
commands call, each one request to the daemon (docs/api.md). Imports no Redis module:
a command through the daemon starts without paying for redis-py.

The caller a command passes is not sent: the daemon takes who we are from the kernel.
"""

from __future__ import annotations

import signal
import socket
from types import SimpleNamespace

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from ..errors import BackendUnavailable, boundary
from . import protocol

MAX_REPLY = 64 * 1024 * 1024  # a status of many GPUs with their processes is one line


def answering(config) -> str | None:
    """The API socket of a daemon that accepts connections, or None."""
    for path in config.api_paths():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return str(path)
        except OSError:
            continue
        finally:
            sock.close()
    return None


class RemoteCore:
    """Core's operations, answered by the daemon for the caller the kernel names."""

    def __init__(self, config, path: str) -> None:
        self.config = config
        self.path = path

    async def aclose(self) -> None:
        pass

    @property
    def store(self) -> RemoteStore:
        return RemoteStore(self)

    # ------------------------------------------------------------------ the wire
    async def call(self, op: str, args: dict | None = None, on_line=None,
                   interruptible: bool = False):
        """One request; stream lines go to on_line(doc); returns the `ok` value or raises
        the error the daemon sent."""
        try:
            stream = await anyio.connect_unix(self.path)
        except OSError as err:
            raise BackendUnavailable(self._unreachable(err)) from None
        settings = {"memory_threshold": self.config.memory_threshold,
                    "strategy": self.config.strategy}
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            request = protocol.dump({"op": op, "args": {**(args or {}), "settings": settings}})
            if not interruptible:
                return await self._exchange(stream, request, reader, on_line)
            with boundary():  # the one error, not the task group's
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_interrupt_on_signal)
                    result = await self._exchange(stream, request, reader, on_line)
                    tg.cancel_scope.cancel()
            return result

    async def _exchange(self, stream, request: bytes, reader, on_line):
        try:
            await stream.send(request)
            return await self._replies(reader, on_line)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError,
                OSError) as err:
            raise BackendUnavailable(
                f"lost the connection to the canhazgpu daemon at {self.path} "
                f"({err or type(err).__name__}): is 'canhazgpu serve' running?") from None

    async def _replies(self, reader, on_line):
        while True:
            doc = protocol.load(await reader.receive_until(b"\n", MAX_REPLY))
            if "ok" in doc:
                return doc["ok"]
            if "error" in doc:
                protocol.raise_error(doc["error"])
            if on_line is not None:
                on_line(doc)

    def _unreachable(self, err: OSError) -> str:
        return (f"cannot reach the canhazgpu daemon at {self.path} ({err.strerror or err}): "
                "start it with 'canhazgpu serve', or set client = direct to use Redis")

    # ------------------------------------------------------------------ operations
    async def hello(self) -> dict:
        return await self.call("hello")

    async def pool_size(self) -> int:
        return int(await self.call("pool_size"))

    async def setup_pool(self, count: int | None, provider: str | None, force: bool,
                         caller=None) -> dict:
        return await self.call("setup_pool", {"count": count, "provider": provider,
                                              "force": force})

    async def view(self):
        return protocol.view(await self.call("view"))

    async def queue(self):
        now_ms, waiters = await self.call("queue")
        return now_ms, tuple(protocol.waiter(w) for w in waiters)

    async def report(self, days: float) -> dict:
        return await self.call("report", {"days": days})

    async def acquire(self, req, caller=None, wait_s: float | None = None, *, progress=None,
                      warn=lambda text: None, signals: bool = True):
        """Allocate now, or queue (wait_s) for as long as this connection is open. A
        queued request whose daemon goes away reconnects and follows its place again,
        for as long as the place lasts without it (queue_lease). signals=False: SIGINT and
        SIGTERM are left alone (a caller outside the main thread: the Python API)."""
        wid = None

        def on_line(doc: dict) -> None:
            nonlocal wid
            if "queued" in doc:
                wid = str(doc["queued"]["wid"])
            elif "warn" in doc:
                warn(str(doc["warn"]))
            elif "progress" in doc and progress is not None:
                p = doc["progress"]
                progress(SimpleNamespace(status=protocol.queue_status(p["status"]),
                                         want=p["want"], eta_s=p["eta_s"]))
        deadline = None if wait_s in (None, float("inf")) else anyio.current_time() + wait_s
        while True:
            left = "inf" if wait_s == float("inf") else wait_s if deadline is None \
                else max(0.001, deadline - anyio.current_time())
            try:
                doc = await self.call("acquire", {
                    "request": protocol.encode(req), "wait_s": left, "resume": wid,
                    "progress": progress is not None}, on_line,
                    interruptible=signals and wait_s is not None)
                return protocol.reservation(doc)
            except BackendUnavailable as err:
                if wid is None:
                    raise
                warn(f"{err}; reconnecting to keep our place in the queue")
                await self._reconnect(self.config.seconds("queue_lease"))

    async def _reconnect(self, within_s: float) -> None:
        """Wait for the daemon's socket to answer again (a restart), at most within_s."""
        delay = 0.05
        with anyio.move_on_after(within_s):
            while True:
                if await anyio.to_thread.run_sync(answering, self.config) == self.path:
                    return
                await anyio.sleep(delay)  # a socket that is not there yet: nothing to wait on
                delay = min(delay * 2, 0.5)
        raise BackendUnavailable(f"the canhazgpu daemon at {self.path} did not come back "
                                 f"within {within_s:g}s: our place in the queue is lost")

    async def release(self, caller=None, ids=None, user: str | None = None,
                      force: bool = False) -> list[int]:
        return await self.call("release", {"ids": None if ids is None else list(ids),
                                           "user": user, "force": force})

    async def heartbeat(self, res, ttl_s: float | None = None) -> list[int]:
        owner = res.record.get("pid")  # another process of ours may own it (a kernel)
        return await self.call("heartbeat", {"rid": res.rid, "gpus": list(res.gpus),
                                             **({"owner_pid": owner} if owner else {})})

    async def end(self, rid: str, caller=None, reason: str = "released") -> list[int]:
        return await self.call("end", {"rid": rid, "reason": reason})


class RemoteStore:
    """The two reads of the store that the event commands make, answered by the daemon."""

    def __init__(self, remote: RemoteCore) -> None:
        self.remote = remote

    async def ping(self) -> None:
        await self.remote.hello()

    async def events_since(self, seq: int) -> list[dict]:
        return await self.remote.call("events_since", {"since": seq})


async def _interrupt_on_signal() -> None:
    """Ctrl+C or SIGTERM while queued: the same error as direct mode's waiter (closing
    the connection gives the place back)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            raise protocol.RemoteError("stopped waiting; left the queue", 128 + signum)
