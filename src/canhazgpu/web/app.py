"""The web server: a read-only page, the HTTP API and /metrics (docs/web.md).

`create_app(web)` is the ASGI app; `serve_web(config, listen)` serves it with uvicorn until
cancelled (the `web` command, and later `serve --web ADDR`). Only GET and HEAD exist: no
state change is reachable over HTTP.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from importlib import resources

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import Config
from ..core import Core
from ..errors import (BackendUnavailable, CanHazGpuError, InvalidRequest, PoolNotInitialized)
from ..model import seen_by
from .hosts import Hosts, UnknownHost
from .live import Live, read_all
from .metrics import CONTENT_TYPE, Metrics
from .sse import events_endpoint

log = logging.getLogger("canhazgpu.web")

API_VERSION = 1
MAX_DAYS = 3660
MAX_HEADER_BYTES = 16 * 1024
MAX_URL_BYTES = 8 * 1024
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; "
                                 b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class Web:
    """What one web server shares: its hosts, their live feeds and its metrics."""

    def __init__(self, config: Config, hosts: tuple[str, ...] = ()) -> None:
        self.config = config
        self.hosts = Hosts(config, hosts)
        self.metrics = Metrics(lambda: self.live.clients)
        self.live = Live(self.hosts, self.metrics.observe)

    @asynccontextmanager
    async def running(self):
        """The live feeds run while inside; Redis may be down (they keep trying)."""
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.live.run)
                try:
                    yield self
                finally:
                    self.live.close()
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.hosts.aclose()


# ---------------------------------------------------------------------- errors
def _status_of(err: CanHazGpuError) -> int:
    if isinstance(err, (UnknownHost, PoolNotInitialized)):
        return 404
    if isinstance(err, InvalidRequest):
        return 400
    if isinstance(err, BackendUnavailable):
        return 503
    return 500  # corrupt state: a message naming the key, never a traceback


def error(status: int, text: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": text, "status": status}, status_code=status, headers=headers)


async def _domain_error(request: Request, err: CanHazGpuError) -> JSONResponse:
    return error(_status_of(err), str(err))


async def _http_error(request: Request, err: HTTPException) -> Response:
    text = {404: f"no such page: {request.url.path} (the API is under /api/v1, see "
                 "docs/web.md)",
            405: f"{request.method} is not allowed: this server is read-only (GET only)"}
    return error(err.status_code, text.get(err.status_code, str(err.detail)), err.headers)


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    log.exception("unexpected error serving %s", request.url.path)
    return error(500, "internal error: see the server's log")


def _guarded(app):
    """Oversized requests get a 4xx JSON error before any routing; every response gets the
    security headers."""
    async def guarded(scope, receive, send):
        async def sending(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)
        if scope["type"] == "http":
            size = sum(len(k) + len(v) for k, v in scope["headers"])
            if size > MAX_HEADER_BYTES:
                return await error(431, f"request headers too large ({size} bytes; at most "
                                   f"{MAX_HEADER_BYTES})")(scope, receive, sending)
            if len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) > MAX_URL_BYTES:
                return await error(414, f"URL too long (at most {MAX_URL_BYTES} bytes)")(
                    scope, receive, sending)
        await app(scope, receive, sending)
    return guarded


# ---------------------------------------------------------------------- the app
def create_app(web: Web):
    """The ASGI app of `web` (whose feeds must be running: `async with web.running()`)."""
    hosts = web.hosts
    assets = {name: (resources.files(__package__) / "static" / name).read_bytes()
              for name in STATIC}

    async def known(host: str) -> str:
        names = await hosts.names()
        if host not in names:
            raise UnknownHost(host, names)
        return host

    async def chosen(request: Request) -> list[str]:
        """The hosts named by ?host=A,B (repeatable), or every host."""
        wanted = [h for v in request.query_params.getlist("host") for h in v.split(",") if h]
        return [await known(h) for h in dict.fromkeys(wanted)] or await hosts.names()

    async def page(request: Request) -> Response:
        return Response(assets["index.html"], media_type=STATIC["index.html"])

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise HTTPException(404)
        return Response(assets[name], media_type=STATIC[name],
                        headers={"Cache-Control": "no-cache"})

    async def healthz(request: Request) -> JSONResponse:
        """The server answers; Redis per host as last seen by the live feeds (no Redis call)."""
        states = {h: web.live.state(h) for h in await hosts.names()}
        return JSONResponse({"status": "ok", "hosts": {
            h: "ok" if st.error is None else st.error for h, st in states.items()}})

    async def base() -> Core:
        """A core on the shown hosts' Redis for views across them: this machine's when it
        is shown (its GPUs are scanned, the others' are their daemons' snapshots)."""
        names, here = await hosts.names(), hosts.config.host_name
        return hosts.core(here if here in names else names[0])

    async def host_list(request: Request) -> JSONResponse:
        """The document `canhazgpu hosts --json` prints, for the hosts shown."""
        from ..hosts import document
        return JSONResponse(await document(await base(), await hosts.names()))

    async def status(request: Request) -> JSONResponse:
        from .. import render
        core = hosts.core(await known(request.path_params["host"]))
        return JSONResponse(render.render_json(seen_by(await core.view(), None)))

    async def queue(request: Request) -> JSONResponse:
        from .adapters import queue_rows
        core = hosts.core(await known(request.path_params["host"]))
        return JSONResponse(queue_rows(await core.view()))

    async def report(request: Request) -> JSONResponse:
        text = request.query_params.get("days", "30")
        try:
            days = float(text)
        except ValueError:
            days = -1
        if not 0 < days <= MAX_DAYS:
            raise InvalidRequest(f"invalid days {text[:20]!r}: use a number of days from 1 "
                                 f"to {MAX_DAYS}, e.g. /api/v1/report?days=7")
        if "host" in request.query_params:
            host = await known(request.query_params["host"])
            return JSONResponse(await hosts.core(host).report(days))
        entries = []
        for host in await hosts.names():
            try:
                entries.append({"host": host, "error": None,
                                "report": await hosts.core(host).report(days)})
            except CanHazGpuError as err:
                entries.append({"host": host, "error": str(err), "report": None})
        # the hosts that could be read, together: `report --all-hosts --json`'s document
        from ..hosts import report as across
        readable = [e["host"] for e in entries if e["report"] is not None]
        together = await across(await base(), days, readable) if readable else None
        return JSONResponse({"version": API_VERSION, "days": days, "hosts": entries,
                             "all": together})

    async def events(request: Request) -> Response:
        return await events_endpoint(request, web.live, await chosen(request))

    async def metrics(request: Request) -> Response:
        states = await read_all(hosts, await hosts.names())
        return Response(web.metrics.render(states), media_type=CONTENT_TYPE)

    routes = [
        Route("/", page), Route("/static/{name}", static), Route("/healthz", healthz),
        Route("/metrics", metrics), Route("/api/v1/hosts", host_list),
        Route("/api/v1/hosts/{host}/status", status), Route("/api/v1/hosts/{host}/queue", queue),
        Route("/api/v1/report", report), Route("/api/v1/events", events),
    ]
    app = Starlette(routes=routes, exception_handlers={
        HTTPException: _http_error, CanHazGpuError: _domain_error, Exception: _unexpected})
    return _guarded(app)
