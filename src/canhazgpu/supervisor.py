"""Run a command on reserved GPUs: keep the lease alive, forward signals, always release.

Used by `run` and `wait -- cmd`. Reports through a `warn` callback; never prints.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from .request import Reservation
from .errors import BackendUnavailable, CanHazGpuError
from .identity import Caller

if TYPE_CHECKING:  # a run through the daemon passes its RemoteCore, without redis
    from .core import Core

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class CommandFailed(CanHazGpuError):
    """The command could not be started (exit 127: not found, 126: not executable)."""

    def __init__(self, message: str, exit_code: int = 126) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Supervisor:
    core: Core
    res: Reservation
    caller: Caller
    warn: Callable[[str], None]
    heartbeat_s: float = 5.0
    timeout_s: float | None = None
    kill_grace_s: float = 10.0
    renew_at_start: bool = False  # a queue grant holds GPUs on the short queue lease
    # a detached job (jobs/runner.py): its own environment, directory and output, and a
    # SIGTERM (cancel) followed by SIGKILL after kill_grace_s
    env: dict | None = None
    cwd: str | None = None
    output: int | None = None
    term_grace: bool = False
    terminated: Callable[[], bool] | None = None  # a SIGTERM came before forwarding began
    group: bool = False  # the command in a process group of its own, signalled whole

    async def run(self, argv: list[str]) -> int:
        """Run argv to completion; returns its exit code (128+N when killed by signal N)."""
        env = {**(os.environ if self.env is None else self.env),
               "CUDA_VISIBLE_DEVICES": self.res.env_value()}
        try:
            try:
                proc = await anyio.open_process(argv, stdin=None, stdout=self.output,
                                                stderr=self.output, env=env, cwd=self.cwd,
                                                start_new_session=self.group)
            except FileNotFoundError:
                raise CommandFailed(f"command not found: {argv[0]}", 127) from None
            except PermissionError:
                raise CommandFailed(f"cannot execute {argv[0]}: permission denied") from None
            except OSError as err:
                raise CommandFailed(f"cannot start {argv[0]}: {err.strerror}") from None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_alive)
                tg.start_soon(self._forward_signals, proc, tg)
                if self.timeout_s:
                    tg.start_soon(self._enforce_timeout, proc)
                code = await proc.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._release()
        return 128 - code if code < 0 else code

    async def _keep_alive(self) -> None:
        """Heartbeat; through a Redis outage keep trying, and re-establish the lease after."""
        lost_contact = False
        first = True
        gone: set[int] = set()  # GPUs no longer ours, said once
        while True:
            if not (first and self.renew_at_start):
                await anyio.sleep(self.heartbeat_s if not lost_contact else 1.0)
            first = False
            try:
                lost = await self.core.heartbeat(self.res)
            except BackendUnavailable as err:
                if not lost_contact:
                    self.warn(f"{err}; the command keeps running and the reservation will be "
                              "renewed when Redis is back")
                lost_contact = True
                continue
            except CanHazGpuError as err:
                self.warn(f"heartbeat failed: {err}")
                continue
            if lost_contact:
                self.warn("Redis is reachable again; reservation renewed")
                lost_contact = False
            if set(lost) - gone:
                gone |= set(lost)
                self.warn(f"GPU {','.join(map(str, sorted(gone)))} no longer reserved for this "
                          "command: released by its owner or an admin, or taken by someone "
                          "else while our lease had lapsed")

    async def _forward_signals(self, proc, tg) -> None:
        with anyio.open_signal_receiver(*FORWARDED) as signals:
            if self.terminated is not None and self.terminated():
                self._signal(proc, signal.SIGTERM)
                tg.start_soon(self._kill_after_grace, proc)
            async for signum in signals:
                # Ctrl+C at the terminal already reached the command (same process group).
                if signum in (signal.SIGINT, signal.SIGQUIT) and _keyboard_signal():
                    continue
                if proc.returncode is None:
                    self._signal(proc, signum)
                    if signum == signal.SIGTERM and self.term_grace:
                        tg.start_soon(self._kill_after_grace, proc)

    def _signal(self, proc, signum: int) -> None:
        """The command (with `group`: its whole process group, what it started too)."""
        if not self.group:
            proc.send_signal(signum)
            return
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    async def _kill_after_grace(self, proc) -> None:
        await anyio.sleep(self.kill_grace_s)
        if proc.returncode is None:
            self._signal(proc, signal.SIGKILL)

    async def _enforce_timeout(self, proc) -> None:
        await anyio.sleep(self.timeout_s)
        self.warn(f"time limit reached; sending SIGTERM (SIGKILL in {self.kill_grace_s:g}s)")
        self._signal(proc, signal.SIGTERM)
        await self._kill_after_grace(proc)

    async def _release(self) -> None:
        with anyio.move_on_after(10):
            try:
                await self.core.end(self.res.rid, self.caller)
                return
            except CanHazGpuError as err:
                self.warn(f"could not release GPUs {self.res.env_value()} ({err}); they come "
                          f"back by themselves within {self.res.ttl_s:g}s")


def _keyboard_signal() -> bool:
    """True when we are the terminal's foreground process group: the key press hit us all."""
    for fd in (0, 1, 2):
        try:
            return os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False
