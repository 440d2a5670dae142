"""What `appendfsync always` (the embedded Redis's default) costs against `everysec`:
reserve+release pairs through the core, on a private Redis with AOF on, 1 and 8 clients.

Run: .venv/bin/python benchmarks/bench_fsync.py   (starts its own private Redis per policy)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anyio

from _common import bench_env, machine, percentile
from canhazgpu.config import load
from canhazgpu.core import Core, Request
from canhazgpu.embedded import RedisServer
from canhazgpu.errors import NotEnoughGpus
from canhazgpu.identity import current

DURATION_S = 3.0


async def pairs(url: str, clients: int) -> dict:
    """`clients` cores reserving 1 GPU for 1h and releasing it, for DURATION_S."""
    config = load({"redis_url": url})
    me = current()
    cores = [Core(config) for _ in range(clients)]
    await cores[0].setup_pool(8, "fake", force=True)
    latencies: list[float] = []

    async def client(core: Core) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                res = await core.allocate(Request(count=1, duration_s=3600), me)
            except NotEnoughGpus:
                continue
            await core.end(res.rid, me)
            latencies.append(time.perf_counter() - t0)

    for core in cores:  # connections and scripts loaded before timing
        await core.end((await core.allocate(Request(count=1, duration_s=60), me)).rid, me)
    start = time.perf_counter()
    stop = start + DURATION_S
    async with anyio.create_task_group() as tg:
        for core in cores:
            tg.start_soon(client, core)
    elapsed = time.perf_counter() - start
    for core in cores:
        await core.aclose()
    return {"clients": clients, "pairs_per_s": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3}


async def main() -> None:
    print(f"machine: {machine()}")
    print("| appendfsync | clients | pairs/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- |")
    with bench_env():  # the fake GPU file and a clean CANHAZGPU_* environment
        for fsync in ("always", "everysec"):
            with tempfile.TemporaryDirectory(prefix="canhazgpu-fsync-") as tmp:
                with RedisServer(Path(tmp), persist=True, fsync=fsync) as server:
                    for clients in (1, 8):
                        r = await pairs(server.url, clients)
                        print(f"| {fsync} | {clients} | {r['pairs_per_s']:,.0f} | "
                              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} |", flush=True)


if __name__ == "__main__":
    anyio.run(main)
