"""One Redis connection that carries a process's scripts, pipelined (a single Redis, not a
Cluster).

A script call through redis-py's client costs the daemon more than the script costs Redis:
a connection taken from the pool and given back, retries, timeouts and the encoding of
each of ~40 arguments, per call. The lane keeps one connection of the pool for good:
each call writes its command at once (hiredis packs it) and its reply comes back in order.
Whoever finds nobody reading reads the replies, hands each to its caller, and when its own
has come passes the reading on to the next caller still waiting; a caller cancelled while
it waits leaves its reply to be read and dropped. Reading is shielded from cancellation,
so the connection never loses its place in the stream of replies; when the connection
fails, every call on it fails with that error and the next call connects again.

Where the URL allows (redis:// or unix://, resp.endpoint), the lane's connection is its own
(Direct): asyncio's streams with hiredis packing and parsing, none of redis-py's per-call
timeouts, retries and health checks, which cost the daemon more than the rest of a read.
A TLS URL keeps a connection of redis-py's pool. Either way, a failure is redis-py's
exception (ConnectionError, an error reply's class), as store.py maps them.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque

import anyio
from redis.exceptions import ConnectionError as Lost
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as Slow

try:
    from hiredis import pack_command
except ImportError:  # pragma: no cover (hiredis comes with redis-py's extra)
    pack_command = None


class _Call:
    __slots__ = ("ready", "result", "error", "done", "lead", "gone")

    def __init__(self) -> None:
        self.ready = anyio.Event()
        self.result = self.error = None
        self.done = self.lead = self.gone = False


class Lane:
    def __init__(self, pool, url: str | None = None) -> None:
        self.pool = Opener.of(url, pool) if url is not None else pool
        self.conn = None
        self.calls: deque[_Call] = deque()
        self.reading = False
        self._connecting = anyio.Lock()

    async def call(self, *args):
        """One command's reply (a Redis error reply raised as redis-py's exception)."""
        conn = self.conn
        if conn is None:
            async with self._connecting:  # one connection, however many call at first
                if self.conn is None:
                    self.conn = await self.pool.get_connection()
                conn = self.conn
        packed = pack_command(args) if pack_command is not None else conn.pack_command(*args)
        call = _Call()
        self.calls.append(call)  # in the order the commands are written
        try:
            await conn.send_packed_command(packed, check_health=False)
            if self.reading:
                await call.ready.wait()  # its reply, or its turn to read
            else:
                self.reading = call.lead = True
        except BaseException as err:  # cancelled while waiting, or the write failed
            call.gone = True
            if isinstance(err, Exception):
                with anyio.CancelScope(shield=True):
                    await self._fail(conn, err)
            if not call.lead or call.done:
                raise
            with anyio.CancelScope(shield=True):  # our turn to read came: read, then go
                await self._read(conn, call)
            raise
        if call.lead and not call.done:
            with anyio.CancelScope(shield=True):
                await self._read(conn, call)
        if call.error is not None:
            raise call.error
        return call.result

    async def _read(self, conn, mine: _Call) -> None:
        """Read replies until ours, and those of callers gone; then pass the reading on."""
        try:
            while not mine.done or (self.calls and self.calls[0].gone):
                call = self.calls[0]
                try:
                    call.result = await conn.read_response()
                except (Lost, Slow):
                    raise
                except RedisError as err:  # an error reply (NOSCRIPT...): that call's own
                    call.error = err
                self.calls.popleft()
                call.done = True
                call.ready.set()
        except Exception as err:  # the connection failed
            await self._fail(conn, err)
            return
        if self.calls:
            self.calls[0].lead = True
            self.calls[0].ready.set()
        else:
            self.reading = False

    async def _fail(self, conn, err: Exception) -> None:
        """The connection failed: every call on it fails with `err`; the next connects
        again."""
        if self.conn is conn:
            self.conn = None
            while self.calls:
                call = self.calls.popleft()
                call.error, call.done = err, True
                call.ready.set()
            self.reading = False
            await conn.disconnect(nowait=True)
            await self.pool.release(conn)

    async def aclose(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await conn.disconnect()
            await self.pool.release(conn)


class Direct:
    """The lane's own connection to a Redis (no TLS): the part of redis-py's connection
    that the lane uses (send_packed_command, read_response, disconnect), over asyncio's
    streams and hiredis. As redis-py's pool was set up: connecting takes at most
    CONNECT_TIMEOUT_S; a read waits as long as Redis takes (a slow script is not a lost
    connection)."""

    CONNECT_TIMEOUT_S = 5.0

    def __init__(self, reader, writer) -> None:
        import hiredis
        self.reader, self.writer = reader, writer
        self.parser = hiredis.Reader(encoding="utf-8")  # decode_responses=True
        self.error = hiredis.ReplyError
        self.corked: list | None = None  # this step's commands, to be written at its end

    async def send_packed_command(self, packed, check_health: bool = False) -> None:
        """Send a command: the commands of one step of the event loop leave together
        after it, in one write (one system call here, one read for Redis, whose replies
        then come back together too)."""
        if self.writer.is_closing():
            raise Lost("the connection to Redis was closed")
        if self.corked is None:
            self.corked = []
            asyncio.get_running_loop().call_soon(self._uncork)
        self.corked.append(packed)

    def _uncork(self) -> None:
        batch, self.corked = self.corked, None
        try:
            self.writer.write(b"".join(batch))
        except (OSError, RuntimeError):  # the reader finds the connection gone: calls fail
            self.writer.transport.abort()

    def take(self):
        """The next reply Redis sent already (False: none yet); an error reply raised as
        redis-py's exception."""
        reply = self.parser.gets()
        if isinstance(reply, self.error):
            from redis._parsers.base import BaseParser
            raise BaseParser.parse_error(str(reply))
        return reply

    async def read_response(self):
        while True:
            reply = self.take()
            if reply is not False:
                return reply
            try:
                data = await self.reader.read(1 << 16)
            except OSError as err:
                raise Lost(f"Error reading from Redis: {err}") from None
            if not data:
                raise Lost("Redis closed the connection")
            self.parser.feed(data)

    async def disconnect(self, nowait: bool = False) -> None:
        self.writer.transport.abort()


class Opener:
    """Opens a Direct connection (AUTH and SELECT as the URL says), as a pool would."""

    def __init__(self, family, where, auth: tuple, db: int) -> None:
        self.family, self.where, self.auth, self.db = family, where, auth, db

    @classmethod
    def of(cls, url: str, fallback):
        """What the lane takes its connection from: ours for a URL we can serve, else
        redis-py's pool `fallback`."""
        from .errors import NeedsEventLoop
        from .resp import endpoint
        try:
            address = endpoint(url)
        except NeedsEventLoop:
            return fallback
        return fallback if pack_command is None else cls(*address)

    async def get_connection(self) -> Direct:
        try:
            with anyio.fail_after(Direct.CONNECT_TIMEOUT_S):
                if self.family == socket.AF_UNIX:
                    reader, writer = await asyncio.open_unix_connection(self.where)
                else:
                    reader, writer = await asyncio.open_connection(*self.where)
        except (OSError, TimeoutError) as err:
            raise Lost(f"Error connecting to Redis at {self.where}: {err}") from None
        conn = Direct(reader, writer)
        try:
            for command in (("AUTH", *self.auth) if self.auth else None,
                            ("SELECT", self.db) if self.db else None):
                if command:
                    await conn.send_packed_command(pack_command(command))
                    await conn.read_response()
        except BaseException:
            await conn.disconnect()
            raise
        return conn

    async def release(self, conn) -> None:
        pass

    async def subscription(self) -> Subscription:
        return Subscription(await self.get_connection())


class Subscription:
    """Pub/sub over a Direct connection: what the hub (events.py) uses of redis-py's
    PubSub, with redis-py's message documents. A message Redis sent already is taken
    without waiting; get_message waits at most `timeout` for the next."""

    def __init__(self, conn: Direct) -> None:
        self.conn = conn

    async def subscribe(self, *channels: str) -> None:
        await self.conn.send_packed_command(pack_command(("SUBSCRIBE", *channels)))

    async def psubscribe(self, *patterns: str) -> None:
        await self.conn.send_packed_command(pack_command(("PSUBSCRIBE", *patterns)))

    async def ping(self) -> None:
        await self.conn.send_packed_command(pack_command(("PING",)))

    async def get_message(self, timeout: float):
        reply = self.conn.take()
        if reply is False:
            with anyio.move_on_after(timeout):
                reply = await self.conn.read_response()
            if reply is False:
                return None
        kind = reply[0]
        if kind == "pmessage":
            return {"type": kind, "pattern": reply[1], "channel": reply[2], "data": reply[3]}
        if kind == "pong":
            return {"type": kind, "channel": None, "data": reply[1]}
        return {"type": kind, "channel": reply[1], "data": reply[2]}

    async def aclose(self) -> None:
        await self.conn.disconnect()
