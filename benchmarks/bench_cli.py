"""The CLI's wall and CPU time as whole processes: through the daemon `--help`,
`completion bash`, `status`, `queue`, `release`, `reserve` + `release` (two commands), and
`status` in direct mode; with --before SRC, the same commands of another checkout (its
src/ directory, first on PYTHONPATH) interleaved run by run, side by side. Then API pairs/s
and which modules `status` imports through the daemon.

Run: .venv/bin/python benchmarks/bench_cli.py [--before ../main/src] [--no-api | --api-only]
(starts its own private Redis and daemon, each version's own for the API; BENCH_RUNS runs per command, default 20, after
2 warm-up runs). Targets (issue 16, 2 cores): through the daemon status, queue, release
<= 60 ms, reserve + release <= 130 ms, --help and completion <= 50 ms; direct status
<= 120 ms; >= 2,000 allocate+release pairs/s with 16 clients. The API runs twice with 16
clients: on 8 GPUs (half the clients are refused at any moment and ask again at once, so
about a third of the requests are refusals) and on 16 (each client holds one GPU).
"""

from __future__ import annotations

import compileall
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import anyio

from _common import bench_env, daemon, machine, median
from canhazgpu.api.client import RemoteCore, answering
from canhazgpu.config import load
from canhazgpu.errors import NotEnoughGpus
from canhazgpu.request import Request

RUNS = int(os.environ.get("BENCH_RUNS", "20"))
WARMUP = 2
# name: (client mode, the commands of one run), target median wall ms
CASES = {
    "--help": ("daemon", [["--help"]], 50),
    "completion bash": ("daemon", [["completion", "bash"]], 50),
    "status": ("daemon", [["status"]], 60),
    "queue": ("daemon", [["queue"]], 60),
    "release": ("daemon", [["release"]], 60),
    "reserve + release": ("daemon", [["reserve", "--short"], ["release"]], 130),
    "status (direct)": ("direct", [["status"]], 120),
}
SCRIPT = Path(sys.executable).parent / "canhazgpu"  # what people type: the console script


def command(args: list[str]) -> list[str]:
    if SCRIPT.exists():
        return [str(SCRIPT), *args]
    return [sys.executable, "-m", "canhazgpu", *args]


def run(args: list[str], env: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of `canhazgpu ARGS` as a fresh process. CPU time (user +
    system of the child) is what the other users of a shared machine inflate least."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(command(args), check=True, capture_output=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def environments(before: str | None) -> dict:
    """version -> what its processes' environment adds; byte-compiled first (a machine
    that sets PYTHONDONTWRITEBYTECODE would otherwise recompile edited modules every run)."""
    here = str(Path(__file__).resolve().parents[1] / "src")
    versions = {"after": {}}
    if before:
        versions = {"before": {"PYTHONPATH": str(Path(before).resolve())}, **versions}
    for extra in versions.values():
        compileall.compile_dir(extra.get("PYTHONPATH", here), quiet=1)
    return versions


def commands(versions: dict) -> dict:
    """Median (wall ms, CPU ms) per (case, version), versions interleaved run by run."""
    times = {(name, v): [] for name in CASES for v in versions}
    for i in range(WARMUP + RUNS):
        for name, (mode, steps, _) in CASES.items():
            for version, extra in versions.items():
                env = {**os.environ, **extra, "CANHAZGPU_CLIENT": mode}
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                runs = [run(step, env) for step in steps]
                if i >= WARMUP:
                    times[name, version].append((sum(w for w, _ in runs),
                                                 sum(c for _, c in runs)))
    return {key: (median([w for w, _ in v]) * 1e3, median([c for _, c in v]) * 1e3)
            for key, v in times.items()}


def table(figures: dict, versions: dict) -> None:
    names = list(versions)
    print("| command | target ms | " + " | ".join(f"{v} wall ms" for v in names) + " | "
          + " | ".join(f"{v} CPU ms" for v in names) + " |")
    print("|---|---:|" + "---:|" * (2 * len(names)))
    for name, (mode, _, target) in CASES.items():
        walls = " | ".join(f"{figures[name, v][0]:.0f}" for v in names)
        cpus = " | ".join(f"{figures[name, v][1]:.0f}" for v in names)
        label = f"`{name}`" + ("" if mode == "direct" else " (daemon)")
        print(f"| {label} | {target} | {walls} | {cpus} |")


API_SECONDS = 5.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def pairs_per_s(n: int, seconds: float = API_SECONDS) -> tuple[float, float]:
    """(pairs/s, refused/s): n clients through the API, each reserving 1 GPU and
    releasing it, all of one RemoteCore (its connections kept, as a program's are)."""
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
    await remote.aclose()
    return pairs / seconds, refused / seconds


def imports() -> tuple[list[str], list[str]]:
    """(the 15 costliest top-level imports of `status` through the daemon, with their
    cumulative ms; which of redis-py, psutil and ssl it imported)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "canhazgpu", "status"],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "CANHAZGPU_CLIENT": "daemon"})
    rows, names = [], set()
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit() or int(parts[1]) <= 10:
            continue  # (<= 10 us: an import refused at once, e.g. asyncio's ssl)
        name = parts[2][1:]
        names.add(name.strip().split(".")[0])
        if not name.startswith(" "):  # imported by us, not by another module
            rows.append((int(parts[1]), name))
    top = [f"{us / 1000:6.1f} ms  {name}" for us, name in sorted(rows, reverse=True)[:15]]
    return top, [m for m in ("redis", "psutil", "ssl") if m in names]


def main() -> None:
    args = sys.argv[1:]
    before = args[args.index("--before") + 1] if "--before" in args else None
    versions = environments(before)
    print(f"machine: {machine()}; {RUNS} runs per command after {WARMUP} warm-up runs, "
          f"versions interleaved: {', '.join(versions)}"
          + (f" (before: {before})" if before else ""))
    print(f"load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if "--api-only" not in args:
        with bench_env() as (env, server):
            subprocess.run(command(["admin", "--gpus", "8"]), check=True, capture_output=True)
            with daemon(env):
                table(commands(versions), versions)
                top, heavy = imports()
        print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print("status through the daemon, top-level imports (cumulative ms):")
        for row in top:
            print("  " + row)
        print(f"redis-py, psutil or ssl imported by status through the daemon: "
              f"{', '.join(heavy) or 'none'}")
    if "--no-api" not in args:
        # 8 GPUs: half the clients are refused at any moment and ask again at once; 16: each
        # client holds one GPU. Each version's own daemon, the client of this checkout.
        for gpus, clients in ((8, (1, 16)), (16, (16,))):
            with bench_env(gpus=gpus) as (env, server):
                subprocess.run(command(["admin", "--gpus", str(gpus)]), check=True,
                               capture_output=True)
                for version, extra in versions.items():
                    with daemon({**env, **extra}) as serving:
                        for n in clients:
                            api_line(n, gpus, serving, server, version)
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def api_line(n: int, gpus: int, serving, server, version: str) -> None:
    """Print the API's pairs/s with n clients on a pool of `gpus`, and the CPU each
    process spent per pair (refused requests included: a refused client asks again)."""
    before = [cpu_s(serving.pid), cpu_s(server.proc.pid), time.process_time()]
    rate, refused = anyio.run(pairs_per_s, n)
    after = [cpu_s(serving.pid), cpu_s(server.proc.pid), time.process_time()]
    per_pair = [(a - b) / (rate * API_SECONDS) * 1e6 for a, b in zip(after, before)]
    print(f"API ({version}), {n} clients, {gpus} GPUs: {rate:.0f} allocate+release pairs/s "
          f"({refused:.0f} refused/s, {2 * rate + refused:.0f} requests/s); CPU per pair: "
          f"daemon {per_pair[0]:.0f} us, Redis {per_pair[1]:.0f} us, the clients "
          f"{per_pair[2]:.0f} us")


if __name__ == "__main__":
    main()
