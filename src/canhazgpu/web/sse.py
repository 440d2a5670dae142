"""`/api/v1/events`: server-sent events, with replay of what a reconnecting client missed.

Messages (`event:` names): `event` (a host's event document, exactly as published),
`state` (with `?view=1`: a host's status document and queue, at start and after every
change), `resync` (events of a host may have been missed: re-read its state), `hosts` (the
hosts followed, first). Each message's `id` is the client's position in every host's
sequence, e.g. `gpu01:42,gpu02:17`; a client that reconnects with it as `Last-Event-ID`
(browsers do that by themselves) first receives the events it missed. Without one,
`?recent=N` (at most 1000) first sends the last N events of each host (the page shows its
recent events this way).
"""

from __future__ import annotations

import json
from urllib.parse import quote, unquote

import anyio
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import CanHazGpuError, InvalidRequest
from .adapters import events_since
from .live import Item, Live

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
RETRY_MS = 1000  # how soon a browser reconnects
MAX_RECENT = 1000  # ?recent=N: the last N events of each host, replayed on connect


def encode_cursor(cursor: dict[str, int]) -> str:
    return ",".join(f"{quote(h, safe='')}:{s}" for h, s in sorted(cursor.items()))


def parse_cursor(text: str, hosts: list[str]) -> dict[str, int]:
    """A Last-Event-ID: 'host:seq,...' as we send it, or a bare sequence number when one
    host is followed. Hosts not followed are ignored."""
    text = text.strip()
    if text.isdigit() and len(hosts) == 1:
        return {hosts[0]: int(text)}
    cursor = {}
    for part in filter(None, text.split(",")):
        host, sep, seq = part.rpartition(":")
        if not sep or not seq.isdigit():
            raise InvalidRequest(f"invalid Last-Event-ID {text[:80]!r}: use the id of the "
                                 "last message received, e.g. gpu01:42")
        if unquote(host) in hosts:
            cursor[unquote(host)] = int(seq)
    return cursor


def message(kind: str, data, cursor: dict[str, int] | None = None) -> str:
    """One SSE message; `data` is a document, or an Item whose JSON is made once for all."""
    text = data.json if isinstance(data, Item) else json.dumps(data, separators=(",", ":"))
    head = f"id: {encode_cursor(cursor)}\n" if cursor else ""
    return f"{head}event: {kind}\ndata: {text}\n\n"


class Stream:
    """One client's stream: replay from its cursor, then live items for its hosts."""

    def __init__(self, live: Live, hosts: list[str], cursor: dict[str, int], view: bool,
                 recent: int = 0):
        self.live, self.hosts, self.view = live, hosts, view
        self.given = dict(cursor)  # where the client says it is: replay from there
        self.cursor = dict(cursor)
        self.recent = recent  # without a cursor: replay each host's last `recent` events

    async def __aiter__(self):
        with self.live.subscribe() as items:  # first: nothing published from now is missed
            for host in self.hosts:
                if self.recent and host not in self.cursor and host in self.live.seqs:
                    start = max(0, self.live.seqs[host] - self.recent)
                    self.given[host] = self.cursor[host] = start
            for host in self.hosts:
                if host not in self.cursor and host in self.live.seqs:
                    self.cursor[host] = self.live.seqs[host]
            yield f"retry: {RETRY_MS}\n" + message("hosts", {"hosts": self.hosts}, self.cursor)
            for host, seq in self.given.items():
                for text in await self._replay(host, seq):
                    yield text
            if self.view:
                for host in self.hosts:
                    yield message("state", Item("state", host, self.live.state(host)),
                                  self.cursor)
            while True:
                item = None
                with anyio.move_on_after(KEEPALIVE_S):
                    try:
                        item = await items.receive()
                    except anyio.EndOfStream:
                        return  # the server is closing, or dropped us as too slow
                text = ": keepalive\n\n" if item is None else self._render(item)
                if text:
                    yield text

    async def _replay(self, host: str, seq: int) -> list[str]:
        """The events of `host` after `seq` up to where the live stream starts, or `resync`
        when they are not all in the host's event stream any more."""
        latest = self.live.seqs.get(host)  # later events come live
        if latest is None or latest == seq:
            return []
        missed = []
        if latest > seq:
            try:
                missed = [e for e in await events_since(self.live.hosts.core(host).store, seq)
                          if e.seq <= latest]
            except (CanHazGpuError, RedisError):
                pass  # the resync below covers it
        out = [self._render(Item("event", host, e)) for e in missed]
        if not missed or missed[0].seq != seq + 1:
            out.append(self._render(Item("resync", host, latest)))
        return out

    def _render(self, item: Item) -> str:
        if item.host not in self.hosts:
            return ""
        if item.kind == "event":
            if item.data.seq <= self.cursor.get(item.host, -1):
                return ""  # sent by the replay already
            self.cursor[item.host] = item.data.seq
            return message("event", item, self.cursor)
        if item.kind == "resync":
            self.cursor[item.host] = item.data
            return message("resync", {"host": item.host}, self.cursor)
        if self.view:
            return message("state", item, self.cursor)
        return ""


async def events_endpoint(request: Request, live: Live, hosts: list[str]) -> Response:
    """The SSE response for `hosts` (already validated)."""
    header = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    cursor = parse_cursor(header, hosts) if header else {}
    view = request.query_params.get("view", "0")
    if view not in ("0", "1"):
        raise InvalidRequest(f"invalid view {view!r}: use view=1 for status documents, "
                             "or leave it out")
    recent = request.query_params.get("recent", "0")
    if not recent.isdigit() or int(recent) > MAX_RECENT:
        raise InvalidRequest(f"invalid recent {recent[:20]!r}: use a number of events from 0 "
                             f"to {MAX_RECENT}, e.g. recent=20")
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":
        return Response(media_type="text/event-stream", headers=headers)
    return StreamingResponse(Stream(live, hosts, cursor, view == "1", int(recent)),
                             media_type="text/event-stream", headers=headers)
