"""A small blocking Redis client for the CLI's reads without an event loop (quickread.py):
hiredis packs the commands and parses the replies, over a plain socket. No asyncio, no
redis-py: direct mode's `status` starts without paying for them (docs/benchmarks.md).

It speaks to a Redis named by a redis://, unix:// or redis+cluster:// URL (user, password
and database as redis-py reads them); on a cluster, to the node serving a key's slot
(Cluster). Anything else (TLS, URL options), a Redis that cannot be reached and any error
reply (a slot that moved among them) raise NeedsEventLoop: the command runs again over
redis-py (store.py), which gives the one-line error that it always gave.
"""

from __future__ import annotations

import socket

from .errors import NeedsEventLoop
from .urls import parts

CONNECT_TIMEOUT_S = 5.0  # as store.connect(): socket_connect_timeout
# A Redis that accepts connections and sends nothing (stopped, hung) is left to redis-py
# after this (its handshake's 5 s, then its "does not answer" line); after the first reply,
# no timeout, as redis-py
FIRST_REPLY_S = 2.0
DEFAULT_PORT = 6379


def endpoint(url: str) -> tuple:
    """(socket family (None: TCP), address, AUTH arguments (empty: none), database) of a
    URL this client serves (redis+cluster://: a node to ask for the others);
    NeedsEventLoop for any other."""
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
    elif scheme in ("redis", "redis+cluster"):
        if db is None and path.strip("/"):
            if not path.strip("/").isdigit():
                raise NeedsEventLoop
            db = int(path.strip("/"))
        where, family = (_unquote(host) or "localhost", port or DEFAULT_PORT), None
    else:
        raise NeedsEventLoop  # rediss:// (TLS)
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

    def __init__(self, family, where, auth: tuple = (), db: int = 0) -> None:
        try:
            import hiredis
        except ImportError:  # redis-py without its hiredis extra
            raise NeedsEventLoop from None
        self._pack = hiredis.pack_command
        self._error = hiredis.ReplyError
        self._broken = (OSError, ValueError, hiredis.ProtocolError)  # (ValueError: not UTF-8)
        self._reader = hiredis.Reader(encoding="utf-8")  # decode_responses=True
        try:
            if family is None:
                self._sock = socket.create_connection(where, CONNECT_TIMEOUT_S)
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                self._sock = socket.socket(family, socket.SOCK_STREAM)
                self._sock.settimeout(CONNECT_TIMEOUT_S)
                self._sock.connect(where)
            self._sock.settimeout(FIRST_REPLY_S)
        except OSError:
            raise NeedsEventLoop from None  # redis-py says why, in the one line it always gave
        self._hello = [cmd for cmd in (("AUTH", *auth) if auth else None,
                                       ("SELECT", db) if db else None) if cmd]
        self._greeting = 0  # replies to AUTH and SELECT still to read

    def pipeline(self, commands: list[tuple]) -> list:
        self.send(commands)
        return self.receive(len(commands))

    def send(self, commands: list[tuple]) -> None:
        """Send commands without waiting (receive() their replies): one node's pipeline
        on its way while another's is sent."""
        hello, self._hello = self._hello, []  # AUTH and SELECT go with the first commands
        self._greeting += len(hello)
        try:
            self._sock.sendall(b"".join(self._pack(cmd) for cmd in [*hello, *commands]))
        except OSError:
            raise NeedsEventLoop from None

    def receive(self, count: int) -> list:
        greeting, self._greeting = self._greeting, 0
        try:
            replies = [self._read() for _ in range(greeting + count)]
        except self._broken:
            raise NeedsEventLoop from None
        if any(isinstance(r, self._error) for r in replies[:greeting]):
            raise NeedsEventLoop  # refused credentials or database: redis-py's words
        return replies[greeting:]

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
            if self._sock.gettimeout() is not None:
                self._sock.settimeout(None)  # it answers
            self._reader.feed(data)

    def close(self) -> None:
        self._sock.close()


def connect(url: str):
    """A Connection to the Redis of `url`, or a Cluster of connections for
    redis+cluster://."""
    family, where, auth, db = endpoint(url)
    if url.startswith("redis+cluster:"):
        return Cluster(where, auth)
    return Connection(family, where, auth, db)


class Cluster:
    """The nodes of a Redis Cluster, each asked for the keys of its slots: node(key) is
    the connection to the master serving that key (CLUSTER SLOTS, asked once)."""

    def __init__(self, seed: tuple, auth: tuple) -> None:
        self._auth = auth
        self._nodes: dict[tuple, Connection] = {seed: Connection(None, seed, auth)}
        self._slots = []  # (first slot, last slot, address)
        for first, last, master, *_ in self._nodes[seed].call("CLUSTER", "SLOTS"):
            self._slots.append((int(first), int(last), (master[0] or seed[0], int(master[1]))))

    def node(self, key: str) -> Connection:
        slot = key_slot(key)
        for first, last, where in self._slots:
            if first <= slot <= last:
                if where not in self._nodes:
                    self._nodes[where] = Connection(None, where, self._auth)
                return self._nodes[where]
        raise NeedsEventLoop  # a slot no master serves: redis-py says so

    def close(self) -> None:
        for connection in self._nodes.values():
            connection.close()


def key_slot(key: str) -> int:
    """The cluster slot of a key: CRC16 (XMODEM) of its {hash tag}, or of all of it."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        crc &= 0xFFFF
    return crc % 16384
