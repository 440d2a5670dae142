"""GPU scans and `status`: one full scan in-process (fake: 8 GPUs, 50 processes; NVIDIA when
a GPU is present) and the wall time of `canhazgpu status` in each format.

Run: .venv/bin/python benchmarks/bench_scan.py   (starts its own private Redis)
Targets: fake scan of 8 GPUs <= 5 ms in-process; one NVML scan <= 20 ms per 8 GPUs;
`status` median <= 200 ms wall.
"""

from __future__ import annotations

import subprocess
import sys
import time

import anyio

from _common import bench_env, machine, median, percentile, wall
from canhazgpu.gpu import get_provider, nvidia


def staged_processes(gpus: int = 8, total: int = 50) -> list[dict]:
    """50 processes on GPUs 2..7 (0 and 1 idle, so something can be reserved), with users,
    names and model-serving command lines."""
    out = []
    busy = range(2, gpus)
    for i in range(gpus):
        share = 0 if i not in busy else \
            total // len(busy) + (1 if i - 2 < total % len(busy) else 0)
        procs = [{"pid": 10000 + i * 100 + k, "name": "python3", "user": f"user{k % 3}",
                  "used_memory_mb": 512,
                  "cmdline": ["vllm", "serve", f"org{i}/model-{k}", "--port", str(8000 + k)]}
                 for k in range(share)]
        out.append({"index": i, "name": "Fake H100", "memory_total_mb": 81559,
                    "memory_used_mb": 512 * len(procs), "processes": procs})
    return out


async def time_scans(provider, n: int) -> list[float]:
    await provider.scan()  # warm: imports, NVML init
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await provider.scan()
        times.append(time.perf_counter() - t0)
    return times


def time_sync(fn, n: int) -> list[float]:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    processes = staged_processes()
    with bench_env(gpus=8, processes=processes) as (env, _):
        print(f"machine: {machine()}")
        fake = get_provider("fake", fake_path=env["CANHAZGPU_FAKE_GPUS"])
        times = [t * 1e3 for t in anyio.run(time_scans, fake, 1000)]
        print("| scan | samples | median ms | p99 ms |")
        print("|---|---:|---:|---:|")
        print(f"| fake, 8 GPUs, {sum(len(g['processes']) for g in processes)} processes, "
              f"async (file read + parse) | 1000 | {median(times):.3f} | "
              f"{percentile(times, 99):.3f} |")
        if nvidia.available():
            n = nvidia.count_sync()
            times = [t * 1e3 for t in time_sync(nvidia.scan_sync, 200)]
            print(f"| NVML, {n} GPUs, blocking scan | 200 | {median(times):.3f} | "
                  f"{percentile(times, 99):.3f} |")
            print(f"| NVML, per 8 GPUs | | {median(times) * 8 / max(n, 1):.3f} | |")
        else:
            print("| NVML | skipped: no NVIDIA GPU on this machine | | |")
        print()
        subprocess.run([sys.executable, "-m", "canhazgpu", "admin", "--gpus", "8"], check=True,
                       capture_output=True)
        subprocess.run([sys.executable, "-m", "canhazgpu", "reserve", "--gpus", "2"],
                       check=True, capture_output=True)
        print("| command | median wall ms (20 runs) |")
        print("|---|---:|")
        for args in (["--help"], ["status", "--format", "lines"],
                     ["status", "--format", "table"], ["status", "--json"],
                     ["status", "--summary"]):
            print(f"| canhazgpu {' '.join(args)} | {wall(args):.0f} |")


if __name__ == "__main__":
    main()
