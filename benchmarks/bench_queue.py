"""Queue wake-up: time from a release to the head waiter's command running, p50/p99,
with one waiter at a time and with 100 waiters queued.

Each waiter runs `canhazgpu wait --gpus 1 -- bash -c 'echo $EPOCHREALTIME > FILE'`: the
command's first instruction writes the wall clock. The release time is the `released`
event's time (Redis TIME inside the release script, i.e. before the release call returns).

Run: .venv/bin/python benchmarks/bench_queue.py   (starts its own private Redis)
Targets (2 cores): p50 <= 20 ms, p99 <= 100 ms.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

from _common import bench_env, machine, percentile
from canhazgpu.config import load
from canhazgpu.core import Core, Request
from canhazgpu.events import Event, EventHub
from canhazgpu.identity import current


def start_waiter(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "canhazgpu", "wait", "--gpus", "1", "--quiet", "--",
         "bash", "--norc", "-c", f"echo $EPOCHREALTIME > {out}"],
        stdout=subprocess.DEVNULL)


async def queued(core: Core, n: int, stream) -> None:
    with anyio.fail_after(120):
        while len((await core.store.read_state()).queue) < n:
            await stream.receive()


async def run(n_waiters: int, rounds: int) -> list[float]:
    """Rounds of: n waiters queue behind a holder; release; each head's wake-up in turn."""
    core = Core(load())
    me = current()
    await core.setup_pool(1, "fake", force=True)
    latencies: list[float] = []
    hub = EventHub(core.store)
    with tempfile.TemporaryDirectory() as tmp:
        async with hub.running(), hub.listen() as stream:
            for r in range(rounds):
                holder = await core.allocate(Request(count=1, duration_s=600), me)
                outs = [Path(tmp) / f"{r}-{k}" for k in range(n_waiters)]
                procs = []
                for k, out in enumerate(outs):
                    procs.append(start_waiter(out))
                    await queued(core, k + 1, stream)  # queue in a known order
                await core.end(holder.rid, me)
                released = {}  # rid -> release time (s), from the events
                starts = []
                granted_to: list[str] = []
                with anyio.fail_after(120):
                    while len(granted_to) < n_waiters or len(released) < n_waiters + 1:
                        item = await stream.receive()
                        if isinstance(item, Event):
                            if item.type == "released":
                                released[item.rid] = item.time_ms / 1000
                            elif item.type == "granted" and item.data.get("complete"):
                                granted_to.append(item.rid)
                for proc in procs:
                    await anyio.to_thread.run_sync(proc.wait)
                starts = [float(out.read_text()) for out in outs]
                previous = [holder.rid] + granted_to[:-1]
                latencies += [s - released[p] for s, p in zip(starts, previous)]
    await core.aclose()
    return latencies


def report(name: str, lat: list[float]) -> None:
    ms = [x * 1000 for x in lat]
    print(f"| {name} | {len(ms)} | {percentile(ms, 50):.1f} | {percentile(ms, 99):.1f} | "
          f"{max(ms):.1f} |")


def main() -> None:
    with bench_env(gpus=1):
        print(f"machine: {machine()}")
        print("| case | samples | p50 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|")
        report("1 waiter", anyio.run(run, 1, 40))
        report("100 waiters queued", anyio.run(run, 100, 1))


if __name__ == "__main__":
    main()
