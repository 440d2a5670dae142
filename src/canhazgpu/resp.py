"""A small blocking Redis client for the CLI's reads without an event loop (quickread.py):
hiredis packs the commands and parses the replies, over a plain socket. No asyncio, no
redis-py: direct mode's `status` starts without paying for them (docs/benchmarks.md).

It speaks to one Redis named by a redis:// or unix:// URL (user, password and database as
redis-py reads them). Anything else (TLS, a cluster, URL options), a Redis that cannot be
reached and any error reply raise NeedsEventLoop: the command runs again over redis-py
(store.py), which gives the one-line error that it always gave.
"""

from __future__ import annotations

import socket

from .errors import NeedsEventLoop
from .urls import parts

CONNECT_TIMEOUT_S = 5.0  # as store.connect(): socket_connect_timeout
DEFAULT_PORT = 6379


def endpoint(url: str) -> tuple[str, object, tuple, int]:
    """(socket family, address, AUTH arguments (empty: none), database) of a URL this
    client serves; NeedsEventLoop for any other."""
    found = parts(url)
    if found is None:
        raise NeedsEventLoop
    scheme, user, password, host, port, path, query = found
    db = None
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        if name != "db" or not value.isdigit():
            raise NeedsEventLoop  # redis-py's other URL options: its connection, not ours
        db = int(value)
    if scheme == "unix":
        if not path:
            raise NeedsEventLoop
        where, family = _unquote(path), socket.AF_UNIX
    elif scheme == "redis":
        if db is None and path.strip("/"):
            if not path.strip("/").isdigit():
                raise NeedsEventLoop
            db = int(path.strip("/"))
        where, family = (_unquote(host) or "localhost", port or DEFAULT_PORT), None
    else:
        raise NeedsEventLoop  # rediss:// (TLS), redis+cluster://
    auth = ()
    if user and not password:
        raise NeedsEventLoop  # (redis-py sends AUTH user "")
    if password:
        auth = (_unquote(user), _unquote(password)) if user else (_unquote(password),)
    return family, where, auth, db or 0


def _unquote(text: str) -> str:
    if "%" not in text:
        return text
    from urllib.parse import unquote
    return unquote(text)


class Connection:
    """One blocking connection: pipeline(commands) sends them at once and returns their
    replies in order (an error reply as a hiredis.ReplyError in its place)."""

    def __init__(self, url: str) -> None:
        try:
            import hiredis
        except ImportError:  # redis-py without its hiredis extra
            raise NeedsEventLoop from None
        self._pack = hiredis.pack_command
        self._error = hiredis.ReplyError
        self._reader = hiredis.Reader(encoding="utf-8")  # decode_responses=True
        family, where, auth, db = endpoint(url)
        try:
            if family is None:
                self._sock = socket.create_connection(where, CONNECT_TIMEOUT_S)
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                self._sock = socket.socket(family, socket.SOCK_STREAM)
                self._sock.settimeout(CONNECT_TIMEOUT_S)
                self._sock.connect(where)
            self._sock.settimeout(None)  # as redis-py: no socket_timeout
        except OSError:
            raise NeedsEventLoop from None  # redis-py says why, in the one line it always gave
        self._hello = [cmd for cmd in (("AUTH", *auth) if auth else None,
                                       ("SELECT", db) if db else None) if cmd]

    def pipeline(self, commands: list[tuple]) -> list:
        hello, self._hello = self._hello, []  # AUTH and SELECT go with the first commands
        everything = [*hello, *commands]
        try:
            self._sock.sendall(b"".join(self._pack(cmd) for cmd in everything))
            replies = [self._read() for _ in everything]
        except OSError:
            raise NeedsEventLoop from None
        if any(isinstance(r, self._error) for r in replies[:len(hello)]):
            raise NeedsEventLoop  # refused credentials or database: redis-py's words
        return replies[len(hello):]

    def call(self, *command):
        """One command's reply; an error reply raises NeedsEventLoop."""
        reply = self.pipeline([command])[0]
        if self.failed(reply):
            raise NeedsEventLoop
        return reply

    def failed(self, reply) -> bool:
        return isinstance(reply, self._error)

    def _read(self):
        while True:
            reply = self._reader.gets()
            if reply is not False:
                return reply
            data = self._sock.recv(1 << 16)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            self._reader.feed(data)

    def close(self) -> None:
        self._sock.close()
