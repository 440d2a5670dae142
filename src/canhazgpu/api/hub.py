"""The host's events through the daemon, as an EventHub gives them (Event, Resync,
Disconnected): for `canhazgpu events` and `status --follow` in daemon mode. A daemon that
goes away is a Disconnected, and the hub connects again until it is back."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import anyio

from ..errors import CanHazGpuError
from ..events import Disconnected, Event, EventHub, Resync

RETRY_S = (0.05, 2.0)  # first and longest wait before connecting again


class RemoteHub(EventHub):
    """EventHub's receivers (running, listen) fed by the daemon's `events` operation
    instead of a Redis subscription of our own."""

    def __init__(self, remote) -> None:
        super().__init__(remote.store, host_events=False)
        self.remote = remote
        self._subscribed_before = False
        self._task_status = anyio.TASK_STATUS_IGNORED
        self._started = False
        self._delay = RETRY_S[0]
        # Items before the first listener: reply lines already read are handled in one go,
        # before the task that started us has listened.
        self._early: list | None = []

    @asynccontextmanager
    async def listen(self, buffer: float = 1000):
        async with super().listen(buffer) as receive:
            early, self._early = self._early or [], None
            for item, route in early:
                self._fan_out(item, route)
            yield receive

    def _fan_out(self, item, route: str | None = None) -> None:
        if self._early is not None:
            self._early.append((item, route))
        else:
            super()._fan_out(item, route)

    def _line(self, doc: dict) -> None:
        if "event" in doc and doc["event"] is None:  # subscribed
            self.connected.set()
            self._fan_out(Resync(reconnected=self._subscribed_before))
            self._subscribed_before, self._delay = True, RETRY_S[0]
            self._mark_started()
        elif "event" in doc:
            event = Event.decode(json.dumps(doc["event"]))
            if event is not None:
                self._fan_out(event, event.rid)
        elif "warn" in doc:
            self._fan_out(Disconnected(str(doc["warn"])))
        elif doc.get("resync"):
            self._fan_out(Resync(reconnected=True))

    def _mark_started(self) -> None:
        if not self._started:
            self._started = True
            self._task_status.started()

    async def _pump(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        self._task_status = task_status
        while True:
            try:
                await self.remote.call("events", on_line=self._line)
            except CanHazGpuError as err:
                self.connected = anyio.Event()
                self._fan_out(Disconnected(str(err)))
                self._mark_started()
            await anyio.sleep(self._delay)  # back-off before connecting again
            self._delay = min(self._delay * 2, RETRY_S[1])
