"""Waiting in the FIFO queue until GPUs are granted, woken by events (never by polling).

Subscribe first, then enqueue, then wait: an event published between the two cannot be
missed, and after every reconnect the waiter re-reads where it stands. Reports progress
through a callback; never prints.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio

from .errors import (BackendUnavailable, CanHazGpuError, Interrupted,  # noqa: F401 (theirs)
                     LostPlace, WaitTimedOut)
from .events import Disconnected, Event, EventHub, Message, Resync
from .identity import Caller
from .model import PoolView
from .request import QueueStatus, Request, Reservation

if TYPE_CHECKING:
    from .core import Core

WAKING = ("released", "expired", "reclaimed", "forced", "left", "granted", "unreserved_cleared")


LEFT = {  # why a waiter was taken out of the queue by someone else
    "pool_changed": "the pool was resized and can no longer meet this request; left the queue",
    "expired": "our place in the queue expired (no heartbeat in time): run the command again",
    None: "taken out of the queue: run the command again",
}


@dataclass(frozen=True)
class Progress:
    """What a waiter shows: its place, what it holds so far, and a guess of when."""

    status: QueueStatus
    want: int
    eta_s: float | None  # when enough GPUs should be free, from manual expiry times


@dataclass
class Waiter:
    core: Core
    req: Request
    caller: Caller
    progress: Callable[[Progress], None] | None = None  # None: quiet, no estimates made
    warn: Callable[[str], None] = lambda s: None
    position: int = 0
    trouble: bool = False  # Redis unreachable: said once, until it is back
    signals: bool = True  # SIGINT/SIGTERM end the wait (False in the daemon: not ours)
    reservation: Reservation | None = None  # made by the caller (None: made here)
    resume: bool = False  # the reservation is queued already: follow it, do not enqueue
    on_queued: Callable[[], None] | None = None  # told once the request is in the queue

    async def wait(self, timeout_s: float | None = None) -> Reservation:
        """Queue for the request; return the granted reservation (leases on the queue TTL).

        Errors come out of the waiter's task group as raised there (Core.acquire is the
        edge that unwraps them); whatever ends the wait without a grant gives the place
        back, and any GPUs granted so far with it."""
        res = self.reservation or self.core.new_reservation(self.req, self.caller)
        self.wid, self.granted, enqueued, timed_out = res.rid, None, False, False
        try:
            async with self._events(res.rid) as stream:
                status = await (self.core.queue_heartbeat(res.rid) if self.resume
                                else self.core.enqueue(res, self.req,
                                                       self.core.gpu_limit(self.caller)))
                enqueued = True
                if self.on_queued is not None:
                    self.on_queued()
                with anyio.move_on_after(timeout_s) as deadline:
                    async with anyio.create_task_group() as tg:
                        self.tg = tg
                        await self._update(status)
                        tg.start_soon(self._heartbeat if self.core.beats is None
                                      else self._beaten)
                        if self.signals:
                            tg.start_soon(self._signals)
                        await self._follow(stream)
                timed_out = deadline.cancelled_caught and self.granted is None
            if timed_out:
                raise WaitTimedOut(f"gave up waiting after {timeout_s:g}s; left the queue")
        finally:
            if enqueued and self.granted is None:
                with anyio.CancelScope(shield=True):
                    await self._leave("timeout" if timed_out else "cancelled")
        return replace(res, gpus=tuple(sorted(self.granted)))

    @asynccontextmanager
    async def _events(self, wid: str):
        """What the waiter hears: its own grant or departure, and lease expiry; with
        progress shown, every change on the host. A quiet waiter must not wake up for every
        change, and in the daemon a thousand waiters share its one subscription."""
        store, shared = self.core.store, self.core.hub
        if shared is not None:
            routes = None if self.progress is not None else (wid, store.expired_channel)
            async with shared.listen(routes=routes) as stream:
                yield stream
            return
        hub = EventHub(store, (store.waiter_channel(wid), store.expired_channel),
                       host_events=self.progress is not None)
        async with hub.running(), hub.listen() as stream:
            yield stream

    def _grant(self, gpus) -> None:
        self.granted = tuple(gpus)
        self.tg.cancel_scope.cancel()

    async def _update(self, st: QueueStatus | None) -> None:
        if st is None:
            raise LostPlace("lost our place in the queue (Redis lost its data or our "
                            "entry expired): run the command again")
        if st.done:
            self._grant(st.gpus)
            return
        self.position = st.position
        if self.progress is not None:
            self.progress(await estimate(self.core, st, self.req.size, self.wid))

    async def _refresh(self) -> None:
        """Where we stand now: asked for at once, or (in the daemon) with the next beat of
        all its waiters."""
        if self.core.beats is not None:
            self.core.beats.soon()
            return
        try:
            status = await self.core.queue_heartbeat(self.wid)
        except BackendUnavailable as err:
            self._trouble(str(err))
            return
        await self._beat(status)

    async def _beat(self, status: QueueStatus | None) -> None:
        if self.trouble:
            self.warn("Redis is reachable again; still in the queue")
            self.trouble = False
        await self._update(status)

    async def _moved(self) -> None:
        """Progress after a change on the host: our place read from the pool's view,
        which the daemon reads once per event for all its waiters."""
        if self.core.beats is None:
            await self._refresh()
            return
        try:
            view = await shared_view(self.core)
        except CanHazGpuError:
            return  # the next beat tells
        for pos, w in enumerate(view.queue, 1):
            if w.wid == self.wid:
                await self._update(QueueStatus(pos, w.granted, False, len(view.queue)))
                return

    def _trouble(self, text: str) -> None:
        if not self.trouble:
            self.warn(f"{text}; still waiting")
        self.trouble = True

    async def _heartbeat(self) -> None:
        interval = self.core.config.seconds("queue_lease") / 3
        while True:
            await anyio.sleep(interval)
            await self._refresh()

    async def _beaten(self) -> None:
        """The daemon's waiters are renewed together (QueueBeats): ours is one of them."""
        send, receive = anyio.create_memory_object_stream(1)

        def deliver(status) -> None:
            with suppress(anyio.WouldBlock):  # one waits already: the next beat is as good
                send.send_nowait(status)
        with self.core.beats.beating(self.wid, deliver):
            async for status in receive:
                if isinstance(status, BackendUnavailable):
                    self._trouble(str(status))
                elif isinstance(status, CanHazGpuError):
                    raise status
                else:
                    await self._beat(status)

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                raise Interrupted(signum)

    async def _follow(self, stream) -> None:
        async for item in stream:
            if isinstance(item, Event):
                if item.rid == self.wid and item.type == "granted" and item.data.get("complete"):
                    self._grant(item.gpus)
                elif item.rid == self.wid and item.type == "left":
                    raise LostPlace(LEFT.get(item.data.get("reason"), LEFT[None]))
                elif item.type in WAKING and self.progress is not None:
                    await self._moved()  # our position or estimate may have changed
            elif isinstance(item, Message):
                # A lease ran out and maybe no daemon is running: the head finalizes it,
                # which grants the queue. Grants themselves arrive as events.
                if self.position == 1 and self.core.store.gpu_of_lease_key(item.data) is not None:
                    try:
                        await self.core.sweep()
                    except BackendUnavailable as err:
                        self._trouble(str(err))
            elif isinstance(item, Resync) and item.reconnected:
                await self._refresh()
            elif isinstance(item, Disconnected):
                self._trouble(item.error)

    async def _leave(self, reason: str) -> None:
        try:
            with anyio.move_on_after(5):
                await self.core.leave(self.wid, reason)
        except CanHazGpuError:
            pass  # our entry and any partial grant expire with the queue lease anyway


class QueueBeats:
    """The heartbeats of every waiter of a process that has many (the daemon's): one
    script each interval renews them all, and each waiter is told where it stands. A
    thousand waiters cost one script per interval, not a thousand."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.waiters: dict[str, Callable] = {}  # wid -> deliver(status | None | error)
        self._soon = anyio.Event()

    @contextmanager
    def beating(self, wid: str, deliver: Callable) -> Iterator[None]:
        self.waiters[wid] = deliver
        try:
            yield
        finally:
            self.waiters.pop(wid, None)

    def soon(self) -> None:
        """Beat now rather than at the end of the interval (a waiter must re-read)."""
        self._soon.set()

    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        interval = self.core.config.seconds("queue_lease") / 3
        task_status.started()
        while True:
            with anyio.move_on_after(interval):
                await self._soon.wait()
            self._soon = anyio.Event()
            wids = list(self.waiters)
            if not wids:
                continue
            try:
                found = await self.core.queue_heartbeats(wids)
            except CanHazGpuError as err:  # each waiter decides what it means for it
                found = dict.fromkeys(wids, err)
            for wid in wids:
                deliver = self.waiters.get(wid)
                if deliver is not None:
                    deliver(found.get(wid))


async def estimate(core: Core, st: QueueStatus, want: int, wid: str) -> Progress:
    """Progress with a guess of when; no guess when the state cannot be read right now."""
    try:
        view = await shared_view(core)
    except CanHazGpuError:
        return Progress(st, want, None)
    eta = eta_ms(view, wid)
    return Progress(st, want, None if eta is None else max(0.0, (eta - view.now_ms) / 1000))


async def shared_view(core: Core) -> PoolView:
    """The pool's view; in the daemon one read per event, shared by every waiter that the
    event woke (a thousand waiters showing progress cost one read, not a thousand)."""
    hub = core.hub
    if hub is None:
        return await core.view()
    memo = hub.memo
    if memo is None or memo[0] != hub.generation:
        memo = hub.memo = [hub.generation, anyio.Event(), None]
        try:
            memo[2] = await core.view()
        except CanHazGpuError as err:
            memo[2] = err
            raise
        finally:
            memo[1].set()
    await memo[1].wait()
    if isinstance(memo[2], CanHazGpuError):
        raise memo[2]
    return memo[2] if memo[2] is not None else await core.view()


def eta_ms(view: PoolView, wid: str) -> int | None:
    """When waiter `wid` should have its GPUs: the waiters ahead take, in order, the GPUs
    they can use as they come free (manual reservations end at their expiry; a run, a
    reservation made by a grant, unreserved use or an error: unknown). Only GPUs the
    request can actually get count. None when that cannot be told."""
    never = float("inf")
    free_at = {}
    for g in view.gpus:
        if g.available:
            free_at[g.gpu] = view.now_ms
        elif g.hold is not None and g.hold.kind == "manual" and g.hold.expires_ms \
                and not g.hold.waiting:
            free_at[g.gpu] = g.hold.expires_ms
        else:
            free_at[g.gpu] = never
    for w in view.queue:
        usable = sorted((t, i) for i, t in free_at.items()
                        if w.ids is None or i in w.ids)
        need = w.want - len(w.granted)
        if need > len(usable) or (need > 0 and usable[need - 1][0] == never):
            return None
        done = max([t for t, _ in usable[:need]], default=view.now_ms)
        if w.wid == wid:
            return int(done)
        for _, i in usable[:need]:
            free_at[i] = never  # becomes that waiter's reservation: no known end
    return None
