"""The service (issue 4): change -> event at a subscriber, reclaim after SIGKILL, the daemon's
idle CPU, and `status` with a fresh daemon snapshot.

Starts its own private Redis, 8 fake GPUs and a `canhazgpu serve` daemon (1 s scans).
- event latency: a subscriber in this process (events.EventHub) times each script-made
  change from the moment the change's call starts (allocate or release through the core) to
  the moment its event arrives: an upper bound, the call itself included;
- usage events: from writing the fake GPU file (at a random point of the scan cycle) to the
  scanner's usage_changed event: bounded by the scan interval, informational;
- reclaim: `canhazgpu run --gpus 1 -- sleep 60` is SIGKILLed; time to the `reclaimed` event;
- idle CPU: the daemon's user+system CPU time over 20 s with nothing changing;
- status: median wall time of `canhazgpu status` (a fresh process) over 20 runs.

Run: .venv/bin/python benchmarks/bench_events.py
Targets (2 cores): event p99 <= 50 ms; reclaim <= 2 s; idle CPU <= 2% of one core;
`status` median <= 150 ms.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psutil

from _common import bench_env, daemon, machine, median, percentile, wall
from canhazgpu.config import load
from canhazgpu.core import Core, Request
from canhazgpu.events import Event, EventHub
from canhazgpu.identity import current

PAIRS = 500
USAGE_SAMPLES = 20
RECLAIMS = 10
IDLE_S = 20.0


async def next_event(stream, predicate, timeout: float = 10.0) -> Event:
    with anyio.fail_after(timeout):
        while True:
            item = await stream.receive()
            if isinstance(item, Event) and predicate(item):
                return item


async def script_latencies(core: Core, stream) -> list[float]:
    me = current()
    out = []
    for _ in range(PAIRS):
        t0 = time.perf_counter()
        res = await core.allocate(Request(count=1, duration_s=600), me)
        await next_event(stream, lambda e: e.type == "reserved" and e.rid == res.rid)
        out.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await core.end(res.rid, me)
        await next_event(stream, lambda e: e.type == "released" and e.rid == res.rid)
        out.append(time.perf_counter() - t0)
    return out


async def usage_latencies(fake: Path, stream) -> list[float]:
    out = []
    for k in range(USAGE_SAMPLES):
        gpus = [] if k % 2 else [{"index": 7, "memory_used_mb": 2048, "processes": [
            {"pid": 4242, "name": "python3", "user": "bob", "used_memory_mb": 2000}]}]
        await anyio.sleep(random.random())  # changes land anywhere in the scan cycle
        t0 = time.perf_counter()
        fake.write_text(json.dumps({"count": 8, "gpus": gpus}))
        await next_event(stream, lambda e: e.type == "usage_changed")
        out.append(time.perf_counter() - t0)
    return out


async def reclaim_times(env: dict, stream) -> list[float]:
    out = []
    for _ in range(RECLAIMS):
        sup = subprocess.Popen([sys.executable, "-m", "canhazgpu", "run", "--gpus", "1", "--",
                                "sleep", "60"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            reserved = await next_event(stream, lambda e: e.type == "reserved", timeout=30)
            await anyio.sleep(0.2)  # the watcher has its pidfd; SIGKILL an established run
            t0 = time.perf_counter()
            sup.kill()
            await next_event(stream, lambda e: e.type == "reclaimed" and e.rid == reserved.rid)
            out.append(time.perf_counter() - t0)
        finally:
            try:
                os.killpg(sup.pid, signal.SIGKILL)  # the orphaned `sleep`
            except ProcessLookupError:
                pass
            sup.wait()
    return out


async def measure(env: dict) -> dict:
    core = Core(load())
    hub = EventHub(core.store)
    try:
        async with hub.running(), hub.listen(buffer=10000) as stream:
            ms = [t * 1e3 for t in await script_latencies(core, stream)]
            usage = [t * 1e3 for t in
                     await usage_latencies(Path(env["CANHAZGPU_FAKE_GPUS"]), stream)]
            reclaim = await reclaim_times(env, stream)
    finally:
        await core.aclose()
    return {"events": ms, "usage": usage, "reclaim": reclaim}


def idle_cpu_percent(pid: int) -> float:
    proc = psutil.Process(pid)
    before, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(IDLE_S)  # the measurement window itself
    after, t1 = proc.cpu_times(), time.monotonic()
    used = (after.user - before.user) + (after.system - before.system)
    return 100 * used / (t1 - t0)


def main() -> None:
    with bench_env(gpus=8) as (env, _):
        env = {**os.environ, **env}
        subprocess.run([sys.executable, "-m", "canhazgpu", "admin", "--gpus", "8"],
                       check=True, capture_output=True, env=env)
        with daemon(env) as proc:
            got = anyio.run(measure, env)
            time.sleep(2)  # let the last reclaim's after-effects settle before idling
            cpu = idle_cpu_percent(proc.pid)
            status_ms = wall(["status"])
    ev, usage, reclaim = got["events"], got["usage"], got["reclaim"]
    print(f"machine: {machine()}")
    print("| measure | samples | p50 | p99 | max | target |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| script change -> event at subscriber | {len(ev)} | {median(ev):.1f} ms | "
          f"{percentile(ev, 99):.1f} ms | {max(ev):.1f} ms | p99 <= 50 ms |")
    print(f"| GPU usage change -> event (1 s scans) | {len(usage)} | {median(usage):.0f} ms | "
          f"{percentile(usage, 99):.0f} ms | {max(usage):.0f} ms | |")
    print(f"| SIGKILL of `run` -> reclaimed event | {len(reclaim)} | "
          f"{median(reclaim) * 1e3:.0f} ms | {percentile(reclaim, 99) * 1e3:.0f} ms | "
          f"{max(reclaim) * 1e3:.0f} ms | <= 2 s |")
    print(f"| daemon idle CPU, 8 fake GPUs, 1 s scans, {IDLE_S:.0f} s | 1 | {cpu:.2f}% of a "
          f"core | | | <= 2% |")
    print(f"| `canhazgpu status`, fresh snapshot, wall | 20 | {status_ms:.0f} ms (median) "
          f"| | | <= 150 ms |")


if __name__ == "__main__":
    main()
