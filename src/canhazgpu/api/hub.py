"""The host's events through the daemon, as an EventHub gives them (Event, Resync,
Disconnected): for `canhazgpu events` and `status --follow` in daemon mode. A daemon that
goes away is a Disconnected, and the hub connects again until it is back."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import anyio

from ..errors import CanHazGpuError
from ..events import Disconnected, Event, Resync

RETRY_S = (0.05, 2.0)  # first and longest wait before connecting again


class RemoteHub:
    """EventHub's interface (running, listen) over the daemon's `events` operation."""

    def __init__(self, remote) -> None:
        self.remote = remote
        self._receivers: set = set()
        self.connected = anyio.Event()
        self._subscribed_before = False
        self._task_status = anyio.TASK_STATUS_IGNORED
        self._started = False
        self._delay = RETRY_S[0]
        # what came before the first listener (lines already read arrive in one go)
        self._early: list | None = []

    @asynccontextmanager
    async def running(self):
        async with anyio.create_task_group() as tg:
            await tg.start(self._pump)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    @asynccontextmanager
    async def listen(self, buffer: float = 1000):
        send, receive = anyio.create_memory_object_stream(buffer)
        self._receivers.add(send)
        if self.connected.is_set():
            send.send_nowait(Resync(reconnected=False))
        for item in self._early or ():
            send.send_nowait(item)
        self._early = None
        try:
            async with receive:
                yield receive
        finally:
            self._receivers.discard(send)
            send.close()

    def _fan_out(self, item) -> None:
        if self._early is not None:
            self._early.append(item)
        for send in list(self._receivers):
            try:
                send.send_nowait(item)
            except anyio.WouldBlock:
                pass  # a receiver that far behind re-reads the state at the next Resync
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._receivers.discard(send)

    def _line(self, doc: dict) -> None:
        if "event" in doc and doc["event"] is None:  # subscribed
            self.connected.set()
            self._fan_out(Resync(reconnected=self._subscribed_before))
            self._subscribed_before, self._delay = True, RETRY_S[0]
            self._mark_started()
        elif "event" in doc:
            event = Event.decode(json.dumps(doc["event"]))
            if event is not None:
                self._fan_out(event)
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
