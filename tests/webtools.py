"""Helpers for the web tests: a real server on a free port, and an SSE reader with deadlines."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import anyio
import httpx

from canhazgpu.web.server import serve_web


@asynccontextmanager
async def served(config, hosts: tuple[str, ...] = ()):
    """`serve_web` on 127.0.0.1 (a free port) as a task of this test; yields an httpx client."""
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(serve_web, config, "127.0.0.1:0", hosts)
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            yield client
        tg.cancel_scope.cancel()


class Sse:
    """The messages of one server-sent event stream: {'id', 'event', 'data'} each."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 5.0) -> dict:
        message: dict = {}
        with anyio.fail_after(timeout):
            while True:
                line = await self._lines.__anext__()
                if line == "":
                    if "event" in message:
                        return message
                    message = {}
                elif not line.startswith(":"):
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    message[field] = json.loads(value) if field == "data" else value

    async def until(self, predicate, timeout: float = 5.0) -> dict:
        """Skip messages until one satisfies predicate, within timeout in all."""
        with anyio.fail_after(timeout):
            while True:
                message = await self.next(timeout)
                if predicate(message):
                    return message


@asynccontextmanager
async def sse(client: httpx.AsyncClient, path: str = "/api/v1/events?view=1",
              headers: dict | None = None):
    async with client.stream("GET", path, headers=headers or {}) as response:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Sse(response)


def is_event(kind: str, **fields):
    """A predicate: an `event` message of this type whose document has these fields."""
    def match(message: dict) -> bool:
        doc = message.get("data") or {}
        return message["event"] == "event" and doc.get("type") == kind and \
            all(doc.get(k) == v for k, v in fields.items())
    return match


def gpu_status(message: dict, gpu: int) -> str | None:
    """The status of a GPU in a `state` message (None: not a state message, or no status)."""
    if message["event"] != "state" or not message["data"]["status"]:
        return None
    return message["data"]["status"]["gpus"][gpu]["status"]
