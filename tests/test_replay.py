"""Every event is kept in the host's capped stream: `events --since SEQ` replays what a
reader missed, in order, then goes on live without printing anything twice."""

from __future__ import annotations

import json

import pytest

from canhazgpu.core import Request

pytestmark = pytest.mark.anyio


async def test_the_stream_keeps_every_published_event_in_order(pool, me):
    res = await pool.allocate(Request(count=2), me)
    await pool.release(me)
    docs = await pool.store.events_since(0)
    assert [d["type"] for d in docs] == ["pool_changed", "reserved", "released"]
    assert [d["seq"] for d in docs] == [1, 2, 3]
    assert docs[1]["rid"] == res.rid
    assert [d["seq"] for d in await pool.store.events_since(2)] == [3]
    assert await pool.store.events_since(3) == []


def test_events_since_replays_then_stops_at_count(cli):
    cli("admin", "--gpus", 4, check=0)
    cli("reserve", "--gpus", 2, check=0)
    cli("release", check=0)
    out = cli("events", "--since", 1, "--json", "--count", 2, timeout=20, check=0).stdout
    docs = [json.loads(line) for line in out.splitlines()]
    assert [(d["seq"], d["type"]) for d in docs] == [(2, "reserved"), (3, "released")]
    out = cli("events", "--since", 0, "--count", 1, timeout=20, check=0).stdout
    assert out.split(" ", 1)[1].startswith("#1 pool_changed")


def test_events_since_says_what_is_no_longer_kept(cli, rclient):
    cli("admin", "--gpus", 4, check=0)
    cli("reserve", check=0)
    stream = "canhazgpu:{testhost}:stream"
    first = rclient.xrange(stream, count=1)[0][0]
    rclient.xdel(stream, first)  # as if the cap had dropped it
    proc = cli("events", "--since", 0, "--json", "--count", 1, timeout=20, check=0)
    assert json.loads(proc.stdout)["seq"] == 2
    assert "events 1 to 1 are no longer kept" in proc.stderr


def test_a_bad_since_is_a_usage_error(cli):
    proc = cli("events", "--since", "x")
    assert proc.returncode == 2 and "invalid --since 'x'" in proc.stderr
