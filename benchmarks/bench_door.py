"""The door holds (issue 15): one uid floods the daemon with queued waiters and event
subscribers while another uid's status and reserve/release go on; then the waiters drain.

A real `canhazgpu serve` on a private Redis and 8 fake GPUs, all held. The flood is one
process as uid 65534 (when we are root and setpriv exists; else our own uid) with WAITERS
queued `acquire`s and SUBSCRIBERS `events` connections on the API socket. Meanwhile root
times `view` through the API (p50/p99), `canhazgpu status` as whole processes, and one
reserve+release pair. Then the subscribers hang up, root releases the 8 GPUs, and the flood
ends each grant as it comes: every waiter must be granted exactly once, in FIFO order.

Run: .venv/bin/python benchmarks/bench_door.py [WAITERS] [SUBSCRIBERS]   (default 2000 10000)
Target (2 cores): the other uid's status <= 50 ms p99 while flooded; FIFO, each once.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import psutil

from _common import (RAW_CLIENT, bench_env, daemon, held_pool, kill, machine, percentile,
                     profile)
from canhazgpu.api.client import RemoteCore
from canhazgpu.core import Request
from canhazgpu.errors import NotEnoughGpus
from canhazgpu.identity import current

FLOOD = RAW_CLIENT + r"""
waiters, subscribers = int(sys.argv[2]), int(sys.argv[3])

async def main():
    ask = {"request": {"count": 1, "duration_s": 600}, "wait_s": "inf"}
    queued = [await request("acquire", ask, lambda d: "enqueued" in d) for _ in range(waiters)]
    print(f"flood: {len(queued)} waiters queued", file=sys.stderr, flush=True)
    subs = []
    for start in range(0, subscribers, 256):  # within the listen backlog
        subs += await asyncio.gather(*(request("events", {}, lambda d: d.get("event", 1) is None)
                                       for _ in range(min(256, subscribers - start))))
    print(f"flood: {len(subs)} subscribers", file=sys.stderr, flush=True)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for _, w, _ in subs:
        w.close()
    order, seen = [], set()
    for reader, writer, doc in queued:
        wid = doc["enqueued"]["wid"]
        while True:
            line = json.loads(await reader.readline())
            if "ok" in line:
                break
        got = line["ok"]["rid"]
        order.append(got == wid and got not in seen)
        seen.add(got)
        await request("end", {"rid": got}, lambda d: "ok" in d)
        writer.close()
    print(json.dumps({"granted": len(seen), "fifo_and_once": all(order)}), flush=True)

asyncio.run(main())
"""


def as_other_uid() -> list[str]:
    if os.getuid() == 0 and shutil.which("setpriv"):
        return ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    return []


async def timed_views(remote: RemoteCore, n: int) -> list[float]:
    took = []
    for _ in range(n):
        start = time.perf_counter()
        await remote.view()
        took.append((time.perf_counter() - start) * 1000)
    return took


def timed_status(env: dict, n: int) -> list[float]:
    took = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "canhazgpu", "status"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        took.append((time.perf_counter() - start) * 1000)
    return took


async def main(waiters: int, subscribers: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with bench_env() as (env, _server):
        sock_dir = Path(tempfile.mkdtemp(prefix="canhazgpu-door-"))
        sock_dir.chmod(0o755)
        config_file = Path(env["CANHAZGPU_CONFIG"])
        config_file.write_text(f"user_connections = {waiters + subscribers + 100}\n"
                               f"user_waiters = {waiters + 10}\n")
        env = {**os.environ, **env, "CANHAZGPU_API_SOCKET": str(sock_dir / "api.sock"),
               "CANHAZGPU_CLIENT": "daemon"}
        core = await held_pool(env, 8)
        config = core.config
        flood = None
        try:
            with daemon({**env, "CANHAZGPU_CLIENT": "auto"}) as served:
                remote = RemoteCore(config, str(config.api_path))
                quiet_views = await timed_views(remote, 200)
                quiet_status = timed_status(env, 20)
                rss0 = psutil.Process(served.pid).memory_info().rss
                clients0 = (await core.store.redis.info("clients"))["connected_clients"]
                started = time.perf_counter()
                flood = subprocess.Popen([*as_other_uid(), sys.executable, "-c", FLOOD,
                                          str(config.api_path), str(waiters), str(subscribers)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                assert flood.stdout.readline().strip() == "ready", "the flood failed"
                opened = time.perf_counter() - started
                rss1 = psutil.Process(served.pid).memory_info().rss
                profile(served.pid, 10)  # BENCH_PYSPY=FILE: where the flooded daemon spends it
                clients1 = (await core.store.redis.info("clients"))["connected_clients"]
                views = await timed_views(remote, 200)
                status = timed_status(env, 20)
                # the other uid's changes answer too: a reserve (refused: the queue is first)
                # and a release (its GPU goes to the head of the queue)
                start = time.perf_counter()
                try:
                    await remote.acquire(Request(count=1, duration_s=60))
                    refused = "granted"
                except NotEnoughGpus:
                    refused = "refused: the queue comes first"
                reserve_ms = (time.perf_counter() - start) * 1000
                start = time.perf_counter()
                await remote.release(ids=(7,))
                release_ms = (time.perf_counter() - start) * 1000
                drain0 = time.perf_counter()
                flood.stdin.write("drain\n")
                flood.stdin.flush()
                await core.release(current())
                result = json.loads(flood.stdout.readline())
                drain_s = time.perf_counter() - drain0
        finally:
            kill(flood)
            await core.aclose()
            shutil.rmtree(sock_dir, ignore_errors=True)
    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.2f}")
    print(f"flood as uid {'65534' if as_other_uid() else os.getuid()}: {waiters} waiters + "
          f"{subscribers} subscribers opened in {opened:.1f} s")
    print(f"daemon RSS {rss0 / 2**20:.0f} MB -> {rss1 / 2**20:.0f} MB; Redis clients "
          f"{clients0} -> {clients1}")
    for name, quiet, loaded in (("view through the API", quiet_views, views),
                                ("canhazgpu status (process)", quiet_status, status)):
        print(f"{name}: quiet p50 {percentile(quiet, 50):.1f} / p99 {percentile(quiet, 99):.1f}"
              f" ms; flooded p50 {percentile(loaded, 50):.1f} / p99 "
              f"{percentile(loaded, 99):.1f} ms")
    print(f"while flooded: reserve answered in {reserve_ms:.1f} ms ({refused}), release "
          f"in {release_ms:.1f} ms")
    print(f"drain: {result['granted']} granted in {drain_s:.1f} s, FIFO and each once: "
          f"{result['fifo_and_once']}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    anyio.run(main, *(args + [2000, 10000][len(args):]))
