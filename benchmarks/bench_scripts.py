"""Server time of every state-change script, from Redis's SLOWLOG (microseconds spent
inside Redis, which is single-threaded: a slow script stalls every client).

Scenes: 8 GPUs with no waiters, 64 GPUs with 100 waiters, 64 GPUs with 1,000 waiters (a
mix of count and id requests, every GPU held so they all wait). In each scene a workload
runs every script many times: waiter heartbeats, sweeps, the daemon's usage snapshot,
refused allocations, releases that grant the queue (and the waiter leaving again, so the
queue keeps its length), joining and leaving the queue.

Run: .venv/bin/python benchmarks/bench_scripts.py [--rounds 200]
Target (issue 8): no script over 2 ms of server time with 64 GPUs and 1,000 waiters.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace

import anyio
import redis

from _common import bench_env, machine, percentile
from canhazgpu.config import load
from canhazgpu.core import Core, Request
from canhazgpu.identity import current
from canhazgpu.store import ARGS, script_source


def waiter_request(rng: random.Random, gpus: int) -> Request:
    if rng.random() < 0.3:
        return Request(ids=tuple(sorted(rng.sample(range(gpus), rng.randint(1, 3)))),
                       kind="run")
    return Request(count=rng.randint(1, 4), kind="run")


async def enqueue(core: Core, me, rng, gpus: int) -> str:
    req = waiter_request(rng, gpus)
    res = core.new_reservation(req, replace(me, user=f"u{rng.randrange(50)}"))
    await core.enqueue(res, req)
    return res.rid


async def scene(gpus: int, waiters: int, rounds: int, url: str) -> dict[str, list[float]]:
    rng = random.Random(gpus * 7 + waiters)
    core = Core(replace(load(), queue_lease="1h"))  # waiters need no heartbeat to stay
    me = current()
    sync = redis.Redis.from_url(url)
    sync.flushall()
    await core.setup_pool(gpus, "fake", force=True)
    mine = {}
    for g in range(gpus):
        mine[g] = await core.allocate(Request(ids=(g,), duration_s=3600), me)
    wids = [await enqueue(core, me, rng, gpus) for _ in range(waiters)]
    usage = await core.scan()
    sync.config_set("slowlog-log-slower-than", 0)
    sync.config_set("slowlog-max-len", 1_000_000)
    sync.slowlog_reset()
    for _ in range(rounds):
        for _ in range(3):
            if wids:
                await core.queue_heartbeat(rng.choice(wids))
        await core.sweep()
        await core.publish_usage(usage, [])
        try:
            await core.allocate(Request(count=1), me)
        except Exception:  # every GPU is held: refused, as intended
            pass
        g = rng.randrange(gpus)
        if g in mine:  # free one GPU: the queue takes it; its new holder leaves again
            await core.end(mine.pop(g).rid, me)
            holder = next((x.hold for x in (await core.view(usage)).gpus
                           if x.gpu == g and x.hold), None)
            if holder is not None and holder.rid in wids:
                await core.leave(holder.rid, "timeout")
                wids.remove(holder.rid)
                wids.append(await enqueue(core, me, rng, gpus))
            try:
                mine[g] = await core.allocate(Request(ids=(g,), duration_s=3600), me)
            except Exception:  # granted on to someone else
                pass
        if wids and rng.random() < 0.2:  # someone gives up; someone else joins
            wid = wids.pop(rng.randrange(len(wids)))
            await core.leave(wid, "timeout")
            wids.append(await enqueue(core, me, rng, gpus))
    names = {}
    for name in ARGS:
        names[sync.script_load(script_source(name))] = name
    times: dict[str, list[float]] = {}
    for entry in sync.slowlog_get(1_000_000):
        cmd = entry["command"].decode(errors="replace").split()
        if cmd and cmd[0].upper() == "EVALSHA":
            times.setdefault(names.get(cmd[1], cmd[1]), []).append(entry["duration"])
    sync.config_set("slowlog-log-slower-than", 10000)
    sync.close()
    await core.aclose()
    return times


async def main(rounds: int) -> None:
    results = {}
    with bench_env() as (env, server):
        for gpus, waiters in ((8, 0), (64, 100), (64, 1000)):
            times = await scene(gpus, waiters, rounds, env["CANHAZGPU_REDIS_URL"])
            label = f"{gpus} GPUs / {waiters} waiters"
            results[label] = {}
            print(f"\n{label} ({machine()}): server time per call, microseconds")
            print(f"{'script':<16} {'calls':>6} {'p50':>7} {'p99':>7} {'max':>7}")
            for name in sorted(times):
                t = times[name]
                row = {"calls": len(t), "p50_us": percentile(t, 50),
                       "p99_us": percentile(t, 99), "max_us": max(t)}
                results[label][name] = row
                print(f"{name:<16} {row['calls']:>6} {row['p50_us']:>7.0f} "
                      f"{row['p99_us']:>7.0f} {row['max_us']:>7.0f}")
    json.dump(results, sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    anyio.run(main, parser.parse_args().rounds)
