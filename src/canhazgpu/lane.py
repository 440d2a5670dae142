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
"""

from __future__ import annotations

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
    def __init__(self, pool) -> None:
        self.pool = pool
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
