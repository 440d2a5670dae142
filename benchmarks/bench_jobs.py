"""Detached jobs (docs/jobs.md): memory of N queued jobs, submit latency, release -> a
queued job's first instruction.

1. Memory: one GPU, held by a manual reservation so that nothing is granted; N jobs queued
   through one agent. The agent's RSS with 1 queued job and with N (in daemon mode also the
   daemon's, which holds their places), and the time the agent took to place them all.
2. Submit latency: median wall time of `canhazgpu submit -- true` as a fresh process (the
   agent alive).
3. Release -> start: a job queued behind the held GPU (for 2 s, so that the agent's spare
   runner is ready, as it is behind any real queue) runs
   `bash -c 'echo $EPOCHREALTIME > FILE'`; the GPU is released; the time from just before
   the release call to the command's first instruction, p50/p99.

Each in both client modes: direct (the agent and the CLI use Redis) and daemon (a
`canhazgpu serve` of its own; the CLI, the agent and its runners go through its API).
Wall times with the CPU time of the measured process and the load average beside them.

Run: .venv/bin/python benchmarks/bench_jobs.py [N] [direct|daemon]
(starts its own private Redis; N=1000; both modes unless one is named)
Targets: N=1000 queued under 150 MB for the agent; submit <= 100 ms; release -> start p50
<= 20 ms.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import anyio
import psutil

from _common import bench_env, daemon, machine, median, percentile
from canhazgpu.config import load
from canhazgpu.core import Core, Request
from canhazgpu.identity import current
from canhazgpu.jobs.files import ENDED, JobDir, job_document, jobs_root

ROUNDS = 20


async def until(predicate, what: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await anyio.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


class Bench:
    def __init__(self, core: Core, jobs: JobDir) -> None:
        self.core, self.jobs, self.me = core, jobs, current()

    def add(self, argv) -> int:
        doc = job_document(argv, Request(count=1, kind="job"), user=self.me.user,
                           uid=self.me.uid, host=self.core.config.host_name)
        return self.jobs.create(doc).id

    async def queued(self) -> int:
        return len((await self.core.store.read_state()).queue)

    async def wait_queued(self, n: int) -> None:
        async def enough():
            return await self.queued() >= n
        await until(enough, f"{n} queued jobs")

    async def cancel_all(self) -> None:
        for job in self.jobs.all():
            if job.state not in ENDED:
                job.file("cancel").touch()
        self.jobs.ensure_agent(self.core.config)

        async def empty():
            return await self.queued() == 0
        await until(empty, "the queue to empty")

    def rss_mb(self) -> float:
        return psutil.Process(self.jobs.agent_pid()).memory_info().rss / 2**20


def wall_cpu(args: list[str], runs: int) -> tuple[float, float]:
    """Median wall and CPU time (ms) of `canhazgpu ARGS` as a fresh process."""
    import subprocess
    walls, cpus = [], []
    for _ in range(runs):
        before = os.times()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "canhazgpu", *args], check=True,
                       capture_output=True)
        walls.append(time.perf_counter() - t0)
        after = os.times()
        cpus.append(after.children_user - before.children_user
                    + after.children_system - before.children_system)
    return median(walls) * 1e3, median(cpus) * 1e3


def _spare_rss(agent_pid: int) -> float:
    """RSS of the runner the agent keeps ready (its own session: found by command line)."""
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        if proc.info["ppid"] == agent_pid and "canhazgpu.jobs.runner" in \
                " ".join(proc.info["cmdline"] or []):
            return proc.memory_info().rss / 2**20
    return 0.0


async def main(n: int, modes: list[str]) -> None:
    with bench_env(gpus=1) as (env, _server):
        config = load()
        core = Core(config)
        await core.setup_pool(1, "fake", force=False)
        for mode in modes:
            os.environ["CANHAZGPU_CLIENT"] = mode
            if mode == "daemon":
                with daemon({**env, "CANHAZGPU_CLIENT": "daemon"}) as served:
                    await measure(core, n, mode, psutil.Process(served.pid))
            else:
                await measure(core, n, mode)
        await core.aclose()
    print(f"machine: {machine()}, load {os.getloadavg()[0]:.1f}")


async def measure(core: Core, n: int, mode: str, served=None) -> None:
    """The three measures in one client mode; served: the daemon's process (daemon mode),
    whose memory the queued jobs cost too."""
    config = load()
    me = current()
    hold = await core.allocate(Request(count=1, kind="manual", duration_s=3600), me)
    bench = Bench(core, JobDir(jobs_root(config)))
    print(f"-- {mode} mode (load {os.getloadavg()[0]:.1f})")

    bench.add(["true"])
    bench.jobs.ensure_agent(config, mode)
    await bench.wait_queued(1)
    one = bench.rss_mb()
    daemon_one = served.memory_info().rss / 2**20 if served else 0.0
    t0 = time.perf_counter()
    for _ in range(n - 1):
        bench.add(["true"])
    bench.jobs.wake_agent()
    await bench.wait_queued(n)
    placed = time.perf_counter() - t0
    many = bench.rss_mb()
    spare = _spare_rss(bench.jobs.agent_pid())
    print(f"memory: agent RSS {one:.1f} MB with 1 queued job, {many:.1f} MB with {n} "
          f"({(many - one) * 1024 / (n - 1):.1f} KB per job); {n - 1} placed in "
          f"{placed:.1f}s; its spare runner {spare:.1f} MB")
    if served:
        daemon_many = served.memory_info().rss / 2**20
        print(f"memory: the daemon's RSS {daemon_one:.1f} MB with 1 queued job, "
              f"{daemon_many:.1f} MB with {n} ({(daemon_many - daemon_one) * 1024 / (n - 1):.1f}"
              f" KB per job)")
    await bench.cancel_all()

    submit_ms, submit_cpu = wall_cpu(["submit", "--", "true"], ROUNDS)
    version_ms, version_cpu = wall_cpu(["--version"], ROUNDS)
    print(f"submit: {submit_ms:.0f} ms median wall, {submit_cpu:.0f} ms CPU ({ROUNDS} fresh "
          f"processes; `canhazgpu --version`: {version_ms:.0f} ms wall, {version_cpu:.0f} ms "
          f"CPU; load {os.getloadavg()[0]:.1f})")
    await bench.cancel_all()

    delays = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(ROUNDS):
            out = Path(tmp) / f"start{i}"
            job_id = bench.add(["bash", "--norc", "-c", f"echo $EPOCHREALTIME > {out}"])
            bench.jobs.ensure_agent(config, mode)
            await bench.wait_queued(1)
            await anyio.sleep(2)  # the spare runner warm, as behind any real queue
            released = time.time()
            await core.end(hold.rid, me)

            async def started(out=out):
                return out.exists() and out.read_text().strip() != ""
            await until(started, "the job's first instruction", 60)
            delays.append((float(out.read_text()) - released) * 1000)

            async def over(job_id=job_id):
                return bench.jobs.load(job_id).state in ENDED
            await until(over, "the job to end", 60)
            hold = await core.allocate(Request(count=1, kind="manual", duration_s=3600), me)
    print(f"release -> job start: p50 {percentile(delays, 50):.0f} ms, "
          f"p99 {percentile(delays, 99):.0f} ms ({ROUNDS} rounds; load "
          f"{os.getloadavg()[0]:.1f})")
    agent = bench.jobs.agent_pid()
    if agent:
        os.kill(agent, 9)
    await core.end(hold.rid, me)


if __name__ == "__main__":
    args = sys.argv[1:]
    named = [a for a in args if a in ("direct", "daemon")]
    numbers = [int(a) for a in args if a.isdigit()]
    anyio.run(main, numbers[0] if numbers else 1000, named or ["direct", "daemon"])
