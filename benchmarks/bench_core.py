"""Core API: allocate+release round trips (p50/p99) and throughput with 1, 16 and 64
concurrent clients; wall time of `canhazgpu status` and `canhazgpu --help`.

Run: .venv/bin/python benchmarks/bench_core.py   (starts its own private Redis)
Targets (2 cores): >= 2,000 allocate+release pairs/s with 16 clients; status median <= 200 ms.
"""

from __future__ import annotations

import time

import anyio

from _common import bench_env, daemon, machine, percentile, wall
from canhazgpu.config import load
from canhazgpu.core import Core, Request
from canhazgpu.errors import NotEnoughGpus
from canhazgpu.identity import current

DURATION_S = 5.0


async def clients(n: int) -> dict:
    """n clients, each its own Core (own connections), allocating 1 GPU and releasing it."""
    config = load()
    me = current()
    cores = [Core(config) for _ in range(n)]
    await cores[0].setup_pool(8, "fake", force=False)
    latencies: list[float] = []
    pairs = short = 0

    async def client(core: Core) -> None:
        nonlocal pairs, short
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                res = await core.allocate(Request(count=1), me)
            except NotEnoughGpus:
                short += 1
                continue
            await core.end(res.rid, me)
            latencies.append(time.perf_counter() - t0)
            pairs += 1

    for core in cores:  # warm up: connections and script loading
        await core.end((await core.allocate(Request(count=1), me)).rid, me)
    start = time.perf_counter()
    stop = start + DURATION_S
    async with anyio.create_task_group() as tg:
        for core in cores:
            tg.start_soon(client, core)
    elapsed = time.perf_counter() - start
    for core in cores:
        await core.aclose()
    return {"clients": n, "pairs_per_s": pairs / elapsed, "refused_per_s": short / elapsed, "p50_ms": percentile(latencies, 50) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3, "short": short}


def table(title: str) -> None:
    print(f"{title}\n")
    print("| clients | pairs/s | p50 ms | p99 ms | refused allocations/s |")
    print("|---:|---:|---:|---:|---:|")
    for n in (1, 16, 64):
        r = anyio.run(clients, n)
        print(f"| {n} | {r['pairs_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['refused_per_s']:.0f} |")
    print()


def main() -> None:
    with bench_env() as (env, _):
        print(f"machine: {machine()}\n")
        table("No daemon: every allocation scans the (fake) GPUs itself, in a worker thread")
        with daemon(env):
            table("With `canhazgpu serve`: allocations use its fresh usage snapshot, no scan")
        print(f"canhazgpu --help: median {wall(['--help']):.0f} ms wall (20 runs)")


if __name__ == "__main__":
    main()
