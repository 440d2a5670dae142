"""The CLI's wall time, direct (Redis) and through the daemon's API, side by side in one
run: `--help`, `status`, `reserve` + `release` as two commands; allocate+release pairs/s
through the API with 16 clients; and which modules `status` imports through the daemon.

Run: .venv/bin/python benchmarks/bench_cli.py   (starts its own private Redis and daemon)
Targets (issue 10, 2 cores, through the daemon): status median <= 85 ms, reserve + release
<= 180 ms, --help <= 60 ms; >= 3,000 allocate+release pairs/s with 16 clients.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import anyio

from _common import bench_env, daemon, machine, median
from canhazgpu.api.client import RemoteCore, answering
from canhazgpu.config import load
from canhazgpu.errors import NotEnoughGpus
from canhazgpu.request import Request

RUNS = int(os.environ.get("BENCH_RUNS", "30"))
MODES = ("direct", "daemon")


def run(args: list[str], mode: str) -> tuple[float, float]:
    """(wall, CPU) seconds of `canhazgpu ARGS` as a fresh process in `mode`. CPU time
    (user + system of the child) tells the modes apart on a machine others load too."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "canhazgpu", *args], check=True,
                   capture_output=True, env={**os.environ, "CANHAZGPU_CLIENT": mode})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def commands() -> dict:
    """Median (wall ms, CPU ms) per (command, mode), the modes interleaved run by run."""
    cases = {"--help": [["--help"]], "status": [["status"]],
             "reserve + release": [["reserve", "--short"], ["release"]]}
    times = {(name, mode): [] for name in cases for mode in MODES}
    for _ in range(RUNS):
        for name, steps in cases.items():
            for mode in MODES:
                runs = [run(step, mode) for step in steps]
                times[name, mode].append((sum(w for w, _ in runs), sum(c for _, c in runs)))
    return {key: (median([w for w, _ in v]) * 1e3, median([c for _, c in v]) * 1e3)
            for key, v in times.items()}


async def pairs_per_s(n: int, seconds: float = 5.0) -> tuple[float, float]:
    """(pairs/s, refused/s): n clients through the API, each reserving 1 GPU and
    releasing it."""
    config = load()
    remote = RemoteCore(config, answering(config))
    pairs = refused = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal pairs, refused
        while time.perf_counter() < stop:
            try:
                res = await remote.acquire(Request(count=1, duration_s=60))
            except NotEnoughGpus:
                refused += 1
                continue
            await remote.release(ids=res.gpus)
            pairs += 1

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(client)
    return pairs / seconds, refused / seconds


def imports() -> tuple[list[str], list[str]]:
    """(the 15 costliest top-level imports of `status` through the daemon, with their
    cumulative ms; which of redis-py and psutil it imported)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "canhazgpu", "status"],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "CANHAZGPU_CLIENT": "daemon"})
    rows, names = [], set()
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2][1:]
        names.add(name.strip().split(".")[0])
        if not name.startswith(" "):  # imported by us, not by another module
            rows.append((int(parts[1]), name))
    top = [f"{us / 1000:6.1f} ms  {name}" for us, name in sorted(rows, reverse=True)[:15]]
    return top, [m for m in ("redis", "psutil") if m in names]


def main() -> None:
    print(f"machine: {machine()}; {RUNS} runs per command, modes interleaved")
    with bench_env() as (env, _server):
        subprocess.run([sys.executable, "-m", "canhazgpu", "admin", "--gpus", "8"],
                       check=True, capture_output=True)
        with daemon(env):
            load = os.getloadavg()[0]
            figures = commands()
            print(f"load average at the start: {load:.1f}")
            print("| command | direct wall ms | daemon wall ms | direct CPU ms | "
                  "daemon CPU ms |")
            print("|---|---:|---:|---:|---:|")
            for name in ("--help", "status", "reserve + release"):
                (dw, dc), (aw, ac) = figures[name, "direct"], figures[name, "daemon"]
                print(f"| {name} | {dw:.0f} | {aw:.0f} | {dc:.0f} | {ac:.0f} |")
            print(f"load average at the end: {os.getloadavg()[0]:.1f}")
            for n in (1, 16):
                rate, refused = anyio.run(pairs_per_s, n)
                print(f"API, {n} clients: {rate:.0f} allocate+release pairs/s "
                      f"({refused:.0f} refused/s)")
            top, heavy = imports()
            print("status through the daemon, top-level imports (cumulative ms):")
            for row in top:
                print("  " + row)
            print(f"redis-py or psutil imported by status through the daemon: "
                  f"{', '.join(heavy) or 'neither'}")


if __name__ == "__main__":
    main()
