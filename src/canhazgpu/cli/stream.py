"""The host's event stream in a terminal or a pipe: `canhazgpu events` and `status --follow`.

Both subscribe first and read second, are woken by events only (no polling), say on stderr
when Redis goes away and when it is back, and end cleanly on Ctrl+C or SIGTERM. Imported
only by those commands, so other commands do not pay for it at start-up.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import time

import anyio

from .. import render
from ..errors import BackendUnavailable
from ..events import Disconnected, Event, EventHub, Resync
from ..render import line
from ..render.tables import cut
from . import output
from .lifetime import ReaderGone, until_signalled, write_line

CLOCK_REFRESH_S = 30.0  # a terminal's durations tick on; state changes come as events
_ANSI = re.compile(r"\033\[[0-9;]*[A-Za-z]")


class Consumer:
    """Subscribed to the host's events; subclasses say what to do with each."""

    idle_s: float | None = None  # call tick() after this long without an event

    def __init__(self, state) -> None:
        self.state = state
        self.down = False

    def hub(self):
        return self.state.event_hub()  # the daemon's, or our own subscription to Redis

    async def run(self) -> None:
        hub = self.hub()
        async with hub.running(), hub.listen() as items:
            try:
                await self.start()
                await self._loop(items)
            except ReaderGone:
                pass

    async def _loop(self, items) -> None:
        while True:
            item = None
            with anyio.move_on_after(self.idle_s):
                item = await items.receive()
            if item is None:
                await self.tick()
            elif isinstance(item, Event):
                if await self.on_event(item):
                    return
            elif isinstance(item, Disconnected):
                self.lost(item.error)
            elif isinstance(item, Resync) and item.reconnected:
                if self.down:
                    self.note("Redis is reachable again (changes made meanwhile were not seen "
                              "as events)")
                self.down = False
                await self.on_resync()

    def lost(self, error: str) -> None:
        if not self.down:
            self.note(f"{error}; waiting for it to come back")
        self.down = True

    def note(self, text: str) -> None:
        output.warn(text)

    async def start(self) -> None:
        """Read what is needed before the first event; fails when Redis is down."""

    async def on_event(self, event) -> bool:
        """Handle one event; True ends the stream."""
        return False

    async def on_resync(self) -> None:
        pass

    async def tick(self) -> None:
        pass


# ---------------------------------------------------------------------- events
class EventPrinter(Consumer):
    def __init__(self, state, types: frozenset[str], as_json: bool, count: int | None,
                 since: int | None = None, all_hosts: bool = False) -> None:
        super().__init__(state)
        self.types, self.as_json, self.left, self.since = types, as_json, count, since
        self.all_hosts = all_hosts  # every host's channel, one pattern subscription
        self.shown = 0  # the last seq printed: a replayed event is not printed again live

    def hub(self) -> EventHub:
        if not self.all_hosts:
            return super().hub()
        from ..store import ALL_HOSTS_EVENTS
        return EventHub(self.state.direct.store, host_events=False,
                        patterns=(ALL_HOSTS_EVENTS,))

    async def start(self) -> None:
        """Replay what came after --since from the host's stream (subscribed already, so
        nothing falls between the replay and the live events)."""
        if self.since is None:
            await self.state.core.store.ping()  # fails now, in one line, if Redis is down
            return
        missed = await self.state.core.store.events_since(self.since)
        if missed and missed[0]["seq"] > self.since + 1:
            self.note(f"events {self.since + 1} to {missed[0]['seq'] - 1} are no longer kept "
                      "(the stream keeps the newest ~10,000)")
        for doc in missed:
            event = Event.decode(json.dumps(doc))
            if event is not None and await self.on_event(event):
                raise ReaderGone()  # --count reached during the replay: done

    async def on_event(self, event) -> bool:
        if event.seq <= self.shown and self.since is not None:
            return False
        self.shown = max(self.shown, event.seq)
        if self.types and event.type not in self.types:
            return False
        if self.as_json:
            write_line(json.dumps(event.data))
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(event.time_ms / 1000))
            host = f"{event.host} " if self.all_hosts else ""
            write_line(f"{stamp}.{event.time_ms % 1000:03d} {host}{line(event)}")
        if self.left is not None:
            self.left -= 1
            return self.left <= 0
        return False


# ---------------------------------------------------------------------- status --follow
class StatusFollower(Consumer):
    """The status, again after every event: JSON Lines, or a table redrawn in place."""

    def __init__(self, state, mode: str) -> None:
        super().__init__(state)
        self.mode = mode  # "json", or on a terminal "table", "lines" or "summary"
        self.rows = 0  # terminal rows of the last drawing, to redraw over it
        self.last = None  # (view, event) of the last drawing: a resize redraws it
        if mode != "json":
            self.idle_s = CLOCK_REFRESH_S

    async def run(self) -> None:
        if self.mode == "json":
            return await super().run()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._on_resize)
            await super().run()
            tg.cancel_scope.cancel()

    async def _on_resize(self) -> None:
        """A terminal resized (SIGWINCH) is drawn again at once, at its new width, from the
        top of the screen: the old drawing was re-wrapped by the terminal, its rows unknown."""
        with anyio.open_signal_receiver(signal.SIGWINCH) as signals:
            async for _ in signals:
                if self.last is not None:
                    try:
                        self.draw(*self.last, erase="\033[H\033[J")
                    except ReaderGone:
                        return  # the next drawing ends the stream

    async def start(self) -> None:
        await self.show(None, first=True)

    async def on_event(self, event) -> bool:
        await self.show(event)
        return False

    async def on_resync(self) -> None:
        await self.show(None)

    async def tick(self) -> None:
        await self.show(None)

    def note(self, text: str) -> None:
        super().note(text)
        self.rows = 0  # the note sits below the drawing: draw afresh under it

    async def show(self, event, first: bool = False) -> None:
        try:
            view = await self.state.core.view()
        except BackendUnavailable as err:
            if first:
                raise
            self.lost(str(err))
            return
        if self.mode == "json":
            write_line(json.dumps({**render.render_json(view),
                                   "event": event.data if event is not None else None}))
            return
        self.last = (view, event)
        self.draw(view, event)

    def draw(self, view, event, erase: str | None = None) -> None:
        width = max(1, shutil.get_terminal_size().columns)
        if self.mode == "summary":
            body = render.render_summary(view)
        elif self.mode == "lines":
            body = render.render_lines(view)
        else:
            body = render.render_table(view, color=output.use_color(), width=width)
        self.redraw(self.header(view, event, width) + "\n" + body, width, erase)

    def header(self, view, event, width: int) -> str:
        """'HOST at 12:00:01  last: EVENT  (Ctrl+C to stop)' in one row of the terminal:
        the event's text is cut first, then the hint, then the rest."""
        stamp = time.strftime("%H:%M:%S", time.localtime(view.now_ms / 1000))
        head, hint = f"{self.state.config.host_name} at {stamp}", "  (Ctrl+C to stop)"
        room = width - len(head) - len(hint)
        if event is not None and room >= len("  last: ") + 8:
            head += cut(f"  last: {line(event)}", room)
        return head + hint if len(head + hint) <= width else cut(head, width)

    def redraw(self, text: str, width: int, erase: str | None = None) -> None:
        # Up to the first row of the last drawing, clear to the end of the screen, draw.
        if erase is None:
            erase = f"\033[{self.rows}F\033[J" if self.rows else ""
        try:
            sys.stdout.write(erase + text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            raise ReaderGone() from None
        self.rows = sum(max(1, -(-len(_ANSI.sub("", row)) // width))
                        for row in text.split("\n"))


async def follow_status(state, fmt: str | None, as_json: bool, summary: bool) -> int:
    """`status --follow`."""
    if as_json or not output.is_tty():
        mode = "json"
    else:
        mode = "summary" if summary else (fmt or "table")
    await until_signalled(StatusFollower(state, mode).run)
    return 0
