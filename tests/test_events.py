"""Events: the scanner's change detection, the line format, the pub/sub hub's resync
guarantees, and the `canhazgpu events` command."""

from __future__ import annotations

import json
import re

import anyio
import pytest

from canhazgpu.core import Request
from canhazgpu.events import TYPES, Disconnected, Event, EventHub, Resync
from canhazgpu.render import describe, line
from canhazgpu.model import GpuProcess, GpuState, GpuUsage, Hold, PoolView
from canhazgpu.scanner import diff, facts_of
from conftest import wait_until
from eventtools import Lines, reap

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------- change detection (pure)
def view(*gpus: GpuState) -> PoolView:
    return PoolView(now_ms=0, gpus=gpus)


def gpu(i: int, used: int = 0, pids=(), hold: bool = False, error=None) -> GpuState:
    procs = tuple(GpuProcess(pid=p, name="python3", user="bob", used_memory_mb=used)
                  for p in pids)
    return GpuState(gpu=i, usage=GpuUsage(index=i, memory_used_mb=used, processes=procs,
                                          error=error),
                    hold=Hold(gpu=i, rid="r", user="alice", kind="run", start_ms=0)
                    if hold else None)


def test_memory_that_moves_without_crossing_the_threshold_is_no_event():
    before = facts_of(view(gpu(0, used=2000, pids=(7,)), gpu(1, used=10)))
    assert diff(before, view(gpu(0, used=5000, pids=(7,)), gpu(1, used=900))) == []


def test_a_process_on_a_reserved_gpu_is_usage_but_not_unreserved():
    before = facts_of(view(gpu(0, hold=True)))
    events = diff(before, view(gpu(0, used=3000, pids=(7, 8), hold=True)))
    assert [e["type"] for e in events] == ["usage_changed"]
    assert events[0]["started"] == [7, 8] and events[0]["in_use"] is True
    assert "ended" not in events[0]  # empty lists are left out (Lua's cjson)


def test_a_release_under_running_processes_is_unreserved_detected():
    before = facts_of(view(gpu(0, used=3000, pids=(7,), hold=True)))
    events = diff(before, view(gpu(0, used=3000, pids=(7,))))
    assert [e["type"] for e in events] == ["unreserved_detected"]
    assert events[0]["users"] == ["bob"] and events[0]["memory_used_mb"] == 3000


def test_errors_come_first_and_new_gpus_are_a_baseline_for_usage_only():
    before = facts_of(view(gpu(0, used=3000, pids=(7,))))
    events = diff(before, view(gpu(0, error="GPU is lost"), gpu(1, used=5000, pids=(9,)),
                               gpu(2, used=10), gpu(3, error="NotSupported")))
    assert [(e["type"], e["gpus"]) for e in events] == [
        ("gpu_error", [0]), ("usage_changed", [0]), ("unreserved_cleared", [0]),
        ("unreserved_detected", [1]), ("gpu_error", [3])]
    assert events[2]["status"] == "error"


def test_the_first_scan_announces_what_is_wrong_already():
    events = diff({}, view(gpu(0, used=10), gpu(1, used=5000, pids=(9,)), gpu(2, hold=True)))
    assert [(e["type"], e["gpus"]) for e in events] == [("unreserved_detected", [1])]


# ---------------------------------------------------------------- the line format
SAMPLES = {
    "reserved": ({"gpus": [1, 3], "user": "alice", "kind": "run"},
                 "GPU 1,3 reserved by alice (run)"),
    "released": ({"gpus": [1], "user": "alice", "kind": "manual"},
                 "GPU 1 released (alice, manual)"),
    "expired": ({"gpus": [2], "user": "bob", "kind": "manual"}, "GPU 2 expired (bob, manual)"),
    "reclaimed": ({"gpus": [0], "user": "carol", "kind": "run"},
                  "GPU 0 reclaimed (carol, run): owner died"),
    "forced": ({"gpus": [4], "user": "dan", "kind": "run"},
               "GPU 4 ended by a pool resize (dan, run)"),
    "pool_changed": ({"count": 8, "old_count": 4, "provider": "fake"},
                     "pool is 8 GPUs (was 4), provider fake"),
    "queued": ({"user": "erin", "count": 2, "position": 3},
               "erin queued for 2 GPU(s) at position 3"),
    "granted": ({"gpus": [5], "user": "erin", "complete": True}, "GPU 5 granted to erin"),
    "left": ({"user": "erin", "reason": "timeout", "gpus": {}}, "erin left the queue (timeout)"),
    "unreserved_detected": ({"gpus": [2], "users": ["bob"], "memory_used_mb": 1069},
                            "GPU 2 IN USE WITHOUT RESERVATION by bob (1069MB)"),
    "unreserved_cleared": ({"gpus": [2], "status": "available"},
                           "GPU 2 no longer in use without reservation (now available)"),
    "usage_changed": ({"gpus": [2], "memory_used_mb": 1069, "in_use": True, "processes": [
        {"pid": 12345, "name": "python3", "user": "bob"}]},
        "GPU 2 1069MB used (in use): PID 12345 (python3, bob)"),
    "gpu_error": ({"gpus": [3], "error": "GPU is lost"}, "GPU 3 error: GPU is lost"),
    "gpu_recovered": ({"gpus": [3]}, "GPU 3 readable again"),
    "owner": ({"gpus": [1], "user": "alice", "kind": "kernel", "pid": 4242},
              "GPU 1 now held by PID 4242 (alice, kernel)"),
    "idle_warning": ({"gpus": [1, 2], "user": "alice", "kind": "manual", "idle_ms": 3_600_000,
                      "release_in_ms": 10_800_000},
                     "GPU 1,2 (alice, manual) idle for 1h 0m: released in 3h 0m unless used"),
    "expiring": ({"gpus": [1], "user": "alice", "kind": "manual", "expires_in_ms": 600_000},
                 "GPU 1 (alice, manual) expires in 10m"),
    "foreign_use": ({"gpus": [3], "user": "alice", "users": ["bob"]},
                    "GPU 3 reserved by alice is used by bob"),
    "job_submitted": ({"job": 7, "name": "lr0.1", "user": "alice"},
                      "job 7 (lr0.1) submitted by alice"),
    "job_started": ({"job": 7, "user": "alice", "gpus": [0, 1]},
                    "job 7 of alice started on GPU 0,1"),
    "job_ended": ({"job": 7, "user": "alice", "state": "cancelled",
                   "reason": "dependency 6 failed (exit 3)"},
                  "job 7 of alice cancelled: dependency 6 failed (exit 3)"),
}


@pytest.mark.parametrize("kind", TYPES)
def test_every_type_has_a_readable_line(kind):
    fields, text = SAMPLES[kind]
    raw = json.dumps({"v": 1, "seq": 42, "host": "h", "time_ms": 1, "type": kind, **fields})
    event = Event.decode(raw)
    assert describe(event) == text
    assert line(event) == f"#42 {kind}: {text}"


def test_an_unknown_type_is_shown_as_its_fields():
    event = Event.decode('{"v": 2, "seq": 1, "time_ms": 1, "type": "new_thing", "x": 1}')
    assert describe(event) == '{"x": 1}'


# ---------------------------------------------------------------- the hub
async def test_the_hub_resyncs_after_redis_drops_the_subscription(pool, me, rclient):
    hub = EventHub(pool.store)
    async with hub.running(), hub.listen() as stream:
        assert await stream.receive() == Resync(reconnected=False)
        # Whether redis-py re-subscribes by itself or the hub does, receivers are told.
        assert rclient.client_kill_filter(_type="pubsub") >= 1
        with anyio.fail_after(5):
            item = await stream.receive()
            if isinstance(item, Disconnected):
                item = await stream.receive()
            assert item == Resync(reconnected=True)
        await pool.allocate(Request(count=1), me)
        with anyio.fail_after(5):
            assert (await stream.receive()).type == "reserved"


async def test_a_receiver_that_fell_behind_is_told_to_resync(pool, me):
    hub = EventHub(pool.store)
    async with hub.running(), hub.listen(buffer=1) as slow, hub.listen() as fast:
        for stream in (slow, fast):
            assert await stream.receive() == Resync(reconnected=False)
        for _ in range(3):
            await pool.allocate(Request(count=1), me)
        with anyio.fail_after(5):
            got = [(await fast.receive()).type for _ in range(3)]
        assert got == ["reserved"] * 3  # the others are not held up
        assert (await slow.receive()).type == "reserved"  # the rest did not fit
        await pool.allocate(Request(count=1), me)
        with anyio.fail_after(5):
            assert await slow.receive() == Resync(reconnected=True)  # re-read: it missed some
        await pool.allocate(Request(count=1), me)
        with anyio.fail_after(5):
            assert (await slow.receive()).type == "reserved"  # and it is back in step


# ---------------------------------------------------------------- `canhazgpu events`
async def subscribed(rclient, channel: str) -> None:
    """Wait until a child process has subscribed (PUBSUB NUMSUB): Redis announces no
    subscription, so the condition is re-checked with a deadline."""
    await anyio.to_thread.run_sync(
        wait_until, lambda: rclient.pubsub_numsub(channel)[0][1] >= 1)


async def test_events_json_prints_each_event_as_published(pool, cli, me, rclient):
    proc = await cli.open("events", "--json", "--count", "2")
    try:
        await subscribed(rclient, pool.store.channel)
        await pool.allocate(Request(ids=(4,)), me)
        await pool.release(me, ids=(4,))
        out = Lines(proc.stdout)
        docs = [json.loads(await out.next()) for _ in range(2)]
        with anyio.fail_after(10):
            assert await proc.wait() == 0  # --count 2: it ends by itself
    finally:
        await reap(proc)
    assert [d["type"] for d in docs] == ["reserved", "released"]
    assert docs[1]["seq"] == docs[0]["seq"] + 1 and docs[0]["gpus"] == [4]


async def test_events_lines_with_a_type_filter(pool, cli, me, rclient):
    proc = await cli.open("events", "--type", "released", "--count", "1")
    try:
        await subscribed(rclient, pool.store.channel)
        await pool.allocate(Request(ids=(2,)), me)
        await pool.release(me, ids=(2,))
        text = await Lines(proc.stdout).next()
        with anyio.fail_after(10):
            assert await proc.wait() == 0
    finally:
        await reap(proc)
    assert re.fullmatch(rf"\d\d:\d\d:\d\d\.\d{{3}} #\d+ released: GPU 2 released "
                        rf"\({me.user}, manual\)", text)


def test_events_rejects_an_unknown_type(cli):
    out = cli("events", "--type", "reserved,nope")
    assert out.returncode == 2
    assert out.stderr.strip() == ("Error: invalid event type 'nope': use one of "
                                  + ", ".join(TYPES))


def test_events_without_redis_is_one_line(cli, tmp_path):
    out = cli("events", extra_env={"CANHAZGPU_REDIS_URL": f"unix://{tmp_path}/none.sock"})
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and "cannot reach Redis" in out.stderr


async def test_a_receiver_is_woken_only_for_what_it_wants_and_bugs_stay_local(pool, me):
    """EventHub.listen(wants=...) and EventHub.observing: a receiver gets the events its
    predicate passes (Resync and Disconnected always); an observer sees every item in
    the hub's own step. A predicate or an observer that raises is logged: its receiver
    gets the item, and the hub and the others go on."""
    hub = EventHub(pool.store)
    observed = []

    def observer(item):
        observed.append(item)
        raise RuntimeError("an observer's bug")

    released = lambda item: isinstance(item, Event) and item.type == "released"  # noqa: E731
    async with hub.running(), hub.listen(wants=released) as narrow, \
            hub.listen(wants=lambda item: 1 / 0) as broken, hub.listen() as wide:
        with hub.observing(observer):
            res = await pool.allocate(Request(count=1, duration_s=60), me)
            await pool.release(me, ids=res.gpus)
            got = []
            with anyio.fail_after(5):
                while not any(released(i) for i in got):
                    got.append(await wide.receive())
        kinds = [i.type for i in got if isinstance(i, Event)]
        assert kinds == ["reserved", "released"]
        assert [i.type for i in observed if isinstance(i, Event)] == kinds
        first = narrow.receive_nowait()
        if isinstance(first, Resync):
            first = narrow.receive_nowait()
        assert released(first) and first.rid == res.rid
        with pytest.raises(anyio.WouldBlock):
            narrow.receive_nowait()
        assert [i.type for i in _drained(broken) if isinstance(i, Event)] == kinds


def _drained(stream) -> list:
    items = []
    while True:
        try:
            items.append(stream.receive_nowait())
        except anyio.WouldBlock:
            return items
