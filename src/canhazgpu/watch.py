"""The owner watcher: a `run` reservation ends within a second of its supervisor dying.

A run's lease only runs out after `run_lease` (20 s) without heartbeats; the daemon does
better for supervisors on its own host. It keeps a pidfd per supervisor (psutil polling where
pidfds do not exist) and reclaims the reservation as soon as the process is gone, SIGKILL
included. A PID is trusted only while the process behind it started when the reservation
says (`pid_start`), so a PID reused by another process never keeps a dead reservation alive.

Which reservations to watch is learnt from events, and re-read in full after every
(re)subscription: pub/sub may have dropped some.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio
import psutil

from .core import Core
from .errors import CanHazGpuError
from .events import Event, Resync
from .identity import Caller
from .model import State
from .request import HELD_BY_PROCESS

log = logging.getLogger("canhazgpu.serve")

# Events after which the set of reservations may differ.
CHANGES = ("reserved", "granted", "released", "expired", "reclaimed", "forced", "left",
           "pool_changed", "owner")
START_TOLERANCE_S = 0.5  # create times are read in clock ticks and stored as JSON floats
POLL_S = 0.25  # without pidfds


@dataclass(frozen=True)
class Owner:
    pid: int
    pid_start: float  # 0: unknown, only liveness is checked


@dataclass
class Watch:
    owner: Owner
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    verified: anyio.Event = field(default_factory=anyio.Event)  # same process seen alive


def same_process(owner: Owner) -> bool:
    """Whether owner.pid is still the process that made the reservation (blocking)."""
    try:
        proc = psutil.Process(owner.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except (psutil.Error, OSError):
        return False
    return not owner.pid_start or abs(started - owner.pid_start) <= START_TOLERANCE_S


@contextmanager
def pidfd(pid: int):
    """A pidfd of `pid` (None where the kernel has none: the caller polls); raises
    ProcessLookupError when there is no such process."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except (AttributeError, OSError):  # not Linux >= 5.3
        fd = None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


async def exited(fd: int | None, still_there) -> None:
    """Return once the process of `fd` has exited; without a pidfd, poll still_there()."""
    if fd is not None:
        await anyio.wait_readable(fd)
        return
    while await anyio.to_thread.run_sync(still_there):
        await anyio.sleep(POLL_S)


async def wait_gone(owner: Owner, alive: anyio.Event) -> str:
    """Return once owner's process is gone (a reason for the log); sets `alive` when seen."""
    try:
        with pidfd(owner.pid) as fd:
            # Opened first, checked second: if the check passes, the pidfd is that process.
            if not await anyio.to_thread.run_sync(same_process, owner):
                return f"PID {owner.pid} is no longer the supervisor (exited or reused)"
            alive.set()
            await exited(fd, lambda: same_process(owner))
    except ProcessLookupError:
        return f"supervisor PID {owner.pid} no longer exists"
    return f"supervisor PID {owner.pid} exited"


class OwnerWatcher:
    """Watches the supervisors of this host's `run` reservations; reclaims when one dies."""

    def __init__(self, core: Core, caller: Caller, trouble) -> None:
        self.core = core
        self.caller = caller
        self.trouble = trouble
        self.watched: dict[str, Watch] = {}
        self.reconciled = anyio.Event()  # set (and replaced) after every re-read
        self.reading = False  # a re-read is under way
        self._dirty = anyio.Event()

    async def run(self, stream, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self.tg = tg
            await self.reconcile()
            tg.start_soon(self._reconciler)
            task_status.started()
            async for item in stream:
                if self.wants(item):
                    self._dirty.set()  # a burst of events is one re-read

    def wants(self, item) -> bool:
        """Whether `item` may change what we watch (the hub asks before waking us)."""
        return isinstance(item, Resync) or (isinstance(item, Event) and self.concerns(item))

    def concerns(self, event: Event) -> bool:
        """Whether the set of watched reservations may change with `event`: a new `run`
        reservation or a completed grant, a new owner, the end of one we watch, a pool
        change; any change while a re-read is under way (it may have read the state
        before it). Manual reservations coming and going (most events) need no re-read."""
        if event.type == "reserved":
            return event.data.get("kind") in HELD_BY_PROCESS
        if event.type == "granted":
            return bool(event.data.get("complete"))
        if event.type in ("pool_changed", "owner"):
            return True
        return event.type in CHANGES and (event.rid in self.watched or self.reading)

    async def _reconciler(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            await self.reconcile()

    def wanted(self, state: State) -> dict[str, Owner]:
        """The live, complete `run` reservations made on this machine, by reservation id."""
        host, machine = self.core.config.host_name, socket.gethostname()
        return {h.rid: Owner(h.pid, h.pid_start) for h in state.holds.values()
                if h.host == host and (h.machine or machine) == machine and h.kind in HELD_BY_PROCESS
                and not h.waiting and h.pid > 0}

    async def reconcile(self) -> None:
        """Watch exactly the reservations that need it, from a fresh read of the state."""
        self.reading = True
        try:
            state = await self.core.store.read_state(queue=False)  # holds only
        except CanHazGpuError as err:
            self.trouble("owner watcher", err)
            return  # the next Resync reads again
        finally:
            self.reading = False
        self.trouble("owner watcher", None)
        wanted = self.wanted(state)
        for rid in [r for r, w in self.watched.items() if wanted.get(r) != w.owner]:
            self.watched.pop(rid).scope.cancel()
        for rid, owner in wanted.items():
            if rid not in self.watched:
                self.watched[rid] = Watch(owner)
                self.tg.start_soon(self._watch, rid, self.watched[rid])
        done, self.reconciled = self.reconciled, anyio.Event()
        done.set()

    async def still_owned(self, rid: str, owner: Owner) -> bool:
        """Whether reservation rid is still owner's (a move happens before the old owner
        ends, so a fresh read tells); unsure (Redis away) counts as yes."""
        try:
            state = await self.core.store.read_state(queue=False)  # holds only
        except CanHazGpuError:
            return True
        return any(h.rid == rid and h.pid == owner.pid for h in state.holds.values())

    async def _reclaim(self, rid: str, reason: str) -> None:
        while True:
            try:
                ended = await self.core.end(rid, self.caller, reason="reclaimed", force=True)
                self.trouble("reclaim", None)
                break
            except CanHazGpuError as err:  # Redis away: keep trying, it is still dead
                self.trouble("reclaim", err)
                await anyio.sleep(1)
        if ended:
            log.debug("reclaimed %s (GPU %s): %s", rid, ",".join(map(str, ended)), reason)

    async def _watch(self, rid: str, watch: Watch) -> None:
        with watch.scope:
            reason = await wait_gone(watch.owner, watch.verified)
            # not when it moved to another process (event `owner`) before this one ended
            if await self.still_owned(rid, watch.owner):
                await self._reclaim(rid, reason)
        if self.watched.get(rid) is watch:
            del self.watched[rid]
