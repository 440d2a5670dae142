"""A granted job's own process: `python -m canhazgpu.jobs.runner SOCKET_FD`.

Started by the agent ahead of time (detached: its own session) with everything imported,
it waits on a socket for one job: its directory and its lock (the fd, passed with
SCM_RIGHTS), so that a job starts without a Python start-up in between. It talks to the
pool as its agent does (Redis, or the daemon's API: places.connect). It runs the
command under the same
Supervisor as `run` (lease heartbeat, signals, release when it ends), so a dead agent never
takes a running job's GPUs with it. It holds the job's lock (inherited from the agent) for
its whole life: a free lock means no runner lives. The command's stdout and stderr go
through a pipe into the job's capped log.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio

from .files import CANCELLED, CAP, DONE, FAILED, RUNNING, Job, JobDir, now_ms
from .events import publish

EARLY_TERM: list = []  # SIGTERMs that came before the command did
DRAIN_S = 2.0  # after the command ends: what its leftover children still write, for this long


class CappedLog:
    """The job's output: output.log, moved to output.log.1 when it reaches half the cap, so
    at most CAP bytes (the latest) are kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.older = path.with_name(path.name + ".1")
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115 (closed in close())
        self.size = self.file.tell()

    def write(self, data: bytes) -> None:
        while data:
            room = CAP // 2 - self.size
            if room <= 0:
                self.file.close()
                os.replace(self.path, self.older)
                self.file = open(self.path, "ab", buffering=0)  # noqa: SIM115
                self.size = 0
                continue
            part, data = data[:room], data[room:]
            self.file.write(part)
            self.size += len(part)

    def note(self, text: str) -> None:
        self.write(f"canhazgpu: {text}\n".encode())

    def close(self) -> None:
        self.file.close()


async def pump(fd: int, log: CappedLog) -> None:
    """Copy the pipe into the log until its last writer closes it."""
    os.set_blocking(fd, False)
    while True:
        await anyio.wait_readable(fd)
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            continue
        if not data:
            return
        log.write(data)


async def run(job: Job, lock_fd: int, core, caller) -> int:
    from ..request import Reservation
    from ..supervisor import CommandFailed, Supervisor
    config = core.config
    doc = job.doc
    log = CappedLog(job.file("output.log"))
    try:
        if job.cancel_asked:  # cancelled between the grant and now: never started
            job.ended(CANCELLED, "cancelled before it started")
            await _end(core, doc["rid"])
            await publish(core, job, "job_ended")
            return 0
        # Marked running before the command starts: a restarted agent that finds this state
        # and no runner knows the command may have run, and never starts it again.
        job.save(state=RUNNING, runner_pid=os.getpid(), started_ms=now_ms())
        # owned by this process from the first heartbeat on (status names it; the agent
        # that queued the job may leave or die while it runs)
        record = {**doc["record"], "pid": caller.pid, "pid_start": caller.pid_start}
        res = Reservation(doc["rid"], tuple(doc["gpus"]), record["user"], "job",
                          config.seconds("run_lease"), record)
        read_fd, write_fd = os.pipe()
        sup = Supervisor(core, res, caller, log.note,
                         heartbeat_s=config.seconds("heartbeat_interval"),
                         timeout_s=doc.get("timeout_s"),
                         kill_grace_s=config.seconds("kill_grace"), renew_at_start=True,
                         env=doc["env"], cwd=doc["cwd"], output=write_fd, term_grace=True,
                         terminated=lambda: bool(EARLY_TERM), group=True)
        os.umask(int(doc.get("umask", 0o022)))
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, read_fd, log)
            tg.start_soon(publish, core, job, "job_started")  # beside the start, not before
            try:
                code = await sup.run(list(doc["argv"]))
            except CommandFailed as err:
                log.note(str(err))
                code = err.exit_code
            except FileNotFoundError:  # the working directory is gone
                log.note(f"cannot start in {doc['cwd']}: no such directory")
                code = 127
            finally:
                os.close(write_fd)
            # the pump ends at the pipe's end; children the command left behind may hold it
            tg.cancel_scope.deadline = anyio.current_time() + DRAIN_S
        os.close(read_fd)
        if job.cancel_asked:
            job.ended(CANCELLED, "cancelled while running", code)
        else:
            job.ended(DONE if code == 0 else FAILED, "", code)
        await publish(core, job, "job_ended")
        return code
    finally:
        log.close()
        JobDir(job.path.parent).wake_agent()  # its dependents may start now
        os.close(lock_fd)


async def _end(core, rid: str) -> None:
    from ..errors import CanHazGpuError
    from ..identity import current
    try:
        await core.end(rid, current(core.config.admin_group), reason="released")
    except CanHazGpuError:
        pass  # the grant's queue lease runs out by itself


async def receive(fd: int) -> tuple[Path, int] | None:
    """Wait for the agent to hand over a job: (its directory, its lock fd); None when the
    agent closed the socket (it left, or died) without one."""
    import socket
    with socket.socket(fileno=fd) as sock:
        await anyio.wait_readable(sock)
        try:
            data, fds, _, _ = socket.recv_fds(sock, 4096, 1)
        except OSError:
            return None
    if not data or not fds:
        return None
    return Path(data.decode()), fds[0]


async def serve(fd: int) -> int:
    """Get ready (settings read, Redis connected), then run the one job handed to us."""
    from ..config import load
    from ..errors import CanHazGpuError
    from ..identity import current
    from .places import connect
    config = load()
    caller = current(config.admin_group)  # (psutil: imported now, not after the grant)
    core = None
    try:
        try:
            core = connect(config)  # Redis, or the daemon's API (as the agent's)
            await core.store.ping()
        except CanHazGpuError:
            pass  # the job's own calls say what is wrong
        got = await receive(fd)
        if got is None:
            return 0
        path, lock_fd = got
        if core is None:
            core = connect(config)  # (the error is the job's, in runner.err)
        # A SIGTERM (cancel) before the supervisor forwards signals is kept for it
        signal.signal(signal.SIGTERM, lambda *_: EARLY_TERM.append(True))
        try:  # this job's runner errors (tracebacks) beside it
            err = os.open(path / "runner.err", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(err, 2)
            os.close(err)
        except OSError:
            pass
        return await run(JobDir(path.parent).load(path.name), lock_fd, core, caller)
    finally:
        if core is not None:
            await core.aclose()


def main() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # outlive the terminal of whoever started us
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the agent ignores it; we wait for ours
    from .. import supervisor  # noqa: F401 (imported before the job comes)
    try:
        code = anyio.run(serve, int(sys.argv[1]))
    except KeyboardInterrupt:
        code = 130
    os._exit(code)


if __name__ == "__main__":
    main()
