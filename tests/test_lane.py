"""The lane (lane.py): a process's scripts pipelined on one Redis connection. Many calls
at once, some of them cancelled while they wait, each get their own reply; a script Redis
lost is loaded again; a dropped connection fails the calls on it, and the next connects
again. Against a real redis-server."""

from __future__ import annotations

import random

import anyio
import pytest

from canhazgpu.core import Request
from canhazgpu.errors import BackendUnavailable

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("connection", ["direct", "redis-py"])
async def test_many_calls_at_once_each_get_their_own_reply(core, connection):
    from canhazgpu.lane import Direct, Lane
    lane = core.store._lane if connection == "direct" else Lane(core.store.redis.connection_pool)
    assert (lane.pool is core.store.redis.connection_pool) == (connection == "redis-py")
    conn = await lane.pool.get_connection()
    assert isinstance(conn, Direct) == (connection == "direct")
    await (conn.disconnect() if connection == "direct" else lane.pool.release(conn))
    got: dict[int, object] = {}
    rng = random.Random(7)

    async def one(i: int) -> None:
        with anyio.move_on_after(0 if rng.random() < 0.2 else 30):  # some cancelled at once
            got[i] = await lane.call("ECHO", f"reply {i}")

    async with anyio.create_task_group() as tg:
        for i in range(2000):
            tg.start_soon(one, i)
    assert got and all(value == f"reply {i}" for i, value in got.items())
    assert not lane.calls and not lane.reading  # every reply read, nobody left reading
    assert await lane.call("ECHO", "after") == "after"
    with pytest.raises(Exception, match="unknown command"):  # an error reply: that call's
        await lane.call("NO-SUCH-COMMAND")
    assert await lane.call("ECHO", "still") == "still"
    await lane.aclose()


def test_the_lane_keeps_redis_pys_connection_where_it_cannot_serve_the_url():
    from canhazgpu.lane import Lane
    pool = object()
    assert Lane(pool, "rediss://h:6380/0").pool is pool  # TLS: redis-py's
    assert Lane(pool, "redis://h:6379/0?ssl_cert_reqs=none").pool is pool
    assert Lane(pool, "redis://:pw@h:6379/2").pool is not pool


async def test_scripts_run_on_the_lane_and_survive_a_script_flush(pool, me, rclient):
    res = await pool.allocate(Request(count=2, duration_s=60), me)
    rclient.script_flush()  # as after a Redis restart: the next EVALSHA says NOSCRIPT
    assert await pool.end(res.rid, me) == sorted(res.gpus)
    assert (await pool.store.read_state()).holds == {}


async def test_a_dropped_connection_fails_its_calls_and_the_next_call_connects(pool, me,
                                                                               rclient):
    lane = pool.store._lane
    name = f"lane-{random.getrandbits(32)}"
    await lane.call("CLIENT", "SETNAME", name)
    [found] = [c for c in rclient.client_list() if c.get("name") == name]
    assert rclient.client_kill_filter(_id=found["id"]) == 1
    with pytest.raises(BackendUnavailable, match="cannot reach Redis"):
        await pool.store.guard(lane.call("PING"))  # the connection is gone: said so
    assert not lane.calls and lane.conn is None
    res = await pool.allocate(Request(count=1, duration_s=60), me)  # connects again
    assert len(res.gpus) == 1
