"""Waiting in the FIFO queue until GPUs are granted, woken by events (never by polling).

Subscribe first, then enqueue, then wait: an event published between the two cannot be
missed, and after every reconnect the waiter re-reads where it stands. Reports progress
through a callback; never prints.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, replace

import anyio

from .core import Core
from .request import QueueStatus, Request, Reservation
from .errors import BackendUnavailable, CanHazGpuError
from .events import Disconnected, Event, EventHub, Message, Resync
from .identity import Caller

WAKING = ("released", "expired", "reclaimed", "forced", "left", "granted", "unreserved_cleared")


LEFT = {  # why a waiter was taken out of the queue by someone else
    "pool_changed": "the pool was resized and can no longer meet this request; left the queue",
    "expired": "our place in the queue expired (no heartbeat in time): run the command again",
    None: "taken out of the queue: run the command again",
}


class WaitTimedOut(CanHazGpuError):
    """Gave up waiting (--timeout / --wait D); the place in the queue was given back."""


class LostPlace(CanHazGpuError):
    """The queue entry vanished (Redis lost its data, or the entry expired)."""


class Interrupted(CanHazGpuError):
    """Ctrl+C or SIGTERM while waiting; the place in the queue was given back."""

    def __init__(self, signum: int) -> None:
        super().__init__("stopped waiting; left the queue")
        self.exit_code = 128 + signum


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

    async def wait(self, timeout_s: float | None = None) -> Reservation:
        """Queue for the request; return the granted reservation (leases on the queue TTL)."""
        store = self.core.store
        res = self.core.new_reservation(self.req, self.caller)
        # A quiet waiter listens only to its own channel (its grant) and to lease expiry:
        # a hundred waiters must not all wake up for every change on the host.
        hub = EventHub(store, (f"{store.channel}:{res.rid}", store.expired_channel),
                       host_events=self.progress is not None)
        async with hub.running(), hub.listen() as stream:
            status = await self.core.enqueue(res, self.req)
            self.wid, self.outcome = res.rid, None
            try:
                with anyio.move_on_after(timeout_s) as deadline:
                    async with anyio.create_task_group() as tg:
                        self.tg = tg
                        await self._update(status)
                        tg.start_soon(self._heartbeat)
                        tg.start_soon(self._signals)
                        await self._follow(stream)
                if deadline.cancelled_caught and self.outcome is None:
                    self.outcome = WaitTimedOut(
                        f"gave up waiting after {timeout_s:g}s; left the queue")
            finally:
                if not isinstance(self.outcome, QueueStatus):
                    with anyio.CancelScope(shield=True):
                        await self._leave()
        # raised outside the hub's task group, so callers see it unwrapped
        if not isinstance(self.outcome, QueueStatus):
            raise self.outcome
        return replace(res, gpus=tuple(sorted(self.outcome.gpus)))

    def _stop(self, outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
        self.tg.cancel_scope.cancel()

    async def _update(self, st: QueueStatus | None) -> None:
        if st is None:
            self._stop(LostPlace("lost our place in the queue (Redis lost its data or our "
                                 "entry expired): run the command again"))
        elif st.done:
            self._stop(st)
        else:
            self.position = st.position
            if self.progress is not None:
                self.progress(await estimate(self.core, st, self.req.size))

    async def _refresh(self) -> None:
        try:
            status = await self.core.queue_heartbeat(self.wid)
        except BackendUnavailable as err:
            self._trouble(str(err))
            return
        if self.trouble:
            self.warn("Redis is reachable again; still in the queue")
            self.trouble = False
        await self._update(status)

    def _trouble(self, text: str) -> None:
        if not self.trouble:
            self.warn(f"{text}; still waiting")
        self.trouble = True

    async def _heartbeat(self) -> None:
        interval = self.core.config.seconds("queue_lease") / 3
        while True:
            await anyio.sleep(interval)
            await self._refresh()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self._stop(Interrupted(signum))

    async def _follow(self, stream) -> None:
        async for item in stream:
            if isinstance(item, Event):
                if item.rid == self.wid and item.type == "granted" and item.data.get("complete"):
                    self._stop(QueueStatus(0, item.gpus, True, 0))
                elif item.rid == self.wid and item.type == "left":
                    self._stop(LostPlace(LEFT.get(item.data.get("reason"), LEFT[None])))
                elif item.type in WAKING and self.progress is not None:
                    await self._refresh()  # our position or estimate may have changed
            elif isinstance(item, Message):
                # A lease ran out and maybe no daemon is running: the head finalizes it,
                # which grants the queue. Grants themselves arrive as events.
                if self.position == 1 and self.core.store.gpu_of_lease_key(item.data) is not None:
                    await self.core.sweep()
            elif isinstance(item, Resync) and item.reconnected:
                await self._refresh()
            elif isinstance(item, Disconnected):
                self._trouble(item.error)

    async def _leave(self) -> None:
        reason = "timeout" if isinstance(self.outcome, WaitTimedOut) else "cancelled"
        try:
            with anyio.move_on_after(5):
                await self.core.leave(self.wid, reason)
        except CanHazGpuError:
            pass  # our entry and any partial grant expire with the queue lease anyway


async def estimate(core: Core, st: QueueStatus, want: int) -> Progress:
    """Estimate when `want` GPUs could be ours, from the manual reservations' expiry times."""
    view = await core.view()
    free = sum(1 for g in view.gpus if g.available)
    need = want - len(st.gpus)
    expiries = sorted(g.hold.expires_ms for g in view.gpus
                      if g.hold is not None and g.hold.expires_ms and not g.hold.waiting)
    eta = None
    if st.position <= 1 and need > 0:
        if free >= need:
            eta = 0.0
        elif len(expiries) >= need - free:
            eta = max(0.0, (expiries[need - free - 1] - view.now_ms) / 1000)
    return Progress(st, want, eta)
