"""The core on a Redis Cluster of 3 masters and 3 replicas started from the redis-server
binary: every script's keys in one slot, reserve/release/queue, expiry finalized by the
daemon (also after its slot's master failed over), a reservation surviving the failover."""

from __future__ import annotations

import json
from dataclasses import replace

import anyio
import pytest
import redis
from redis.crc import key_slot

from canhazgpu.config import load
from canhazgpu.core import Core, Request
from canhazgpu.errors import NotEnoughGpus
from canhazgpu.store import ARGS, REGISTRY_KEY, Store
from clustertools import _wait, cluster  # noqa: F401 (the fixture)
from eventtools import Recorder, running_daemon

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def cluster_env(cluster, env):
    cluster.flushall()
    return {**env, "CANHAZGPU_REDIS_URL": cluster.url}


@pytest.fixture
async def ccore(cluster_env):
    core = Core(load(env=cluster_env))
    await core.setup_pool(8, "fake", force=False)
    yield core
    await core.aclose()


def hosts_on_every_master(cluster, n=3) -> list[str]:
    """Host names whose slots are served by n different masters."""
    found: dict[int, str] = {}
    for i in range(1000):
        host = f"gpu{i}"
        found.setdefault(cluster.master_of(f"canhazgpu:{{{host}}}:pool").port, host)
        if len(found) == n:
            return sorted(found.values())
    raise AssertionError("no spread of hosts found")


def test_every_scripts_keys_are_in_the_hosts_one_slot():
    store = Store("redis+cluster://127.0.0.1:1", "gpu7")
    for name in ARGS:
        slots = {key_slot(k.encode()) for k in store.keys_for(8)}
        assert len(slots) == 1, name
    assert key_slot(REGISTRY_KEY.encode()) not in slots  # the registry is on its own


async def test_reserve_release_and_queue_on_the_cluster(ccore, me):
    res = await ccore.allocate(Request(count=6), me)
    assert len(res.gpus) == 6
    with pytest.raises(NotEnoughGpus):
        await ccore.allocate(Request(count=3), me)
    waiter = ccore.new_reservation(Request(count=3), me)
    status = await ccore.enqueue(waiter, Request(count=3))
    assert status.position == 1
    view = await ccore.view()
    assert sum(g.hold is not None for g in view.gpus) == 8  # 6 + 2 granted so far
    assert [w.wid for w in view.queue] == [waiter.rid]
    await ccore.release(me, ids=res.gpus[:1])
    assert len((await ccore.queue_heartbeat(waiter.rid)).gpus) == 3
    await ccore.leave(waiter.rid, "cancelled")
    await ccore.release(me)
    assert all(g.hold is None for g in (await ccore.view()).gpus)


async def test_three_hosts_in_three_slots_keep_apart(cluster, cluster_env, me):
    base = load(env=cluster_env)
    cores = [Core(replace(base, host=h)) for h in hosts_on_every_master(cluster)]
    try:
        for n, core in enumerate(cores, 1):
            await core.setup_pool(n, "fake", force=False)
            await core.allocate(Request(count=n), me)
        for n, core in enumerate(cores, 1):
            view = await core.view()
            assert len(view.gpus) == n and all(g.hold for g in view.gpus)
    finally:
        for core in cores:
            await core.aclose()


async def test_the_daemon_finalizes_expiry_on_the_cluster(ccore, me):
    async with Recorder(ccore.store).running() as rec, running_daemon(ccore.config):
        await ccore.allocate(Request(ids=(0,), duration_s=0.3), me)
        await rec.expect("reserved", "expired")


def replicated(cluster, key: str, field: str) -> bool:
    """The replica of key's master has the field (replication is asynchronous)."""
    master = cluster.master_of(key)
    with master.client() as c:
        me = c.execute_command("CLUSTER", "MYID")
        replicas = c.execute_command("CLUSTER", "REPLICAS", me)
    port = int(replicas[0].split()[1].split(":")[1].split("@")[0])
    with redis.Redis(host="127.0.0.1", port=port, decode_responses=True) as r:
        r.execute_command("READONLY")
        return r.hexists(key, field)


def subscribers(cluster, key: str, *channels: str) -> list[int]:
    with cluster.master_of(key).client() as c:
        reply = c.execute_command("PUBSUB", "NUMSUB", *channels)
    return [int(n) for n in reply[1::2]]


async def test_a_reservation_and_the_daemons_expiry_survive_a_master_failing_over(
        cluster, ccore, me):
    holds = ccore.store.key("holds")
    res = await ccore.allocate(Request(ids=(1,), duration_s=3600), me)
    _wait(lambda: replicated(cluster, holds, "1"), 10, "replication")
    async with Recorder(ccore.store).running() as rec, running_daemon(ccore.config):
        master = await anyio.to_thread.run_sync(cluster.fail_over, holds)
        try:
            # both subscriptions moved to the new master: the daemon's (host events and
            # expired keys) and the recorder's (pub/sub misses what comes before that)
            await anyio.to_thread.run_sync(_wait, lambda: subscribers(
                cluster, holds, ccore.store.channel, ccore.store.expired_channel) == [2, 1],
                15, "subscriptions on the new master")
            view = await ccore.view()
            assert view.gpus[1].hold is not None and view.gpus[1].hold.rid == res.rid
            # the daemon's expiry listener moved to the new master: it finalizes at once
            await ccore.allocate(Request(ids=(2,), duration_s=0.5), me)
            await rec.until(lambda e: e.type == "expired" and e.gpus == (2,), timeout=15)
        finally:
            master.start()  # back, as a replica of the promoted node
            await anyio.to_thread.run_sync(cluster.wait_ok)
    assert json.loads(await ccore.store.redis.hget(holds, "1"))["rid"] == res.rid
