"""Many hosts: 100 simulated hosts x 8 GPUs (state written through the core: pool, registry
entry, a daemon-style usage snapshot, 3 reservations each) plus 3 real `canhazgpu serve`
daemons, on one Redis and on a 3-master Redis Cluster; wall time of `status --all-hosts
--json` and `hosts` as fresh processes, and Redis memory per host.

Each command runs in direct mode (CANHAZGPU_CLIENT=direct: this process reads Redis) and,
for the views across hosts, through a daemon (=daemon: the daemon of h002, whose socket the
three share, reads Redis and sends the views).

Run: PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/bench_hosts.py [--hosts 100]
     [--runs 20] [--old ../main/src]  (--old: the old code's figures beside, run by run;
     the daemons run this checkout's code for both, so --old compares the clients)
Targets (issue 16): `status --all-hosts --json` median <= 150 ms wall, `hosts` <= 100 ms on
one Redis; <= 250 / 150 ms on the 3-master cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import anyio
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import bench_env, daemon, machine, median, wall  # noqa: E402
from clustertools import Cluster  # noqa: E402

from canhazgpu import hosts  # noqa: E402
from canhazgpu.config import load  # noqa: E402
from canhazgpu.core import Core, Request  # noqa: E402
from canhazgpu.identity import current  # noqa: E402

REAL_DAEMONS = 3
# label -> (target ms of `status --all-hosts --json`, of `hosts`)
targets = {"one redis-server": (150, 100), "cluster, 3 masters + 3 replicas": (250, 150)}


def staged() -> list[dict]:
    """8 GPUs: two in unreserved use by bob, the rest idle."""
    return [{"index": i, "name": "Fake H100", "memory_total_mb": 81559,
             "memory_used_mb": 3000 if i in (6, 7) else 20,
             "processes": [{"pid": 4000 + i, "name": "python3", "user": "bob",
                            "used_memory_mb": 2900, "cmdline": ["python", "train.py"]}]
             if i in (6, 7) else []} for i in range(8)]


async def populate(env: dict, names: list[str]) -> None:
    """Each simulated host as its daemon and its users would leave it, through the core."""
    base = load(env=env)
    me = current()
    limiter = anyio.CapacityLimiter(16)

    async def one(name: str) -> None:
        async with limiter:
            core = Core(replace(base, host=name))
            try:
                await core.setup_pool(8, "fake", force=False)
                await core.publish_usage(await core.scan(source="daemon"), [])
                await hosts.register(core, "up")
                for n in range(3):
                    await core.allocate(Request(count=1, duration_s=86400,
                                                note=f"job {n}"), replace(me, user=f"u{n}"))
            finally:
                await core.aclose()

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)


async def in_process(env: dict, host: str, runs: int) -> float:
    """Median ms of hosts.views() (every host's view) in a warm process: the command's own
    work without Python start-up."""
    core = Core(load(env={**env, "CANHAZGPU_HOST": host}))
    try:
        await hosts.views(core)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            await hosts.views(core)
            times.append(time.perf_counter() - t0)
    finally:
        await core.aclose()
    return median(times) * 1e3


def used_memory(clients: list[redis.Redis]) -> int:
    return sum(int(c.info("memory")["used_memory"]) for c in clients)


def interleaved(args: list[str], runs: int, old_src: str | None) -> tuple[float, str]:
    """Median wall ms of `canhazgpu ARGS` with this checkout's code and, run by run in
    turn (the same machine load for both), with the code in old_src ("" without one)."""
    if not old_src:
        return wall(args, runs), ""
    new_times, old_times = [], []
    mine = os.environ.get("PYTHONPATH", "")
    try:
        for _ in range(runs):
            os.environ["PYTHONPATH"] = old_src
            old_times.append(wall(args, 1))
            os.environ["PYTHONPATH"] = mine
            new_times.append(wall(args, 1))
    finally:
        os.environ["PYTHONPATH"] = mine
    return median(new_times), f"{median(old_times):.0f}"


def measure(label: str, env: dict, clients, n_hosts: int, runs: int,
            old_src: str | None) -> list[str]:
    names = [f"h{i:03d}" for i in range(n_hosts)]
    before = used_memory(clients)
    anyio.run(populate, env, names)
    per_host = (used_memory(clients) - before) / n_hosts
    rows = []
    with ExitStack() as stack:
        for name in names[:REAL_DAEMONS]:
            stack.enter_context(daemon({**env, "CANHAZGPU_HOST": name}))
        os.environ["CANHAZGPU_HOST"] = names[0]
        views, hosts_goal = targets[label]
        for args, target, modes in (
                (["status", "--all-hosts", "--json"], views, ("direct", "daemon")),
                (["hosts"], hosts_goal, ("direct", "daemon")),
                (["hosts", "--json"], None, ("direct", "daemon")),
                (["status", "--json"], None, ("direct",)), (["--version"], None, ("direct",))):
            for mode in modes:
                os.environ["CANHAZGPU_CLIENT"] = mode
                new, old = interleaved(args, runs, old_src)
                goal = f"<= {target}" if target else ""
                rows.append(f"| {label} | `{' '.join(args)}` | {mode} | {old} | {new:.0f} | "
                            f"{goal} |")
                print(rows[-1], flush=True)
        os.environ.pop("CANHAZGPU_CLIENT")
        ms = anyio.run(in_process, env, names[0], runs)
        rows.append(f"| {label} | every host's view in a warm process (`hosts.views`) | "
                    f"direct | | {ms:.0f} | |")
        print(rows[-1], flush=True)
    rows.append(f"| {label} | Redis memory per host (8 GPUs, 3 reservations, snapshot, "
                f"registry entry) | | | {per_host / 1024:.1f} KiB | |")
    print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--old", metavar="SRC", help="Also time the code in SRC (e.g. the "
                        "src/ of a checkout of main), run by run in turn with ours")
    opts = parser.parse_args()
    print(f"machine: {machine()}; {opts.hosts} hosts x 8 GPUs, {REAL_DAEMONS} real daemons, "
          f"median of {opts.runs} fresh processes; load average {os.getloadavg()[0]:.1f}")
    print("| Redis | command | client | old: median wall ms | new | target |\n"
          "|---|---|---|---:|---:|---:|")
    with bench_env(gpus=8, processes=staged()) as (env, server):
        client = redis.Redis(unix_socket_path=str(server.socket))
        measure("one redis-server", env, [client], opts.hosts, opts.runs, opts.old)
        client.close()
        with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp)) as cluster:
            masters = [n.client() for n in cluster.nodes[:3]]
            cenv = {**env, "CANHAZGPU_REDIS_URL": cluster.url}
            os.environ["CANHAZGPU_REDIS_URL"] = cluster.url
            measure("cluster, 3 masters + 3 replicas", cenv, masters, opts.hosts, opts.runs,
                    opts.old)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
