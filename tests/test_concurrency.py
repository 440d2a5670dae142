"""Many processes allocating at once: no GPU is ever held by two reservations."""

from __future__ import annotations

import json
import subprocess
import sys

import anyio
import pytest
import redis.asyncio as aioredis

pytestmark = pytest.mark.anyio

WORKER = r"""
import random, sys, anyio
from canhazgpu.config import load
from canhazgpu.core import Core, Request
from canhazgpu.errors import NotEnoughGpus
from canhazgpu.identity import current

async def main(n_ops, seed):
    rng = random.Random(seed)
    core = Core(load())
    me = current()
    done = 0
    while done < n_ops:
        try:
            res = await core.allocate(Request(count=rng.choice((1, 1, 2, 3))), me)
        except NotEnoughGpus:
            done += 1
            continue
        await core.end(res.rid, me)
        done += 2
    await core.aclose()

anyio.run(main, int(sys.argv[1]), int(sys.argv[2]))
"""

WORKERS = 32
OPS_PER_WORKER = 70  # 32 x 70 = 2,240 allocate/release operations


async def test_32_processes_never_double_hold_a_gpu(pool, env, redis_url):
    client = aioredis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe(pool.store.channel)
    await pubsub.get_message(timeout=1)
    events: list[dict] = []
    target = {"seq": None}
    caught_up = anyio.Event()

    async def collect():
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                events.append(json.loads(msg["data"]))
                if target["seq"] is not None and events[-1]["seq"] >= target["seq"]:
                    caught_up.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(OPS_PER_WORKER), str(i)],
                                  env=env, stderr=subprocess.PIPE, text=True)
                 for i in range(WORKERS)]
        for proc in procs:
            code = await anyio.to_thread.run_sync(proc.wait)
            assert code == 0, proc.stderr.read()
        # every change was published inside its script: wait for the last one to arrive
        target["seq"] = int(await client.get(pool.store.key("seq")))
        if events and events[-1]["seq"] >= target["seq"]:
            caught_up.set()
        with anyio.fail_after(10):
            await caught_up.wait()
        tg.cancel_scope.cancel()

    held: dict[int, str] = {}
    grants = 0
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "events lost or reordered"
    for event in events:
        if event["type"] == "reserved":
            grants += 1
            for gpu in event["gpus"]:
                assert gpu not in held, f"GPU {gpu} held by {held.get(gpu)} and {event['rid']}"
                held[gpu] = event["rid"]
        elif event["type"] in ("released", "expired"):
            for gpu in event["gpus"]:
                assert held.pop(gpu) == event["rid"]
    assert held == {}, "reservations leaked"
    assert grants > 300  # contention was real, not a sequence of lucky solo runs
    view = await pool.view()
    assert all(g.hold is None for g in view.gpus)
    assert await client.hlen(pool.store.key("holds")) == 0
    await pubsub.aclose()
    await client.aclose()
