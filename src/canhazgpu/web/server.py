"""Serving the web app with uvicorn inside our own task group, until cancelled."""

from __future__ import annotations

import socket

import anyio
import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import Config
from ..errors import CanHazGpuError, InvalidRequest
from .app import Web, create_app

DEFAULT_LISTEN = "127.0.0.1:8080"
MAX_CONNECTIONS = 1000  # beyond this uvicorn answers 503 (each SSE client is one)
HEADERS_TIMEOUT_S = 10.0  # a request's headers must be in within this


class Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers: a client that
    connects and sends nothing, or trickles its headers in (slowloris), is disconnected
    instead of holding a connection for ever."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self._deadline is not None:
            self._deadline.cancel()  # the headers are in
            self._deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(HEADERS_TIMEOUT_S, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class CannotListen(CanHazGpuError):
    """The address is taken or not ours."""


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8080', '[::1]:8080', 'localhost:8080', '0.0.0.0:80' or a bare port."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or int(port) > 65535:
        raise InvalidRequest(f"invalid --listen {text!r}: use ADDRESS:PORT, e.g. "
                             "127.0.0.1:8080, 0.0.0.0:8080 (every interface) or [::1]:8080")
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (blocking: name lookup; call from a worker thread)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise CannotListen(f"cannot listen on {host}:{port} ({err.strerror or err}): "
                           "check the address in --listen") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(512)
    except OSError as err:
        sock.close()
        raise CannotListen(f"cannot listen on {host}:{port} ({err.strerror or err}): "
                           "pick another address or port with --listen") from None
    sock.setblocking(False)
    return sock


async def serve_web(config: Config, listen: str = DEFAULT_LISTEN, hosts: tuple[str, ...] = (),
                    *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
    """Serve the page, API and metrics on `listen` until cancelled.

    task_status.started() receives the address actually bound (port 0 picks a free one).
    Redis may be down at start or go away later: the page says so and recovers.
    """
    host, port = parse_listen(listen)
    sock = await anyio.to_thread.run_sync(bind, host, port)
    web = Web(config, hosts)
    async with web.running():
        settings = uvicorn.Config(
            create_app(web), lifespan="off", log_config=None, access_log=False, http=Protocol,
            ws="none", server_header=False, timeout_keep_alive=5, timeout_graceful_shutdown=2,
            limit_concurrency=MAX_CONNECTIONS)
        settings.load()
        server = uvicorn.Server(settings)
        # Server.serve() would also take over SIGINT/SIGTERM, which are the caller's: do
        # what it does around them (lifespan, startup, main loop, shutdown) ourselves.
        server.lifespan = settings.lifespan_class(settings)
        try:
            await server.startup(sockets=[sock])
            task_status.started(sock.getsockname()[:2])
            await server.main_loop()
        finally:
            with anyio.CancelScope(shield=True):
                web.live.close()  # SSE streams end, so connections close at once
                if server.started:
                    await server.shutdown(sockets=[sock])
                sock.close()
