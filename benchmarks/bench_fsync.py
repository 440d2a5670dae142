"""What `appendfsync always` (the embedded Redis's default) costs against `everysec`:
reserve+release pairs through the core (bench_core's clients), on a private Redis with AOF
on, for 1 and 8 clients.

Run: .venv/bin/python benchmarks/bench_fsync.py   (starts its own private Redis per policy)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import anyio

from _common import bench_env, machine
from bench_core import clients
from canhazgpu.embedded import RedisServer


def main() -> None:
    print(f"machine: {machine()}\n")
    print("| appendfsync | clients | pairs/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- |")
    with bench_env():  # the fake GPU file and a clean CANHAZGPU_* environment
        for fsync in ("always", "everysec"):
            with tempfile.TemporaryDirectory(prefix="canhazgpu-fsync-") as tmp, \
                    RedisServer(Path(tmp), persist=True, fsync=fsync) as server:
                os.environ["CANHAZGPU_REDIS_URL"] = server.url  # bench_env restores it
                for n in (1, 8):
                    r = anyio.run(clients, n)
                    print(f"| {fsync} | {n} | {r['pairs_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                          f"{r['p99_ms']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
