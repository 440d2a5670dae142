"""Queue wake-up through the daemon with many waiters queued (issue 16): one GPU, N
waiters queued through the API; each one, once granted, ends its reservation at once,
which grants the next. Wake-up = the next waiter's grant line received minus the end
request sent, for every hand-over: the daemon's release, grant and routing to one of N
waiting connections, as a client sees it.

Run: .venv/bin/python benchmarks/bench_wake.py [WAITERS]   (default 1000)
Target (2 cores): p99 <= 20 ms with 1,000 waiters queued.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import anyio

from _common import (RAW_CLIENT, bench_env, daemon, held_pool, kill, machine, percentile,
                     profile)
from canhazgpu.identity import current

CHAIN = RAW_CLIENT + r"""
waiters = int(sys.argv[2])

async def main():
    ask = {"request": {"count": 1, "duration_s": 600}, "wait_s": "inf"}
    queued = []
    for _ in range(waiters):
        queued.append(await request("acquire", ask, lambda d: "enqueued" in d))
    granted, ended = {}, {}

    async def follow(k, reader, writer):
        while "ok" not in (line := json.loads(await reader.readline())):
            pass
        granted[k] = time.perf_counter()
        ended[k] = time.perf_counter()
        await request("end", {"rid": line["ok"]["rid"]}, lambda d: "ok" in d)
        writer.close()

    print("ready", flush=True)
    await asyncio.gather(*(follow(k, r, w) for k, (r, w, _) in enumerate(queued)))
    wake = [(granted[k + 1] - ended[k]) * 1000 for k in range(waiters - 1)]
    print(json.dumps(wake), flush=True)

asyncio.run(main())
"""


async def main(waiters: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with bench_env(gpus=1) as (env, _server):
        env = {**os.environ, **env}
        with open(env["CANHAZGPU_CONFIG"], "w") as out:
            out.write(f"user_waiters = {waiters + 10}\n")
        core = await held_pool(env, 1)
        config = core.config
        chain = None
        try:
            with daemon(env) as served:
                chain = subprocess.Popen([sys.executable, "-c", CHAIN, str(config.api_path),
                                          str(waiters)], stdout=subprocess.PIPE, text=True)
                assert chain.stdout.readline().strip() == "ready"
                profile(served.pid)  # BENCH_PYSPY=FILE: where the daemon spends a hand-over
                started = time.perf_counter()
                await core.release(current())
                wake = json.loads(chain.stdout.readline())
                took = time.perf_counter() - started
        finally:
            kill(chain)
            await core.aclose()
    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.2f}")
    print(f"{waiters} waiters queued on 1 GPU through the daemon: {len(wake)} hand-overs "
          f"in {took:.1f} s")
    print(f"wake-up (end sent -> next grant received): p50 {percentile(wake, 50):.1f} ms, "
          f"p99 {percentile(wake, 99):.1f} ms, max {max(wake):.1f} ms")


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
