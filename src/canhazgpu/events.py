"""Events: their types, decoding, and the one pub/sub subscription per process.

Every state-change script PUBLISHes its event on the host's channel, so an event is never
lost or reordered relative to the state it describes. Pub/sub is fire-and-forget: a
subscriber that reconnects may have missed events, so the hub tells its receivers
(`Resync`) and they re-read the state: once Redis has confirmed every channel of a
(re)subscription, and when a receiver's buffer overflowed.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import anyio

from .errors import BackendUnavailable

log = logging.getLogger("canhazgpu.events")

VERSION = 1
KEEPALIVE_S = 15.0  # ping an idle subscription this often; twice that silent = reconnect
FOLLOW_SLOT_S = 1.0  # on a cluster: look this often whether the host's slot moved
TYPES = (
    # reservations (published by the Lua scripts)
    "reserved", "released", "expired", "reclaimed", "forced", "pool_changed", "owner",
    # the queue
    "queued", "granted", "left",
    # detached jobs (canhazgpu submit, docs/jobs.md)
    "job_submitted", "job_started", "job_ended",
    # GPU truth (published by the daemon's scanner)
    "unreserved_detected", "unreserved_cleared", "usage_changed", "gpu_error", "gpu_recovered",
    # reservations as the scanner sees them (idle.py): use it or lose it, expiry, intruders
    "idle_warning", "expiring", "foreign_use",
)


@dataclass(frozen=True)
class Event:
    type: str
    seq: int
    time_ms: int
    host: str
    gpus: tuple[int, ...] = ()
    rid: str | None = None
    user: str | None = None
    data: dict = field(default_factory=dict)  # the whole decoded document

    @classmethod
    def decode(cls, raw: str | bytes) -> Event | None:
        """Parse one published message; None for anything that is not a valid event."""
        try:
            doc = json.loads(raw)
            gpus = doc.get("gpus") or []
            return cls(type=str(doc["type"]), seq=int(doc["seq"]), time_ms=int(doc["time_ms"]),
                       host=str(doc.get("host", "")),
                       gpus=tuple(int(g) for g in (gpus if isinstance(gpus, list) else [])),
                       rid=doc.get("rid"), user=doc.get("user"), data=doc)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass(frozen=True)
class Resync:
    """The subscription was (re)established: events may have been missed; re-read state."""

    reconnected: bool


@dataclass(frozen=True)
class Disconnected:
    """The subscription is down; the hub keeps trying."""

    error: str


@dataclass(frozen=True)
class Message:
    """A message on an extra channel (e.g. keyspace notifications)."""

    channel: str
    data: str


class EventHub:
    """One pub/sub connection, fanned out to any number of in-process receivers.

    On a Redis Cluster it subscribes on the node serving the host's slot (a PUBLISH reaches
    every node, keyspace notifications only the slot's own), and moves with the slot.
    `patterns` (e.g. store.ALL_HOSTS_EVENTS) bring other hosts' events too."""

    def __init__(self, store, extra_channels: tuple[str, ...] = (), *,
                 host_events: bool = True, patterns: tuple[str, ...] = ()) -> None:
        self.store = store
        self.channels = ((store.channel,) if host_events else ()) + tuple(extra_channels)
        self.patterns = tuple(patterns)
        self._receivers: set = set()  # every receiver: each gets Resync and Disconnected
        self._wide: set = set()  # receivers of every item
        self._routes: dict[str, set] = {}  # rid or channel -> the receivers routed by it
        self._lagging: set = set()
        self._wants: dict = {}  # receiver -> the predicate its events and messages pass
        self._observers: list = []  # called with every item, in the pump's own step
        self.connected = anyio.Event()
        self.generation = 0  # events seen: what a reader may cache a state read against
        self.memo = None  # (generation, ready, value): a read shared by this hub's readers

    @asynccontextmanager
    async def running(self):
        async with anyio.create_task_group() as tg:
            await tg.start(self._pump)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    @asynccontextmanager
    async def listen(self, buffer: float = 1000, *, routes: tuple[str, ...] | None = None,
                     wants=None):
        """A stream of Event | Resync | Disconnected | Message, from now on.

        `routes` (reservation ids and channels) narrows it to the events of those
        reservations and the messages of those channels (Resync and Disconnected always
        come): a thousand waiters on one hub cost a dictionary look-up per event, not a
        thousand wake-ups. `wants(item)` narrows it further, called as each event or
        message arrives: a receiver that needs few of them is not woken for the rest."""
        send, receive = anyio.create_memory_object_stream(buffer)
        self._receivers.add(send)
        if wants is not None:
            self._wants[send] = wants
        keys = tuple(dict.fromkeys(routes)) if routes is not None else ()
        if routes is None:
            self._wide.add(send)
        for key in keys:
            self._routes.setdefault(key, set()).add(send)
        if self.connected.is_set():
            send.send_nowait(Resync(reconnected=False))
        try:
            async with receive:
                yield receive
        finally:
            self._drop(send, keys)
            send.close()

    @contextmanager
    def observing(self, observe):
        """observe(item) is called with every item from now on, within the pump's own
        step, for as long as the block runs: for a receiver that only records (the
        daemon's journal), without a task to wake per event. It must not block; what it
        raises is logged, and the hub goes on."""
        self._observers.append(observe)
        try:
            yield
        finally:
            self._observers.remove(observe)

    def _drop(self, send, keys=None) -> None:
        self._receivers.discard(send)
        self._wide.discard(send)
        self._wants.pop(send, None)
        self._lagging.discard(send)
        for key in (keys if keys is not None else list(self._routes)):
            routed = self._routes.get(key)
            if routed is not None:
                routed.discard(send)
                if not routed:
                    del self._routes[key]

    def _fan_out(self, item, route: str | None = None) -> None:
        """Send `item` to its receivers: all of them for Resync and Disconnected, else the
        wide ones and those routed by `route` (an event's rid, a message's channel)."""
        for observe in self._observers:
            try:
                observe(item)
            except Exception:  # a bug: logged; the hub and the other receivers go on
                log.exception("an observer of the events failed")
        if isinstance(item, (Resync, Disconnected)):
            targets = list(self._receivers)
        else:
            targets = list(self._wide)
            if route is not None and route in self._routes:
                targets += self._routes[route]
            if self._wants:
                targets = [t for t in targets if self._wanted(t, item)]
        for send in targets:
            try:
                if send in self._lagging:
                    # It missed items while its buffer was full: it must re-read first.
                    send.send_nowait(Resync(reconnected=True))
                    self._lagging.discard(send)
                    try:
                        send.send_nowait(item)
                    except anyio.WouldBlock:
                        pass  # the Resync queued just ahead of it covers it
                else:
                    send.send_nowait(item)
            except anyio.WouldBlock:
                self._lagging.add(send)  # a slow receiver must not stall the others
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._drop(send)

    def _wanted(self, send, item) -> bool:
        wants = self._wants.get(send)
        if wants is None:
            return True
        try:
            return wants(item)
        except Exception:  # a bug: logged; the receiver gets the item, the hub goes on
            log.exception("a receiver's wants() failed")
            return True

    async def _pump(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        from redis import exceptions as rexc  # here: through the daemon, no redis-py at all
        delay, started, subscribed_before = 0.05, False, False
        channels = tuple(dict.fromkeys(self.channels))
        wait_s = FOLLOW_SLOT_S if self.store.cluster else KEEPALIVE_S
        while True:
            pubsub = None
            try:
                pubsub = await self.store.subscription()
                node = await self.store.node_name()
                if channels:
                    await pubsub.subscribe(*channels)
                if self.patterns:
                    await pubsub.psubscribe(*self.patterns)
                last_heard = anyio.current_time()
                while True:
                    msg = await pubsub.get_message(timeout=wait_s)
                    now = anyio.current_time()
                    if node != await self.store.node_name():
                        raise rexc.ConnectionError("the host's cluster slot moved")
                    if msg is None:
                        if now - last_heard >= 2 * KEEPALIVE_S:
                            raise rexc.ConnectionError(
                                f"no reply from Redis for {2 * KEEPALIVE_S:g}s")
                        if now - last_heard >= KEEPALIVE_S:
                            await pubsub.ping()  # a dead link otherwise blocks us forever
                        continue
                    last_heard = now
                    kind = msg.get("type")
                    if kind in ("subscribe", "psubscribe"):
                        # redis-py re-subscribes by itself after a short drop; either way,
                        # the subscription is live only once Redis confirms every channel,
                        # and whatever was published before that is lost to us.
                        if int(msg["data"]) == len(channels) + len(self.patterns):
                            self.connected.set()
                            self._fan_out(Resync(reconnected=subscribed_before))
                            subscribed_before, delay = True, 0.05
                            if not started:
                                task_status.started()
                                started = True
                    elif kind in ("message", "pmessage"):
                        self._dispatch(msg["channel"], msg["data"])
            except (rexc.ConnectionError, rexc.TimeoutError, OSError, BackendUnavailable) as err:
                await self.store.forget_node()
                self.connected = anyio.Event()
                self._fan_out(Disconnected(str(err) if isinstance(err, BackendUnavailable)
                                           else self.store.unreachable(err)))
                if not started:
                    task_status.started()
                    started = True
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        if pubsub is not None:
                            await pubsub.aclose()
                    except Exception:  # a dead connection may fail to close; it is gone anyway
                        pass

    def _dispatch(self, channel: str, data: str) -> None:
        if channel.startswith(self.store.channel) or fnmatch.fnmatchcase(
                channel, self.patterns[0] if self.patterns else ""):  # a host's, a waiter's
            event = Event.decode(data)
            if event is not None:
                self.generation += 1
                self._fan_out(event, event.rid)
        else:
            self._fan_out(Message(channel, data), channel)
