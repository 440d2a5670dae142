"""A fault run's Python client (benchmarks/fault_run.py starts them): allocates by count
and by ids, releases by ids, ends, heartbeats and queues with a timeout, in a random loop
until a wall-clock time, through canhazgpu.core directly. One '.' on stdout per operation;
an unexpected error is a traceback on stderr, which the run reports.

Usage: fault_client.py SEED UNTIL_EPOCH_S POOL_SIZE
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import replace

import anyio

from canhazgpu.config import load
from canhazgpu.core import Core, Request
from canhazgpu.errors import (BackendUnavailable, GpusUnavailable, NotEnoughGpus, NotHeld,
                              NotOwner)
from canhazgpu.identity import current
from canhazgpu.waitqueue import LostPlace, WaitTimedOut
from fault_run import LONGEST_LEASE_S

EXPECTED = (NotEnoughGpus, GpusUnavailable, NotHeld, NotOwner, WaitTimedOut, LostPlace)


async def client(k: int, until: float, gpus: int) -> None:
    rng, core = random.Random(k), Core(load())
    me = replace(current(), user=f"py{k % 1000}")
    try:
        while time.time() < until:
            try:
                await rng.choice((by_count, by_ids, queued, heartbeats))(core, me, rng, gpus)
            except BackendUnavailable:
                await anyio.sleep(0.1)  # Redis is down: try again a little later
                continue
            except EXPECTED:
                pass
            print(".", end="", flush=True)
    finally:
        await core.aclose()


async def hold_then_give_back(core: Core, me, rng, res) -> None:
    await anyio.sleep(rng.uniform(0, 0.05))  # the job
    if rng.random() < 0.4:
        await core.release(me, ids=res.gpus)
    elif rng.random() < 0.7:
        await core.end(res.rid, me)
    # else: left to run out


async def by_count(core, me, rng, gpus):
    req = Request(count=rng.choice((1, 1, 2, 3)), duration_s=rng.uniform(0.5, LONGEST_LEASE_S))
    await hold_then_give_back(core, me, rng, await core.allocate(req, me))


async def by_ids(core, me, rng, gpus):
    ids = tuple(sorted(rng.sample(range(gpus), rng.choice((1, 1, 2)))))
    req = Request(ids=ids, duration_s=rng.uniform(0.5, LONGEST_LEASE_S))
    await hold_then_give_back(core, me, rng, await core.allocate(req, me))


async def queued(core, me, rng, gpus):
    req = Request(count=rng.choice((1, 2)), kind=rng.choice(("run", "manual")),
                  duration_s=LONGEST_LEASE_S)
    await hold_then_give_back(core, me, rng, await core.acquire(req, me, rng.uniform(0.2, 1.5)))


async def heartbeats(core, me, rng, gpus):
    res = await core.allocate(Request(count=1, kind="run"), me)
    for _ in range(rng.randint(1, 3)):
        await anyio.sleep(0.05)
        await core.heartbeat(res)
    await core.end(res.rid, me)



if __name__ == "__main__":
    anyio.run(client, int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
