"""The CLI's side of the local API: a RemoteCore with the methods of Core that the
commands call, each one request to the daemon (docs/api.md), the short ones over
connections it keeps for the next (Kept). Imports no Redis module:
a command through the daemon starts without paying for redis-py.

The caller a command passes is not sent: the daemon takes who we are from the kernel.
"""

from __future__ import annotations

import signal
import socket
import time
from contextlib import contextmanager, suppress
from types import SimpleNamespace

import anyio

from ..errors import BackendUnavailable, NeedsEventLoop, boundary, without_loop
from . import protocol
from .doors import Door
from .ops import OPS

MAX_REPLY = 64 * 1024 * 1024  # a status of many GPUs with their processes is one line
MAX_HELLO = 64 * 1024
HELLO_TIMEOUT_S = 2.0  # a daemon that does not answer by then is not used


def answering(config) -> str | None:
    """The API socket of a daemon that serves the host and the Redis of our settings."""
    return find_daemon(config)[0]


def find_daemon(config, any_host: bool = False) -> tuple[str | None, str | None]:
    """(the socket of a daemon that serves our settings, None), else (None, why the
    daemons that answered do not: another host, or another Redis than the one our
    settings name explicitly). An explicit setting always wins over a daemon that answers.
    any_host: for the views across hosts, a daemon of any host on our Redis will do."""
    why = None
    for path in config.api_paths():
        hello = _hello(path)
        if hello is None:
            continue
        why = _mismatch(config, path, hello, any_host)
        if why is None:
            return str(path), None
    return None, why


def _mismatch(config, path, hello: dict, any_host: bool = False) -> str | None:
    host = str(hello.get("host", ""))
    if host != config.host_name and not any_host:
        return (f"the daemon at {path} serves host {host[:80]!r}, not "
                f"{config.host_name!r} ({config.origin('host')})")
    if "redis_url" in config.origins:
        from ..urls import store_identity
        mine, theirs = store_identity(config.redis_url), str(hello.get("redis", "?"))
        if mine != theirs:
            return (f"the daemon at {path} serves Redis {theirs[:120]}, not {mine} "
                    f"({config.origin('redis_url')})")
    return None


def _hello(path) -> dict | None:
    """The daemon's handshake at `path` (which host and Redis it serves), or None."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(HELLO_TIMEOUT_S)
    try:
        sock.connect(str(path))
        sock.sendall(protocol.dump({"op": "hello"}))
        data = b""
        while not data.endswith(b"\n") and len(data) < MAX_HELLO:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        doc = protocol.load(data)
        return doc["ok"] if isinstance(doc.get("ok"), dict) else None
    except (OSError, protocol.ProtocolError, ValueError):
        return None
    finally:
        sock.close()


class RemoteCore(Door):
    """The operation table (ops.py), answered by the daemon for the caller the kernel
    names: its methods are bound from the table (doors.Door)."""

    def __init__(self, config, path: str, kind: str = "core", kept: Kept | None = None) -> None:
        self.config = config
        self.path = path
        self.kind = kind
        self.kept = Kept() if kept is None else kept

    async def aclose(self) -> None:
        self.kept.close()

    @property
    def store(self) -> RemoteCore:
        """The reads of the store that the event commands make (events_since, ping)."""
        return RemoteCore(self.config, self.path, "store", self.kept)

    @property
    def hosts(self) -> RemoteCore:
        """The views across the hosts of the daemon's Redis, and retiring a host: what
        direct mode reads, other users' command lines cut (model.seen_by)."""
        return RemoteCore(self.config, self.path, "hosts", self.kept)

    async def ping(self) -> None:
        await self.call("hello")

    async def _call(self, op, bound: dict):
        result = await self.call(op.name, op.pack(bound))
        return result if op.decode is None else op.decode(result)

    # ------------------------------------------------------------------ the wire
    async def call(self, op: str, args: dict | None = None, on_line=None,
                   interruptible: bool = False):
        """One request; stream lines go to on_line(doc); returns the `ok` value or raises
        the error the daemon sent. Without an event loop (the CLI's fast path), over a
        blocking socket; a wait needs the loop (Ctrl+C, signals). On the loop, a short
        request goes over a connection this client keeps for the next one."""
        settings = {"memory_threshold": self.config.memory_threshold,
                    "strategy": self.config.strategy}
        if without_loop():
            if interruptible:
                raise NeedsEventLoop
            return _result(self._call_blocking(_request(op, args, settings), on_line))
        entry = OPS.get(op)
        if entry is not None and not entry.lasting(args or {}):
            return _result(await self._call_kept(_request(op, args, settings, True), on_line))
        reader, writer = await self._connect()
        request = _request(op, args, settings)
        try:
            if not interruptible:
                return _result(await self._exchange(reader, writer, request, on_line))
            with boundary():  # the one error, not the task group's
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_interrupt_on_signal)
                    last = await self._exchange(reader, writer, request, on_line)
                    tg.cancel_scope.cancel()
            return _result(last)
        finally:
            writer.transport.abort()  # nothing left to send: no goodbye to wait for

    async def _connect(self):
        import asyncio  # asyncio's own unix connection: anyio's sockets would import ssl
        try:
            return await asyncio.open_unix_connection(self.path, limit=MAX_REPLY)
        except OSError as err:
            raise BackendUnavailable(self._unreachable(err)) from None

    async def _call_kept(self, request: bytes, on_line) -> dict:
        """The last reply line to a short request sent over one of this client's kept
        connections (a new one when none is idle): kept again when the daemon says it
        keeps it too."""
        pair = self.kept.take() or await self._connect()
        last = None
        try:
            last = await self._exchange(*pair, request, on_line)
            return last
        finally:
            if last is not None and last.get("keep") is True:
                self.kept.put(pair)
            else:
                _abort(pair)

    def _call_blocking(self, request: bytes, on_line) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(self.path)
            except OSError as err:
                raise BackendUnavailable(self._unreachable(err)) from None
            with self._lost():
                sock.sendall(request)
                lines = sock.makefile("rb")
                while True:
                    last = self._last(lines.readline(MAX_REPLY + 1), on_line)
                    if last is not None:
                        return last

    async def _exchange(self, reader, writer, request: bytes, on_line) -> dict:
        with self._lost():
            writer.write(request)
            await writer.drain()
            while True:
                last = self._last(await reader.readline(), on_line)
                if last is not None:
                    return last

    @contextmanager
    def _lost(self):
        try:
            yield
        except (ValueError, OSError) as err:  # ValueError: a line over MAX_REPLY
            raise BackendUnavailable(
                f"lost the connection to the canhazgpu daemon at {self.path} "
                f"({err or type(err).__name__}): is 'canhazgpu serve' running?") from None

    @staticmethod
    def _last(line: bytes, on_line) -> dict | None:
        """The last line's document (`ok` or `error`); None after giving a stream line
        to on_line."""
        if not line.endswith(b"\n"):
            raise ConnectionResetError("the daemon closed the connection" if len(line) <= MAX_REPLY
                                       else "a reply line over the limit")
        doc = protocol.load(line)
        if "ok" in doc or "error" in doc:
            return doc
        if on_line is not None:
            on_line(doc)
        return None

    def _unreachable(self, err: OSError) -> str:
        return (f"cannot reach the canhazgpu daemon at {self.path} ({err.strerror or err}): "
                "start it with 'canhazgpu serve', or set client = direct to use Redis")

    # ------------------------------------------------------------------ a wait
    async def acquire(self, req, caller=None, wait_s: float | None = None, *, progress=None,
                      warn=lambda text: None, signals: bool = True, resume: str | None = None,
                      on_queued=None, name: str = ""):
        """Allocate now, or queue (wait_s) for as long as this connection is open. A
        queued request whose daemon goes away reconnects and follows its place again,
        for as long as the place lasts without it (queue_lease). signals=False: SIGINT and
        SIGTERM are left alone (a caller outside the main thread: the Python API).
        Detached jobs (issue 19): `resume` follows the queue entry of that id (NotHeld
        when it is gone); on_queued(wid) is told each time the request is in the queue;
        `name` is the job's, shown in status."""
        if wait_s is not None and without_loop():
            raise NeedsEventLoop  # a place in the queue: Ctrl+C, signals, reconnects
        wid = resume

        def on_line(doc: dict) -> None:
            nonlocal wid
            if "queued" in doc:
                wid = str(doc["queued"]["wid"])
            elif "enqueued" in doc and on_queued is not None:
                on_queued(wid)
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
                    "progress": progress is not None, **({"name": name} if name else {})},
                    on_line,
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


def _result(last: dict):
    """The `ok` value of a last reply line, or the error it carries, raised."""
    if "error" in last:
        protocol.raise_error(last["error"])
    return last["ok"]


def _request(op: str, args: dict | None, settings: dict, keep: bool = False) -> bytes:
    return protocol.dump({"op": op, "args": {**(args or {}), "settings": settings},
                          **({"keep": True} if keep else {})})


class Kept:
    """A client's idle connections to the daemon, for its next short requests: reused
    within half the daemon's KEEP_IDLE_S (so never one it is closing), on the event loop
    that opened them."""

    REUSE_S = protocol.KEEP_IDLE_S / 2
    MOST = 16  # idle ones kept at once; more concurrent calls close theirs after

    def __init__(self) -> None:
        self.idle: list = []  # (since, loop, (reader, writer))

    def take(self):
        import asyncio
        loop, now = asyncio.get_running_loop(), time.monotonic()
        while self.idle:
            since, owner, pair = self.idle.pop()
            if owner is loop and now - since < self.REUSE_S and not pair[0].at_eof() \
                    and not pair[1].is_closing():  # (closed by a daemon that went away)
                return pair
            _abort(pair)
        return None

    def put(self, pair) -> None:
        import asyncio
        if len(self.idle) >= self.MOST:
            _abort(pair)
            return
        self.idle.append((time.monotonic(), asyncio.get_running_loop(), pair))

    def close(self) -> None:
        while self.idle:
            _abort(self.idle.pop()[2])


def _abort(pair) -> None:
    """Drop a connection (no goodbye to wait for). On a loop closed since, its transport
    can no longer be told: the socket is shut down (the daemon sees the end at once) and
    closed by the garbage collector."""
    transport = pair[1].transport
    try:
        transport.abort()
    except RuntimeError:
        sock = transport.get_extra_info("socket")
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


async def _interrupt_on_signal() -> None:
    """Ctrl+C or SIGTERM while queued: the same error as direct mode's waiter (closing
    the connection gives the place back)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            raise protocol.RemoteError("stopped waiting; left the queue", 128 + signum)
