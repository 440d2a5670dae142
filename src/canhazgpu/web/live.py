"""The live side of the web server: one feed per host, fanned out to every SSE client.

A host's feed subscribes to its events first, then reads its state, and after every event
reads it again: the status document (`status --json`) and the queue rows, computed once
per change however many pages are open. Events go out in sequence order with no
duplicates; after a reconnection to Redis the feed replays what it missed from the host's
event stream, or says `resync` when it cannot.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property

import anyio
from redis.exceptions import RedisError

from .. import render
from ..errors import CanHazGpuError
from ..events import Disconnected, Event, EventHub, Message, Resync
from ..model import seen_by
from .adapters import daemon_up, events_since, queue_rows
from .hosts import Hosts

log = logging.getLogger("canhazgpu.web")

REFRESH_S = 30.0  # without a daemon, GPU usage changes are no events: re-read this often
CLIENT_BUFFER = 1000  # items a client may fall behind before it is dropped (it reconnects)


@dataclass(frozen=True)
class HostState:
    """What the page shows of one host, read at one instant (or the error that stopped it)."""

    host: str
    status: dict | None = None  # the `status --json` document
    queue: list | None = None  # `queue --json` rows
    daemon: bool | None = None
    error: str | None = None  # set while the host cannot be read; status is then the last known

    def doc(self) -> dict:
        return {"host": self.host, "status": self.status, "queue": self.queue,
                "daemon": self.daemon, "error": self.error}


async def read_host(hosts: Hosts, host: str) -> HostState:
    """One host's state now; an unreachable or broken host gives its error, never raises."""
    core = hosts.core(host)
    try:
        view = seen_by(await core.view(), None)  # a page for everyone: no command lines
        return HostState(host, render.render_json(view), queue_rows(view),
                         await daemon_up(core.store))
    except (CanHazGpuError, RedisError) as err:
        return HostState(host, error=str(err))
    except Exception:  # a bug must not take the page down for every host: log it, show it
        log.exception("reading host %s", host)
        return HostState(host, error="internal error reading this host: see the server's log")


async def read_all(hosts: Hosts, names: list[str]) -> list[HostState]:
    """Every named host's state, read side by side."""
    found: dict[str, HostState] = {}

    async def read(host: str) -> None:
        found[host] = await read_host(hosts, host)

    async with anyio.create_task_group() as tg:
        for host in names:
            tg.start_soon(read, host)
    return [found[h] for h in names]


@dataclass(frozen=True)
class Item:
    """What a feed sends its clients: kind 'event' (data: Event), 'state' (HostState) or
    'resync' (events of `host` may have been missed; data: the sequence number to go on
    from)."""

    kind: str
    host: str
    data: object = None

    @cached_property
    def json(self) -> str:
        """The event's or the state's document as JSON, made once for every client."""
        doc = self.data.data if self.kind == "event" else self.data.doc()
        return json.dumps(doc, separators=(",", ":"))


class Live:
    """Every host's feed, the latest state of each, and the clients listening."""

    def __init__(self, hosts: Hosts, on_event=None) -> None:
        self.hosts = hosts
        self.on_event = on_event or (lambda event: None)  # e.g. the metrics' counters
        self.states: dict[str, HostState] = {}
        self.seqs: dict[str, int] = {}  # the last event sequence number sent, per host
        self._clients: set = set()
        self._closed = False

    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        """Follow every host until cancelled."""
        async with anyio.create_task_group() as tg:
            for host in await self.hosts.names():
                self.states[host] = HostState(host)
                await tg.start(HostFeed(self, host).run)
            task_status.started()

    def state(self, host: str) -> HostState:
        return self.states.get(host) or HostState(host)

    @contextmanager
    def subscribe(self):
        """A stream of every Item from now on (call this before reading `states`/`seqs`)."""
        send, receive = anyio.create_memory_object_stream(CLIENT_BUFFER)
        self._clients.add(send)
        if self._closed:
            send.close()
        try:
            with receive:
                yield receive
        finally:
            self._clients.discard(send)
            send.close()

    def close(self) -> None:
        """End every client's stream (the server is shutting down)."""
        self._closed = True
        for send in list(self._clients):
            send.close()
        self._clients.clear()

    @property
    def clients(self) -> int:
        return len(self._clients)

    def publish(self, item: Item) -> None:
        if item.kind == "state":
            self.states[item.host] = item.data
        for send in list(self._clients):
            try:
                send.send_nowait(item)
            except anyio.WouldBlock:
                # Too slow to keep up: end its stream; it reconnects and replays (Last-Event-ID).
                self._clients.discard(send)
                send.close()


class HostFeed:
    """One host: its subscription, its state after every change, its events in order."""

    def __init__(self, live: Live, host: str) -> None:
        self.live = live
        self.host = host
        self.core = live.hosts.core(host)
        self.dirty = anyio.Event()

    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        store = self.core.store
        hub = EventHub(store, (store.expired_channel,))
        async with hub.running(), hub.listen() as stream, anyio.create_task_group() as tg:
            # subscribed (or Redis down): the first read, so that pages open on real data
            self.live.publish(Item("state", self.host, await read_host(self.live.hosts,
                                                                       self.host)))
            tg.start_soon(self._refresher)
            task_status.started()
            async for item in stream:
                if isinstance(item, Event):
                    self._send(item)
                elif isinstance(item, Message):
                    # A lease ran out: the reservation is over even before anyone finalizes it.
                    if store.gpu_of_lease_key(item.data) is not None:
                        self.dirty.set()
                elif isinstance(item, Resync):
                    await self._catch_up()
                elif isinstance(item, Disconnected):
                    state = self.live.state(self.host)
                    if state.error != item.error:
                        self.live.publish(Item("state", self.host,
                                               replace(state, error=item.error)))

    def _send(self, event: Event) -> None:
        sent = self.live.seqs.get(self.host)
        if sent is not None and event.seq <= sent:
            return  # replayed already, or older than where we started
        self.live.seqs[self.host] = event.seq
        self.live.on_event(event)
        self.live.publish(Item("event", self.host, event))
        self.dirty.set()

    async def _catch_up(self) -> None:
        """(Re)subscribed: send what was missed since the last event sent, or say resync."""
        store, seqs = self.core.store, self.live.seqs
        try:
            latest = await store.last_seq()
            sent = seqs.get(self.host)
            if sent is not None and sent != latest:
                missed = [e for e in await events_since(store, sent) if e.seq <= latest] \
                    if sent < latest else []  # sent > latest: Redis lost its data
                for event in missed:
                    self._send(event)
                if not missed or missed[0].seq != sent + 1:
                    seqs[self.host] = latest
                    self.live.publish(Item("resync", self.host, latest))
            seqs[self.host] = latest
        except (CanHazGpuError, RedisError) as err:
            log.warning("%s: %s", self.host, err)
        self.dirty.set()

    async def _refresher(self) -> None:
        """Re-read the state after changes (bursts coalesce into one read), and every
        REFRESH_S for what changes without events."""
        while True:
            with anyio.move_on_after(REFRESH_S):
                await self.dirty.wait()
            self.dirty = anyio.Event()
            state = await read_host(self.live.hosts, self.host)
            known = self.live.state(self.host)
            if state.error is not None and known.status is not None:
                # keep showing the last known state, marked with the error
                state = replace(known, error=state.error)
            self.live.publish(Item("state", self.host, state))
