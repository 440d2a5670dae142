"""The daemon is a door that holds (issue 15): a queued sweep through the API costs the
daemon memory, not Redis connections; everyone else keeps working; the sweep drains in
FIFO order, each waiter granted exactly once."""

from __future__ import annotations

import json
from dataclasses import replace

import anyio
import pytest
import redis

from canhazgpu.api import protocol
from canhazgpu.api.client import RemoteCore
from canhazgpu.core import Request
from canhazgpu.store import MAX_CONNECTIONS
from eventtools import running_daemon

pytestmark = pytest.mark.anyio

SWEEP = 300


def connected_clients(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("clients")["connected_clients"])
    finally:
        client.close()


async def queue_up(path, doc: dict):
    """One waiter: a connection that sent `acquire` with a wait and was told its place."""
    stream = await anyio.connect_unix(path)
    await stream.send(protocol.dump(doc))
    buffered = anyio.streams.buffered.BufferedByteReceiveStream(stream)
    with anyio.fail_after(30):
        while True:
            reply = json.loads(await buffered.receive_until(b"\n", 1 << 20))
            if "enqueued" in reply:
                return stream, buffered, reply["enqueued"]["wid"]
            assert "queued" in reply, reply


async def test_a_sweep_of_waiters_costs_no_redis_connections(pool, config, redis_url):
    async with running_daemon(config) as daemon:
        path = str(config.api_path)
        remote = RemoteCore(config, path)
        held = await remote.acquire(Request(count=8, duration_s=600))
        before = connected_clients(redis_url)
        waiters = []
        ask = {"op": "acquire", "args": {
            "request": protocol.encode(Request(count=1, duration_s=600)), "wait_s": "inf"}}
        try:
            for _ in range(SWEEP):
                waiters.append(await queue_up(path, ask))
            # a queued sweep: the daemon's Redis connections stay bounded...
            assert connected_clients(redis_url) - before <= MAX_CONNECTIONS
            # ...and everyone else keeps working
            with anyio.fail_after(10):
                view = await remote.view()
                _, queue = await remote.queue()
            assert len(view.gpus) == 8
            assert [w.wid for w in queue] == [w[2] for w in waiters], (len(queue), len(waiters))
            # the sweep drains in FIFO order, each waiter granted exactly once
            await remote.release()
            granted = []
            with anyio.fail_after(60):
                for stream, buffered, wid in waiters:
                    while True:
                        doc = json.loads(await buffered.receive_until(b"\n", 1 << 20))
                        if "ok" in doc:
                            break
                    assert doc["ok"]["rid"] == wid
                    granted.append(wid)
                    assert await remote.end(wid) == doc["ok"]["gpus"]
            assert granted == [w[2] for w in waiters]
            state = await daemon.core.store.read_state()
            assert not state.holds and not state.queue
        finally:
            for stream, _, _ in waiters:
                await stream.aclose()
            del held


# ---------------------------------------------------------------------- explicit settings win
async def test_a_daemon_of_another_host_or_redis_is_never_used(pool, config, cli, env):
    """A daemon answering where we look (here: our state directory's socket, as a deployed
    host's daemon would at /run/canhazgpu) serves another host: our explicit settings win,
    and a command reaches the store they name, or fails saying so."""
    decoy = replace(config, host="decoy")
    async with running_daemon(decoy) as daemon:
        assert daemon.core.store.host == "decoy"
        out = await cli.run("reserve", "--gpus", "1", "--short", check=0)
        assert out.stdout == "0\n"  # our host's GPU 0, reserved in our Redis
        view = await pool.view()
        assert [g.gpu for g in view.gpus if g.hold] == [0]
        assert not (await daemon.core.store.read_state()).holds
        refused = await cli.run("--client", "daemon", "status", check=1)
        assert "serves host 'decoy', not 'testhost'" in refused.stderr
        assert "Traceback" not in refused.stderr
    async with running_daemon(config):
        # our host's daemon, but an explicit Redis elsewhere: that Redis, never the daemon
        gone = await cli.run("--redis-url", "redis://127.0.0.1:1/0", "reserve", check=1)
        assert "redis://127.0.0.1:1/0" in gone.stderr
        view = await pool.view()
        assert [g.gpu for g in view.gpus if g.hold] == [0]
        same = await cli.run("--client", "daemon", "release", check=0)
        assert "0" in same.stdout


# ---------------------------------------------------------------------- authority by uid
async def test_authority_is_by_uid_inside_the_scripts(pool, caller):
    """Another uid that happens to carry our name (a uid without a passwd entry is named
    by its number) gets none of our rights: release, end and 'mine' compare uids."""
    mine = await pool.allocate(Request(count=2, duration_s=600), caller())
    namesake = replace(caller(), uid=caller().uid + 4242, is_admin=False)
    from canhazgpu.errors import NotOwner
    with pytest.raises(NotOwner):
        await pool.release(namesake, ids=mine.gpus)
    with pytest.raises(NotOwner):
        await pool.end(mine.rid, namesake)
    assert await pool.release(namesake) == []  # none of "its" manual reservations
    assert {g.gpu for g in (await pool.view()).gpus if g.hold} == set(mine.gpus)
    assert await pool.end(mine.rid, replace(namesake, is_admin=True)) == list(mine.gpus)


async def test_control_characters_are_refused_and_escaped(pool, caller, cli):
    from canhazgpu.errors import InvalidRequest
    with pytest.raises(InvalidRequest, match="control character"):
        Request(count=1, note="x\x1b[31mRED\x1b]0;title\x07")
    bad = await cli.run("reserve", "--note", "x\x1b[31mRED", check=2)
    assert "\x1b" not in bad.stderr and "\\x1b" in bad.stderr
    for huge in (1e9, 1e300, float("nan"), -1.0):
        with pytest.raises(InvalidRequest):
            Request(count=1, duration_s=huge)


# ---------------------------------------------------------------------- wrong state
async def test_wrong_state_is_reported_never_fatal(pool, config, cli, rclient):
    rclient.hset("canhazgpu:{testhost}:pool", "count", "abc")
    async with running_daemon(config):
        for mode in ("direct", "daemon"):
            out = await cli.run("--client", mode, "status", check=1)
            assert "canhazgpu:{testhost}:pool" in out.stderr and "'abc'" in out.stderr
            assert out.stderr.count("\n") == 1 and "bug" not in out.stderr, out.stderr
    rclient.hset("canhazgpu:{testhost}:pool", "count", "8")
    # one bad queue entry is that entry's error, not the whole queue's
    rclient.hset("canhazgpu:{testhost}:q:waiters", "bad", "{not json")
    rclient.zadd("canhazgpu:{testhost}:q:order", {"bad": 1})
    rclient.zadd("canhazgpu:{testhost}:q:deadlines", {"bad": 2 ** 50})
    now_ms, queue = await pool.queue()
    assert [(w.wid, w.kind) for w in queue] == [("bad", "corrupt")]
    assert "q:waiters" in queue[0].note
    out = await cli.run("queue", check=0)
    assert "corrupt" in out.stdout
    rclient.delete("canhazgpu:{testhost}:q:waiters", "canhazgpu:{testhost}:q:order",
                   "canhazgpu:{testhost}:q:deadlines")
    # a host lock without a TTL (no daemon leaves one) is taken over, with a log line
    rclient.set("canhazgpu:{testhost}:daemon", "left by hand")
    async with running_daemon(config):
        assert rclient.pttl("canhazgpu:{testhost}:daemon") > 0


async def test_a_deep_json_request_is_one_protocol_error(pool, config):
    async with running_daemon(config):
        async with await anyio.connect_unix(str(config.api_path)) as stream:
            await stream.send(b'{"v": 1, "op": "view", "args": ' + b"[" * 30000 + b"\n")
            buffered = anyio.streams.buffered.BufferedByteReceiveStream(stream)
            with anyio.fail_after(10):
                reply = json.loads(await buffered.receive_until(b"\n", 1 << 20))
        assert reply["error"]["type"] == "ProtocolError"
        assert "nested too deeply" in reply["error"]["message"]


async def test_a_heartbeat_of_another_uid_renews_and_moves_nothing(pool, caller):
    from canhazgpu.errors import NotOwner
    mine = await pool.allocate(Request(count=1, kind="run"), caller())
    namesake = replace(caller(), uid=caller().uid + 4242, is_admin=False, pid=1)
    forged = replace(mine, record={**mine.record, "uid": namesake.uid, "pid": 1})
    with pytest.raises(NotOwner, match="only its owner can renew it"):
        await pool.heartbeat(forged)
    [hold] = (await pool.store.read_state()).holds.values()
    assert hold.pid == mine.record["pid"] and hold.uid == mine.record["uid"]
    assert await pool.heartbeat(mine) == []


async def test_user_gpus_is_checked_where_the_gpus_are_taken(pool, caller):
    from canhazgpu.core import Core
    from canhazgpu.errors import LimitReached
    limited = Core(replace(pool.config, user_gpus=3), pool.store)
    alice = replace(caller("alice"), is_admin=False)
    await limited.allocate(Request(count=2), alice)
    with pytest.raises(LimitReached, match=r"would make 4, the limit is 3 .* you hold 2"):
        await limited.allocate(Request(count=2), alice)
    with pytest.raises(LimitReached, match="user_gpus 3"):
        await limited.acquire(Request(count=4), alice, 60.0, signals=False)
    await limited.allocate(Request(count=1), alice)  # 3: at the limit, not over it
    await limited.allocate(Request(count=4), replace(alice, is_admin=True))  # admins: none
