"""One API connection on the daemon's side: who is there (SO_PEERCRED), its request line,
its reply lines, its hang-up. A bad client costs a bounded time: REQUEST_TIMEOUT_S to send
its request, MAX_LINE bytes at most, SEND_TIMEOUT_S for each reply line it does not read."""

from __future__ import annotations

import socket
import struct
from contextlib import suppress

import anyio
from anyio.abc import SocketAttribute

from . import protocol
from .protocol import ProtocolError

REQUEST_TIMEOUT_S = 5.0  # to send the request line, once connected
SEND_TIMEOUT_S = 10.0  # for a client to take each reply line
STREAM_BUFFER = 64  # reply lines queued for a slow reader; progress beyond it is dropped


def peer_credentials(stream) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel."""
    sock = stream.extra(SocketAttribute.raw_socket)
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


class Connection:
    """One client: its request, and a writer task that sends reply lines in order (a
    client that stops reading is dropped after SEND_TIMEOUT_S).

    The raw socket is read and written with wait_readable/wait_writable: cancelling
    anyio's own receive on a unix socket can race the peer's hang-up (a set_result on
    a cancelled future), and hang-ups are what this class is for."""

    def __init__(self, stream, tg) -> None:
        self.stream = stream
        self.sock = stream.extra(SocketAttribute.raw_socket)
        self.tg = tg
        self.scope = tg.cancel_scope  # cancelled when the client hangs up or stops reading
        self._out, self._lines = anyio.create_memory_object_stream(STREAM_BUFFER)

    async def request(self) -> dict:
        data = b""
        with anyio.move_on_after(REQUEST_TIMEOUT_S):
            while b"\n" not in data and len(data) <= protocol.MAX_LINE:
                chunk = await self._receive()
                if not chunk:
                    raise ProtocolError("connection closed before a whole request line")
                data += chunk
        line, newline, rest = data.partition(b"\n")
        if len(line) > protocol.MAX_LINE:
            raise ProtocolError(f"request longer than {protocol.MAX_LINE} bytes")
        if not newline:
            raise ProtocolError(f"no request line within {REQUEST_TIMEOUT_S:g}s")
        if rest:
            raise ProtocolError("one request per connection: nothing may follow it")
        return protocol.load(line)

    async def _receive(self) -> bytes:
        while True:
            try:
                return self.sock.recv(65536)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
            except OSError:
                return b""

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
                    with anyio.fail_after(SEND_TIMEOUT_S):
                        await self._send_all(memoryview(data))
        except (TimeoutError, OSError):
            pass
        self.scope.cancel()

    async def _send_all(self, data: memoryview) -> None:
        while data:
            try:
                data = data[self.sock.send(data):]
            except BlockingIOError:
                await anyio.wait_writable(self.sock)

    def cancel_on_hangup(self) -> None:
        """From now on, the request ends when the client closes its end (or sends more):
        for the requests that last (a wait, the events), not the short ones, which a
        client may half-close after sending (`socat`)."""
        self.tg.start_soon(self._watch_hangup)

    async def _watch_hangup(self) -> None:
        await anyio.wait_readable(self.sock)
        self.scope.cancel()
