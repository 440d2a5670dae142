"""One API connection on the daemon's side: who is there (SO_PEERCRED, SO_PEERGROUPS), its
request line, its reply lines, its hang-up. A bad client costs a bounded time:
REQUEST_TIMEOUT_S to send its request, MAX_LINE bytes at most, SEND_TIMEOUT_S for each reply
line it does not read.

The raw non-blocking socket is read and written directly, waiting with
wait_readable/wait_writable only when it is not ready: a short request usually costs one
recv and one send, and no extra task."""

from __future__ import annotations

import errno
import socket
import struct
import time
from contextlib import suppress

import anyio

from . import protocol
from .protocol import ProtocolError

REQUEST_TIMEOUT_S = 5.0  # to send the request line, once connected
SEND_TIMEOUT_S = 10.0  # for a client to take each reply line
STREAM_BUFFER = 64  # reply lines queued for a slow reader; progress beyond it is dropped
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
GROUPS_MAX = 65536


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """The supplementary groups of the process at the other end, from the kernel (as they
    were when it connected); () where the kernel cannot say."""
    for size in (256, GROUPS_MAX):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * size)
        except OSError as err:
            if err.errno == errno.ERANGE:
                continue
            return ()
        return struct.unpack(f"{len(raw) // 4}I", raw)
    return ()


class Requests:
    """The request lines of one connection, one after another. The first must come whole
    within REQUEST_TIMEOUT_S; after a request that keeps the connection ("keep": true), the
    next may begin whenever the client likes (the server's reaper ends a connection idle
    for KEEP_IDLE_S: `idle_since`), then must end within REQUEST_TIMEOUT_S; a client that
    closes instead ends the connection quietly."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.first = True
        self.idle_since: float | None = None  # (time.monotonic) waiting for a next request
        self._loop = None  # the loop the socket is registered with, between requests
        self._ready = None  # the future a wait for the next request awaits

    async def next(self) -> dict | None:
        """The next request as a document; None when a kept connection ends between
        requests."""
        data, first = self.buf, self.first
        self.buf, self.first = b"", False
        wait = None if first else self._wait  # (a kept connection: registered, see _wait)
        if first:
            with suppress(BlockingIOError):
                data = self.sock.recv(protocol.MAX_LINE + 1)  # usually there already
                if not data:
                    raise ProtocolError("connection closed before a whole request line")
        elif not data:
            self.idle_since = time.monotonic()
            try:
                data = await _receive(self.sock, wait)
            finally:
                self.idle_since = None
            if not data:
                return None
        if b"\n" not in data:
            with anyio.move_on_after(REQUEST_TIMEOUT_S):
                while b"\n" not in data and len(data) <= protocol.MAX_LINE:
                    chunk = await _receive(self.sock, wait)
                    if not chunk:
                        raise ProtocolError("connection closed before a whole request line")
                    data += chunk
        line, newline, rest = data.partition(b"\n")
        if len(line) > protocol.MAX_LINE:
            _drain(self.sock)  # closing with unread bytes would reset the connection
            raise ProtocolError(f"request longer than {protocol.MAX_LINE} bytes")
        if not newline:
            raise ProtocolError(f"no request line within {REQUEST_TIMEOUT_S:g}s")
        doc = protocol.load(line)
        if rest and not doc.get("keep"):
            raise ProtocolError("nothing may follow a request that does not keep the "
                                "connection (\"keep\": true)")
        self.buf = rest
        return doc

    async def _wait(self) -> None:
        """Until the socket of a kept connection is readable. It stays registered with the
        loop from the first wait until unwatch(): a wait costs a future, not the two
        system calls (register, unregister) and anyio's look-ups of a wait_readable per
        request."""
        if self._loop is None:
            import asyncio
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.sock.fileno(), self._readable)
        self._ready = self._loop.create_future()
        try:
            await self._ready
        finally:
            self._ready = None

    def _readable(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def unwatch(self) -> None:
        """Unregister the socket (before anything else waits on it, and at the end)."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None


def _drain(sock: socket.socket, most: int = 1 << 20) -> None:
    """Read (and drop) what the client sent already, up to `most` bytes."""
    with suppress(OSError):
        while most > 0:
            chunk = sock.recv(65536)
            if not chunk:
                return
            most -= len(chunk)


async def _receive(sock: socket.socket, wait=None) -> bytes:
    """What the client sends next (b"": it closed); wait(): until the socket is readable
    (default: anyio's wait_readable)."""
    while True:
        try:
            return sock.recv(65536)
        except BlockingIOError:
            await (wait() if wait is not None else anyio.wait_readable(sock))
        except OSError:
            return b""


async def send_all(sock: socket.socket, data: bytes) -> None:
    """Send `data` whole; a client that does not take it within SEND_TIMEOUT_S is dropped
    (TimeoutError)."""
    view = memoryview(data)
    with suppress(BlockingIOError):
        view = view[sock.send(view):]
    if view:
        with anyio.fail_after(SEND_TIMEOUT_S):
            while view:
                try:
                    view = view[sock.send(view):]
                except BlockingIOError:
                    await anyio.wait_writable(sock)


class Connection:
    """A request that lasts (a wait, the events): a writer task sends its reply lines in
    order (a client that stops reading is dropped after SEND_TIMEOUT_S), and its hang-up
    can end it.

    Cancelling anyio's own receive on a unix socket can race the peer's hang-up (a
    set_result on a cancelled future), and hang-ups are what this class is for: hence
    wait_readable on the raw socket."""

    def __init__(self, sock: socket.socket, tg) -> None:
        self.sock = sock
        self.tg = tg
        self.scope = tg.cancel_scope  # cancelled when the client hangs up or stops reading
        self._out, self._lines = anyio.create_memory_object_stream(STREAM_BUFFER)

    def note(self, doc: dict) -> None:
        """A stream line (progress, warn) that may be dropped when the client lags."""
        with suppress(anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._out.send_nowait(protocol.dump(doc))

    async def send(self, doc: dict) -> None:
        await self._out.send(protocol.dump(doc))

    def done(self) -> None:
        self._out.close()  # the writer sends what is queued, then ends the connection

    async def writer(self) -> None:
        try:
            async with self._lines:
                async for data in self._lines:
                    await send_all(self.sock, data)
        except (TimeoutError, OSError):
            pass
        self.scope.cancel()

    def cancel_on_hangup(self) -> None:
        """From now on, the request ends when the client closes its end (or sends more):
        for the requests that last (a wait, the events), not the short ones, which a
        client may half-close after sending (`socat`)."""
        self.tg.start_soon(self._watch_hangup)

    async def _watch_hangup(self) -> None:
        await anyio.wait_readable(self.sock)
        self.scope.cancel()
