"""The user's one job agent on this host: `python -m canhazgpu.jobs.agent`.

Started (detached) by the first `submit`, it holds every queued job's place in the host's
FIFO queue (the same queue as `wait`), in Redis through ONE event subscription shared by all
its waiters, or through the daemon's API, one waiting request per job (places.py), and
starts each granted job as its own runner process. It keeps nothing that matters in
memory: the job files say everything, so a restarted agent resumes the places (direct mode:
their queue lease outlives a restart; through the daemon: they queue again) and never starts
a job twice: a job is marked `starting` before its runner is spawned, and `running` by the
runner before the command. It leaves when no job needs it (`submit`, `jobs` and `cancel`
start one again).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import anyio

from ..errors import (BackendUnavailable, CanHazGpuError, LimitReached, NotHeld,
                      PoolNotInitialized)
from .events import publish
from .files import (CANCELLED, DONE, ENDED, LIVE, RUNNING, STARTING, FAILED, Job,
                    JobDir, JobNotFound, jobs_root, now_ms, try_lock)
from .places import QUEUE_LEASE

LATER = (BackendUnavailable, PoolNotInitialized, LimitReached)  # the queue cannot take it now

RESCAN_S = 5.0  # look at the job files this often even without being woken
IDLE_S = 30.0  # with no job to look after for this long, the agent leaves


def log(text: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} agent {os.getpid()}: {text}\n")
    sys.stderr.flush()


class Agent:
    def __init__(self, config, jobs: JobDir) -> None:
        from ..identity import current
        self.config = config
        self.caller = current(config.admin_group)
        self.places = None  # made in main(): the daemon may not answer yet
        self.jobs = jobs
        self.following: dict[int, anyio.CancelScope] = {}
        self.requeued: set[int] = set()  # followed jobs being taken back to queue again
        self.finished: set[int] = set()
        self.wake = anyio.Event()
        self.trouble = ""  # what stops jobs from being queued now, said once
        self.runner: socket.socket | None = None  # our end of the spare runner's socket

    @property
    def core(self):
        return self.places.core

    async def main(self) -> None:
        from .places import places_for
        lock = try_lock(self.jobs.agent_lock)
        if lock is None:
            return  # another agent lives
        (self.jobs.root / "agent.pid").write_text(str(os.getpid()))
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # runners are reaped by the kernel
        while self.places is None:
            try:
                self.places = places_for(self.config, self.caller, log)
            except BackendUnavailable as err:
                if not any(job.state in LIVE for job in self.jobs.all()):
                    log(f"{err}; no job waits: stopped")
                    return
                self.say(f"cannot queue jobs now: {err}; trying again")
                await anyio.sleep(RESCAN_S)
        log(f"started ({'through the daemon' if self.places.remote else 'direct'})")
        async with self.places.running(), anyio.create_task_group() as tg:
            self.tg = tg
            await tg.start(self._signals)  # the wakes ignored until now: the scan covers them
            idle_since = anyio.current_time()
            while True:
                needed = await self.scan()
                if needed:
                    idle_since = anyio.current_time()
                elif anyio.current_time() - idle_since >= IDLE_S:
                    # Unlocked, look once more: a job submitted after this look finds no
                    # agent and starts one; one submitted before it is ours.
                    os.close(lock)
                    if not await self.scan():
                        break
                    lock = try_lock(self.jobs.agent_lock)
                    if lock is None:
                        break  # a new agent took over
                    (self.jobs.root / "agent.pid").write_text(str(os.getpid()))
                with anyio.move_on_after(RESCAN_S):
                    await self.wake.wait()
                self.wake = anyio.Event()
            tg.cancel_scope.cancel()
        if self.runner is not None:
            self.runner.close()  # the spare runner leaves when it reads the end
        log("no queued jobs left; stopped")

    def say(self, trouble: str) -> None:
        """Log what keeps jobs from being queued, once until it changes."""
        if trouble != self.trouble:
            log(trouble)
        self.trouble = trouble

    async def _signals(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM, signal.SIGINT) as sigs:
            task_status.started()
            async for signum in sigs:
                if signum == signal.SIGUSR1:
                    self.wake.set()
                else:  # leave at once, keeping the queue places for the next agent
                    log(f"stopped by signal {signum}; " + (
                        "its queued jobs queue again with the next agent" if self.places.remote
                        else f"queue places kept for {QUEUE_LEASE}"))
                    os._exit(0)

    # ------------------------------------------------------------------ the job files
    async def scan(self) -> bool:
        """Act on every job not known to be over; True when some job still needs us."""
        needed = bool(self.following)
        for n in self.jobs.ids():
            if n in self.finished:
                continue
            if n in self.following:
                if n in self.requeued:  # its place is lost: the jobs behind it queue again
                    return True         # after it (its task wakes us when it is over)
                if (self.jobs.root / str(n) / "cancel").exists():
                    self.following[n].cancel()
                continue
            try:
                job = self.jobs.load(n)
            except JobNotFound:
                continue  # being created
            try:
                needed |= await self.consider(job)
            except LATER as err:  # the jobs behind it wait too (first come, first served)
                self.say(f"cannot queue job {job.id} now: {err}; trying again")
                return True
        self.trouble = ""
        return needed

    async def consider(self, job: Job) -> bool:
        """Move one job along; True while it needs the agent."""
        if job.state in (STARTING, RUNNING):
            if job.runner_alive():
                return False
            # read again: a runner records its last state before it lets go of the lock, so
            # a runner that ended since the read above is not taken for one that died
            job = self.jobs.load(job.id)
        state = job.state
        if state in ENDED:
            self.finished.add(job.id)
            return False
        if state == RUNNING:  # its runner died before recording how the command ended
            if job.cancel_asked:
                await self.end(job, CANCELLED, "cancelled while running")
            else:
                await self.end(job, FAILED, "its runner stopped (killed, or the machine "
                                            "restarted) before the command's exit was recorded")
            return False
        # queued, or `starting` with no runner: the command never started
        if not job.doc.get("announced"):  # submit writes the file only: it stays quick
            await publish(self.core, job, "job_submitted")
            job.save(announced=True)
        if job.cancel_asked:
            await self.places.leave(job)
            await self.end(job, CANCELLED, "cancelled while queued")
            return False
        verdict = self.dependencies(job)
        if verdict is None:
            return True  # waits for its dependencies
        if verdict:
            await self.end(job, CANCELLED, verdict)
            return False
        scope = anyio.CancelScope()
        try:  # in the queue when this returns (first come, first served)
            await self.tg.start(self.follow, job, scope)
        except LATER:
            raise
        except CanHazGpuError as err:
            await self.end(job, FAILED, str(err))
            return False
        self.spare()  # warm before the grant comes
        return True

    def dependencies(self, job: Job) -> str | None:
        """None: wait; "": all ended successfully; else why the job cannot run."""
        for dep in job.doc.get("after") or []:
            try:
                other = self.jobs.load(dep)
            except JobNotFound:
                return f"dependency {dep} is gone"
            if other.state in LIVE:
                return None
            if other.state != DONE:
                code = other.doc.get("exit_code")
                return f"dependency {dep} {other.state}" + \
                    (f" (exit {code})" if code is not None else "")
        return ""

    async def end(self, job: Job, state: str, reason: str) -> None:
        job.ended(state, reason)
        self.finished.add(job.id)
        log(f"job {job.id} {state}: {reason}")
        await publish(self.core, job, "job_ended")

    # ------------------------------------------------------------------ the queue
    async def follow(self, job: Job, scope: anyio.CancelScope, *,
                     task_status=anyio.TASK_STATUS_IGNORED) -> None:
        """Queue the job (started: once it is in the queue; an error before that is the
        caller's), wait for its grant and launch it."""
        from ..waitqueue import LostPlace
        granted, queued = None, False

        def in_queue() -> None:
            nonlocal queued
            queued = True
            self.following[job.id] = scope
            task_status.started()
        try:
            with scope:
                granted = await self.places.wait(job, in_queue)
        except (LostPlace, NotHeld, *LATER) as err:  # the place is gone (NotHeld: resumed
            if not queued:                              # through a restarted daemon)
                raise
            log(f"job {job.id}: {err}; queueing it again")
            await self.lost(job)
        except CanHazGpuError as err:
            if not queued:
                raise
            await self.end(job, FAILED, str(err))
        finally:
            self.following.pop(job.id, None)
        if granted is not None:
            await self.launch(job, granted)
        elif scope.cancelled_caught and job.id not in self.requeued:
            await self.end(job, CANCELLED, "cancelled while queued")
        self.requeued.discard(job.id)
        self.wake.set()

    async def lost(self, job: Job) -> None:
        """Job's place is gone, and so may be those of the jobs queued before it (Redis or
        the daemon restarted without them): those are taken back too, so that all of them
        queue again in submission order, whichever of their waiters noticed first."""
        try:
            present = await self.places.present()
        except CanHazGpuError:
            return  # unknown: each queues again when its own waiter notices
        for other, scope in list(self.following.items()):
            if other < job.id and other not in self.requeued:
                try:
                    rid = self.jobs.load(other).doc.get("rid")
                except JobNotFound:
                    continue
                if rid not in present:
                    self.requeued.add(other)
                    scope.cancel()

    # ------------------------------------------------------------------ starting
    async def launch(self, job: Job, res) -> None:
        """Hand the granted GPUs to the job's own runner process."""
        if job.cancel_asked:
            await self.places.leave(job, granted=True)
            await self.end(job, CANCELLED, "cancelled while queued")
            return
        lock = try_lock(job.file("lock"))
        if lock is None:
            log(f"job {job.id}: granted GPU {res.env_value()}, but a runner holds it already")
            return  # (never start a job twice)
        try:
            job.save(state=STARTING, gpus=list(res.gpus), granted_ms=now_ms(), rid=res.rid,
                     record=res.record)
            self.hand_over(job, lock)
            log(f"job {job.id}: started on GPU {res.env_value()}")
        except OSError as err:
            log(f"job {job.id}: cannot start its runner: {err}")
            await self.places.leave(job, granted=True)
            await self.end(job, FAILED, f"cannot start its runner: {err}")
        finally:
            os.close(lock)
        if self.following:
            self.spare()  # ready for the next grant

    def hand_over(self, job: Job, lock: int) -> None:
        """Give the job and its lock to a waiting runner (a fresh one if the spare died).
        While the message is in flight the lock stays held, so a restarted agent never
        takes the job for one that did not start."""
        for attempt in range(2):
            sock = self.spare()
            self.runner = None
            try:
                socket.send_fds(sock, [str(job.path).encode()], [lock])
                return
            except OSError:
                if attempt:
                    raise
            finally:
                sock.close()

    def spare(self) -> socket.socket:
        """The runner waiting for the next job, started now if there is none."""
        if self.runner is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            with open(self.jobs.root / "agent.log", "ab") as err:
                subprocess.Popen(
                    [sys.executable, "-m", "canhazgpu.jobs.runner", str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),), start_new_session=True,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            theirs.close()
            self.runner = ours
        return self.runner


def main() -> None:
    # A wake (SIGUSR1, from a submit or a runner) before we listen must not kill us
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    from ..config import load
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = load()
    jobs = JobDir(jobs_root(config))
    jobs.ensure()
    try:
        anyio.run(Agent(config, jobs).main)
    except KeyboardInterrupt:
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
