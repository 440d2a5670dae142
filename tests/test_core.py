"""The core API against a real Redis: allocation, release, leases, history, events."""

from __future__ import annotations

import json

import anyio
import pytest

from canhazgpu.core import Request
from canhazgpu.errors import (GpusUnavailable, NotEnoughGpus, NotHeld, NotOwner,
                              PoolBusy, PoolNotInitialized)
from conftest import lease_expiry

pytestmark = pytest.mark.anyio


async def next_millisecond(store) -> None:
    """Return once Redis's clock (which stamps release times, in ms) has moved on."""
    async def now_ms() -> int:
        seconds, micros = await store.redis.time()
        return seconds * 1000 + micros // 1000
    start = await now_ms()
    with anyio.fail_after(5):
        while await now_ms() == start:
            pass


async def test_no_pool_is_a_clear_error(core, me):
    with pytest.raises(PoolNotInitialized, match="canhazgpu admin --gpus N"):
        await core.allocate(Request(count=1), me)


async def test_count_allocation_is_lru_with_ties_by_lowest_id(pool, me):
    first = await pool.allocate(Request(count=2), me)
    assert first.gpus == (0, 1)
    await pool.release(me, ids=(1,))
    await next_millisecond(pool.store)  # so that GPU 1's release is the older one
    await pool.release(me, ids=(0,))
    nxt = await pool.allocate(Request(count=3), me)
    assert nxt.gpus == (2, 3, 4)  # never-released GPUs first, lowest id first
    assert (await pool.allocate(Request(count=3), me)).gpus == (5, 6, 7)
    # GPU 1 was released before GPU 0, so it comes first once the never-used ones are gone
    assert (await pool.allocate(Request(count=1), me)).gpus == (1,)
    assert (await pool.allocate(Request(count=1), me)).gpus == (0,)


async def test_lru_prefers_the_gpu_released_longest_ago(pool, me):
    res = await pool.allocate(Request(count=8), me)
    for gpu in (5, 2, 7):
        await pool.release(me, ids=(gpu,))
        await next_millisecond(pool.store)
    assert (await pool.allocate(Request(count=1), me)).gpus == (5,)
    assert (await pool.allocate(Request(count=1), me)).gpus == (2,)
    assert res.gpus == tuple(range(8))


async def test_ids_are_all_or_nothing(pool, me, caller):
    await pool.allocate(Request(ids=(3,)), caller("bob"))
    with pytest.raises(GpusUnavailable, match="GPU 3 is held by bob"):
        await pool.allocate(Request(ids=(1, 3)), me)
    view = await pool.view()
    assert view.gpus[1].hold is None  # nothing taken


async def test_not_enough_gpus_has_the_documents_text(pool, me, fake_gpus):
    fake_gpus.write([
        {"index": 2, "memory_used_mb": 4000, "processes": [{"pid": 1, "name": "python3",
                                                            "user": "bob"}]},
        {"index": 5, "memory_used_mb": 2000, "processes": []},
    ])
    await pool.allocate(Request(count=5), me)
    with pytest.raises(NotEnoughGpus) as err:
        await pool.allocate(Request(count=3), me)
    assert str(err.value) == (
        "Not enough GPUs available. Requested: 3, Available: 1 (2 GPUs in use without "
        "reservation - run 'canhazgpu status' for details)")


async def test_not_enough_without_unreserved_has_no_parenthesis(pool, me):
    await pool.allocate(Request(count=7), me)
    with pytest.raises(NotEnoughGpus) as err:
        await pool.allocate(Request(count=2), me)
    assert str(err.value) == "Not enough GPUs available. Requested: 2, Available: 1"


async def test_unreserved_gpus_are_never_allocated(pool, me, fake_gpus):
    fake_gpus.write([{"index": i, "memory_used_mb": 5000} for i in (0, 1, 2)])
    res = await pool.allocate(Request(count=5), me)
    assert set(res.gpus) == {3, 4, 5, 6, 7}
    with pytest.raises(GpusUnavailable, match="in use without reservation"):
        await pool.allocate(Request(ids=(1,)), me)


async def test_release_checks_the_owner(pool, me, caller):
    await pool.allocate(Request(ids=(4,)), caller("bob"))
    with pytest.raises(NotOwner, match="GPU 4 is reserved by bob"):
        await pool.release(me, ids=(4,))
    with pytest.raises(NotHeld, match="not reserved"):
        await pool.release(me, ids=(5,))
    assert (await pool.view()).gpus[4].hold.user == "bob"


async def test_admin_force_release_of_a_user(pool, caller):
    await pool.allocate(Request(count=2), caller("bob"))
    with pytest.raises(NotOwner):
        await pool.release(caller(admin=False), user="bob", force=True)
    released = await pool.release(caller(admin=True), user="bob", force=True)
    assert released == [0, 1]


async def test_plain_release_ends_only_my_manual_reservations(pool, me, caller):
    await pool.allocate(Request(count=1, kind="run"), me)
    await pool.allocate(Request(count=2), me)
    await pool.allocate(Request(count=1), caller("bob"))
    assert await pool.release(me) == [1, 2]
    held = {g.gpu: g.hold.user for g in (await pool.view()).gpus if g.hold}
    assert held == {0: me.user, 3: "bob"}


async def test_expired_lease_is_never_shown_as_held(pool, me, rclient, env):
    async with lease_expiry(pool.store, {0, 1}) as expired:
        await pool.allocate(Request(count=2, duration_s=0.05), me)
        await expired()
    # nothing has finalized it, yet it is gone from every view and count
    assert rclient.hlen(f"canhazgpu:{{{env['CANHAZGPU_HOST']}}}:holds") == 2
    assert all(g.hold is None for g in (await pool.view()).gpus)
    assert (await pool.allocate(Request(count=8), me)).gpus == tuple(range(8))


async def test_sweep_finalizes_into_history(pool, me):
    async with lease_expiry(pool.store, {0, 1}) as expired:
        await pool.allocate(Request(count=2, duration_s=0.05), me)
        await expired()
    assert await pool.sweep() == [0, 1]
    assert await pool.sweep() == []
    rows = await pool.store.history(0)
    assert sorted((r.gpu, r.reason) for r in rows) == [(0, "expired"), (1, "expired")]
    # the end time is when the lease ran out, not when the sweep noticed
    assert all(r.end_ms - r.start_ms <= 80 for r in rows)


async def test_heartbeat_extends_and_reestablishes_a_lapsed_lease(pool, me, rclient):
    res = await pool.allocate(Request(count=2, kind="run"), me)
    async with lease_expiry(pool.store, {0, 1}) as expired:
        assert await pool.heartbeat(res, ttl_s=0.05) == []
        await expired()
    assert all(g.hold is None for g in (await pool.view()).gpus)
    assert await pool.heartbeat(res) == []  # back, nobody took them
    assert [g.hold.rid for g in (await pool.view()).gpus[:2]] == [res.rid, res.rid]
    # Redis lost everything (restart without persistence): the pool is re-created by admin
    # and the heartbeat puts the reservation back
    rclient.flushall()
    await pool.setup_pool(8, "fake", force=False)
    assert await pool.heartbeat(res) == []
    assert (await pool.view()).gpus[0].hold.rid == res.rid


async def test_heartbeat_reports_gpus_taken_by_someone_else(pool, me, caller):
    res = await pool.allocate(Request(count=1, kind="run"), me)
    async with lease_expiry(pool.store, {0}) as expired:
        await pool.heartbeat(res, ttl_s=0.03)
        await expired()
    await pool.allocate(Request(ids=(0,)), caller("bob"))
    assert await pool.heartbeat(res) == [0]


async def test_resize_refuses_with_live_reservations_unless_forced(pool, me):
    await pool.allocate(Request(count=1), me)
    with pytest.raises(PoolBusy, match="--force"):
        await pool.setup_pool(4, "fake", force=False)
    result = await pool.setup_pool(4, "fake", force=True)
    assert (result["old"], result["new"]) == (8, 4)
    view = await pool.view()
    assert len(view.gpus) == 4 and all(g.hold is None for g in view.gpus)
    again = await pool.setup_pool(4, "fake", force=False)
    assert again["changed"] is False


async def test_report_counts_hours_per_user_including_in_progress(pool, me, caller):
    await pool.allocate(Request(count=2), me)
    await pool.allocate(Request(count=1, kind="run"), caller("bob"))
    await pool.release(me)
    data = await pool.report(1)
    users = {u["user"]: u for u in data["users"]}
    assert users[me.user]["manual"] == 1 and users[me.user]["run"] == 0
    assert users["bob"]["run"] == 1
    assert abs(sum(u["percent"] for u in data["users"]) - 100) < 0.2


async def test_every_change_publishes_one_event_in_sequence(pool, me, redis_url, env):
    import redis.asyncio as aioredis
    client = aioredis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe(pool.store.channel)
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    res = await pool.allocate(Request(count=2), me)
    await pool.release(me)
    events = []
    with anyio.fail_after(5):
        while len(events) < 2:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if msg:
                events.append(json.loads(msg["data"]))
    assert [e["type"] for e in events] == ["reserved", "released"]
    assert events[1]["seq"] == events[0]["seq"] + 1
    assert events[0]["gpus"] == [0, 1] and events[0]["rid"] == res.rid
    assert events[0]["host"] == env["CANHAZGPU_HOST"] and events[0]["v"] == 1
    await pubsub.aclose()
    await client.aclose()
