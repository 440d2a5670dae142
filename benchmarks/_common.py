"""Shared set-up for benchmarks: a private Redis, a fake GPU file, an environment."""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from canhazgpu.embedded import RedisServer


@contextmanager
def bench_env(gpus: int = 8, processes: list | None = None):
    """Start a private redis-server and yield the CANHAZGPU_* environment for it."""
    with tempfile.TemporaryDirectory(prefix="canhazgpu-bench-") as tmp:
        fake = Path(tmp) / "gpus.json"
        fake.write_text(json.dumps({"count": gpus, "gpus": processes or []}))
        (Path(tmp) / "config.toml").write_text("")
        with RedisServer(Path(tmp) / "redis") as server:
            env = {
                "CANHAZGPU_REDIS_URL": server.url, "CANHAZGPU_HOST": "bench",
                "CANHAZGPU_PROVIDER": "fake", "CANHAZGPU_FAKE_GPUS": str(fake),
                "CANHAZGPU_CONFIG": str(Path(tmp) / "config.toml"),
                "CANHAZGPU_STATE_DIR": str(Path(tmp) / "state"),
            }
            old = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                yield env, server
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def wall(args: list[str], runs: int = 20) -> float:
    """Median wall time in ms of `canhazgpu ARGS` as a fresh process."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "canhazgpu", *args], check=True,
                       capture_output=True)
        times.append(time.perf_counter() - t0)
    return median(times) * 1e3


def wait_for_line(path: Path, text: str, timeout: float = 30.0) -> None:
    """Wait for a log line of a process we started (no event to wait on: re-read the log)."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if time.monotonic() > deadline:
            raise SystemExit(f"daemon did not start: {path.read_text()}")
        time.sleep(0.05)


@contextmanager
def daemon(env: dict):
    """`canhazgpu serve` as its own process, running until the block ends; yields it."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "canhazgpu", "serve"],
                                    env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                    stderr=out)
        try:
            wait_for_line(log, "serving host")
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)


# The start of a raw API client run as its own process (as another uid, in the door and
# wake-up benchmarks): `request(op, args, until)` opens a connection to sys.argv[1], sends
# one request, and returns (reader, writer, the first reply line that satisfies `until`).
RAW_CLIENT = r"""
import asyncio, json, sys, time
path = sys.argv[1]

async def request(op, args, until):
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    writer.write(json.dumps({"v": 1, "op": op, "args": args}).encode() + b"\n")
    while True:
        doc = json.loads(await reader.readline())
        if "error" in doc:
            raise SystemExit(f"{op}: {doc['error']['message']}")
        if until(doc):
            return reader, writer, doc
"""


def kill(*procs) -> None:
    """Kill and reap the processes a benchmark started (None: never started)."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def profile(pid: int, seconds: float = 8) -> None:
    """With BENCH_PYSPY=FILE: record where process `pid` spends the next `seconds` (py-spy,
    raw folded stacks), in the background."""
    if os.environ.get("BENCH_PYSPY"):
        subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(seconds), "-f", "raw",
                          "-o", os.environ["BENCH_PYSPY"]], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)


async def held_pool(env: dict, gpus: int):
    """The Core of a pool of `gpus` fake GPUs, every one held by us for an hour: nothing is
    granted from the queue until we release them."""
    from canhazgpu.config import load
    from canhazgpu.core import Core, Request
    from canhazgpu.identity import current
    core = Core(load(env=env))
    await core.setup_pool(gpus, "fake", force=False)
    await core.allocate(Request(count=gpus, duration_s=3600), current())
    return core
