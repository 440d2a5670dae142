"""The FIFO queue: order, partial grants, fairness, leaving, and a randomized run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace

import anyio
import pytest

from conftest import held_gpus, wait_until

from canhazgpu.core import Core, Request
from canhazgpu.errors import InvalidRequest
from canhazgpu.events import Event, EventHub
from canhazgpu.waitqueue import LostPlace, Waiter, WaitTimedOut
from eventtools import Lines, reap, rest

pytestmark = pytest.mark.anyio


async def fill(pool, me, n=8):
    """Hold every GPU with one-GPU manual reservations; returns their reservations by GPU."""
    out = {}
    for _ in range(n):
        res = await pool.allocate(Request(count=1), me)
        out[res.gpus[0]] = res
    return out


async def held_by(pool):
    return {g.gpu: g.hold.rid for g in (await pool.view()).gpus if g.hold}


class Waiters:
    """Waiters running as tasks; `granted` lists (name, gpus) in the order they were served."""

    def __init__(self, tg, pool, caller):
        self.tg, self.pool, self.caller = tg, pool, caller
        self.granted: list[tuple[str, tuple]] = []
        self.changed = anyio.Event()
        self.errors: dict[str, BaseException] = {}

    def start(self, name, req, timeout_s=None):
        async def run():
            try:
                res = await self.pool.acquire(req, self.caller(name),
                                              float("inf") if timeout_s is None else timeout_s)
                self.granted.append((name, res.gpus))
            except Exception as err:  # recorded for the test to assert on
                self.errors[name] = err
            self.changed.set()
            self.changed = anyio.Event()
        self.tg.start_soon(run)

    async def until(self, predicate, timeout=10):
        with anyio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()


async def queue_len(pool):
    return len((await pool.store.read_state()).queue)


async def wait_queue(pool, n, timeout=10):
    """Wait until n waiters are queued, woken by the queue events."""
    hub = EventHub(pool.store)
    async with hub.running(), hub.listen() as stream:
        with anyio.fail_after(timeout):
            while await queue_len(pool) < n:
                await stream.receive()


async def test_fifo_order_with_mixed_sizes_and_partial_grants(pool, me, caller):
    holds = await fill(pool, me)
    async with anyio.create_task_group() as tg:
        w = Waiters(tg, pool, caller)
        for name, count in (("a", 3), ("b", 1), ("c", 2)):
            w.start(name, Request(count=count, kind="run"))
            await wait_queue(pool, len(w.granted) + {"a": 1, "b": 2, "c": 3}[name])
        await pool.release(me, ids=(5,))
        # the head holds what it can while it waits for the rest; nobody else gets it
        state = await pool.store.read_state()
        a_wid = state.queue[0].wid
        assert (await held_by(pool))[5] == a_wid
        await pool.release(me, ids=(6,))
        await pool.release(me, ids=(7,))
        await w.until(lambda: len(w.granted) == 1)
        assert w.granted == [("a", (5, 6, 7))]
        await pool.release(me, ids=(0,))
        await w.until(lambda: len(w.granted) == 2)
        await pool.release(me, ids=(1,))
        await pool.release(me, ids=(2,))
        await w.until(lambda: len(w.granted) == 3)
        assert [n for n, _ in w.granted] == ["a", "b", "c"]
        assert w.granted[2][1] == (1, 2)
    assert holds  # the fill reservations are what we released


async def test_a_large_request_is_not_starved_by_small_ones(pool, me, caller):
    await fill(pool, me)
    async with anyio.create_task_group() as tg:
        w = Waiters(tg, pool, caller)
        w.start("big", Request(count=4, kind="run"))
        await wait_queue(pool, 1)
        for k in range(4):
            w.start(f"small{k}", Request(count=1, kind="run"))
            await wait_queue(pool, 2 + k)
        for gpu in range(4):
            await pool.release(me, ids=(gpu,))
        await w.until(lambda: len(w.granted) == 1)
        assert w.granted == [("big", (0, 1, 2, 3))]
        for gpu in range(4, 8):
            await pool.release(me, ids=(gpu,))
        await w.until(lambda: len(w.granted) == 5)
        assert [n for n, _ in w.granted] == ["big", "small0", "small1", "small2", "small3"]


async def test_id_requests_wait_for_their_ids_and_others_pass_them(pool, me, caller):
    holds = await fill(pool, me)
    async with anyio.create_task_group() as tg:
        w = Waiters(tg, pool, caller)
        w.start("wants3", Request(ids=(3,), kind="run"))
        await wait_queue(pool, 1)
        w.start("any", Request(count=1, kind="run"))
        await wait_queue(pool, 2)
        await pool.release(me, ids=(6,))  # GPU 6 is no use to the head: the next one takes it
        await w.until(lambda: len(w.granted) == 1)
        assert w.granted == [("any", (6,))]
        await pool.release(me, ids=(3,))
        await w.until(lambda: len(w.granted) == 2)
        assert w.granted[1] == ("wants3", (3,))
    assert holds


async def test_direct_allocations_do_not_jump_the_queue(pool, me, caller):
    await fill(pool, me)
    async with anyio.create_task_group() as tg:
        w = Waiters(tg, pool, caller)
        w.start("head", Request(count=2, kind="run"))
        await wait_queue(pool, 1)
        await pool.release(me, ids=(4,))
        from canhazgpu.errors import NotEnoughGpus
        with pytest.raises(NotEnoughGpus):
            await pool.allocate(Request(count=1), caller("pushy"))
        await pool.release(me, ids=(5,))
        await w.until(lambda: len(w.granted) == 1)
        assert w.granted == [("head", (4, 5))]


async def test_timeout_leaves_the_queue_and_returns_partial_gpus(pool, me):
    await fill(pool, me)
    await pool.release(me, ids=(2,))
    start = time.monotonic()
    with pytest.raises(WaitTimedOut):
        await Waiter(pool, Request(count=3, kind="run"), me).wait(timeout_s=0.5)
    assert time.monotonic() - start < 5
    assert 2 not in await held_by(pool)
    assert await queue_len(pool) == 0


async def test_requests_that_can_never_be_met_are_refused(pool, me):
    with pytest.raises(InvalidRequest, match="9"):
        await pool.enqueue(pool.new_reservation(Request(count=9), me), Request(count=9))
    with pytest.raises(InvalidRequest, match="8"):
        await pool.enqueue(pool.new_reservation(Request(ids=(8,)), me), Request(ids=(8,)))


async def test_a_waiter_that_lost_its_place_says_so(pool, me, rclient, caller):
    await fill(pool, me)
    async with anyio.create_task_group() as tg:
        w = Waiters(tg, pool, caller)
        w.start("a", Request(count=1, kind="run"))
        await wait_queue(pool, 1)
        rclient.delete(*(pool.store.key(k) for k in ("q:order", "q:waiters", "q:deadlines",
                                                     "q:counts")))
        # the next heartbeat (a third of the queue lease) finds the entry gone
        await w.until(lambda: "a" in w.errors, timeout=15)
    assert isinstance(w.errors["a"], LostPlace)


async def test_randomized_200_waiters_are_each_served_once_in_order(pool, me, env, caller):
    """200 queued requests of random sizes; releases in random order; strict FIFO service."""
    rng = random.Random(5)
    holds = await fill(pool, me)
    core = Core(replace(pool.config, queue_lease="10m"))  # no heartbeats needed here
    sizes = [rng.choice((1, 1, 2, 3, 8)) for _ in range(200)]
    order = []
    for k, size in enumerate(sizes):
        req = Request(count=size, kind="run")
        res = core.new_reservation(req, caller(f"u{k}"))
        await core.enqueue(res, req)
        order.append(res.rid)
    served: list[str] = []
    held: dict[int, str] = {}
    live: list[tuple[str, tuple]] = list((r.rid, r.gpus) for r in holds.values())
    hub = EventHub(pool.store)
    async with hub.running(), hub.listen() as stream:
        while live:
            rid, gpus = live.pop(rng.randrange(len(live)))
            await core.end(rid, me)
            # drain what that release caused: every event its script published
            last = int(await pool.store.redis.get(pool.store.key("seq")))
            seen = 0
            with anyio.fail_after(10):
                while seen < last:
                    item = await stream.receive()
                    if not isinstance(item, Event):
                        continue
                    seen = item.seq
                    if item.type == "granted":
                        for gpu in item.gpus:
                            assert held.get(gpu) in (None, item.rid), f"GPU {gpu} granted twice"
                            held[gpu] = item.rid
                        if item.data["complete"]:
                            assert item.rid not in served
                            served.append(item.rid)
                            live.append((item.rid, item.gpus))
                    elif item.type in ("released", "expired"):
                        for gpu in item.gpus:
                            held.pop(gpu, None)
    assert served == order
    assert await queue_len(pool) == 0
    await core.aclose()


def test_cli_wait_runs_the_command_when_gpus_free_up(cli, tmp_path):
    cli("admin", "--gpus", 2, check=0)
    cli("reserve", "--gpus", 2, check=0)
    out = tmp_path / "out"
    proc = cli.popen("wait", "--gpus", 2, "--", sys.executable, "-c",
                     f"import os, pathlib; pathlib.Path({str(out)!r}).write_text("
                     f"os.environ['CUDA_VISIBLE_DEVICES'])", stderr=subprocess.PIPE,
                     text=True)
    wait_until(lambda: json.loads(cli("queue", "--json").stdout))
    assert json.loads(cli("queue", "--json").stdout)[0]["requested"] == 2
    cli("release", check=0)
    assert proc.wait(timeout=20) == 0
    assert out.read_text() == "0,1"
    assert "position 1 of 1" in proc.stderr.read()


def test_cli_sigkilled_waiter_returns_its_gpus(cli):
    cli("admin", "--gpus", 2, check=0)
    cli("reserve", "--gpu-ids", 0, check=0)
    env = {"CANHAZGPU_QUEUE_LEASE": "1s"}
    proc = cli.popen("wait", "--gpus", 2, "--quiet", "--", "true", extra_env=env)
    wait_until(lambda: held_gpus(cli) == {0, 1})  # holds GPU 1 while it waits for the other
    proc.kill()
    proc.wait()
    wait_until(lambda: held_gpus(cli) == {0}, timeout=10)
    assert json.loads(cli("queue", "--json").stdout) == []


def test_cli_reserve_wait_times_out_cleanly(cli):
    cli("admin", "--gpus", 1, check=0)
    cli("reserve", check=0)
    proc = cli("reserve", "--wait", "0.5s", "--quiet")
    assert proc.returncode == 1 and "left the queue" in proc.stderr
    assert json.loads(cli("queue", "--json").stdout) == []


def test_cli_wait_without_command_reserves_for_the_duration(cli):
    cli("admin", "--gpus", 2, check=0)
    proc = cli("wait", "--gpus", 2, "--duration", "1h", "--short", "--quiet", check=0)
    assert proc.stdout == "0,1\n"
    data = json.loads(cli("status", "--json").stdout)
    res = data["gpus"][0]["reservation"]
    assert res["type"] == "manual" and 3590 < res["expires_in_s"] <= 3600


def test_cli_wait_sigint_leaves_the_queue(cli):
    cli("admin", "--gpus", 1, check=0)
    cli("reserve", check=0)
    proc = cli.popen("wait", "--quiet", "--", "true")
    wait_until(lambda: json.loads(cli("queue", "--json").stdout))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    assert json.loads(cli("queue", "--json").stdout) == []


async def test_estimate_comes_from_manual_expiry_times(pool, me, fake_gpus):
    from canhazgpu.waitqueue import eta_ms
    await pool.allocate(Request(count=5, duration_s=7200), me)
    await pool.allocate(Request(count=2, duration_s=3600), me)
    await pool.allocate(Request(ids=(7,), kind="run"), me)
    # GPU 6 (1h) is also in unreserved use: no request that needs it can be told when
    fake_gpus.write(gpus=[{"index": 5, "memory_used_mb": 4000,
                           "processes": [{"pid": 1, "name": "x", "user": "bob"}]}])
    first, second, third, fourth = (Request(count=2, kind="run"), Request(count=3, kind="run"),
                                     Request(ids=(0,), kind="run"), Request(ids=(7,), kind="run"))
    wids = []
    for req in (first, second, third, fourth):
        res = pool.new_reservation(req, me)
        await pool.enqueue(res, req)
        wids.append(res.rid)
    view = await pool.view()
    eta = {w: eta_ms(view, w) for w in wids}
    hour, now = 3_600_000, view.now_ms
    # the head takes the two 1h GPUs; the next one waits for three of the 2h ones
    assert hour - 10_000 < eta[wids[0]] - now <= hour
    assert 2 * hour - 10_000 < eta[wids[1]] - now <= 2 * hour
    # GPU 0 goes to the second request first (it has no known end then)
    assert eta[wids[2]] is None
    # GPU 7 is held by a run (no known end): no guess, whatever its position
    assert eta[wids[3]] is None


async def test_plain_release_leaves_a_waiting_request_alone(pool, me, caller):
    holds = await fill(pool, me)
    async with anyio.create_task_group() as tg:
        w = Waiters(tg, pool, caller)
        w.start("me", Request(count=2, kind="manual"))
        await wait_queue(pool, 1)
        await pool.release(me, ids=(0,))  # the waiter now holds GPU 0 and waits for one more
        released = await pool.release(caller("me"))  # `canhazgpu release` by the waiter
        assert 0 not in released
        await pool.release(me, ids=(1,))
        await w.until(lambda: len(w.granted) == 1)
        assert w.granted == [("me", (0, 1))]
    assert holds


async def test_shrinking_the_pool_drops_requests_it_can_never_meet(pool, me):
    await fill(pool, me)
    req_big, req_id = Request(count=6, kind="run"), Request(ids=(7,), kind="run")
    for req in (req_big, req_id, Request(count=2, kind="run")):
        await pool.enqueue(pool.new_reservation(req, me), req)
    await pool.setup_pool(4, "fake", force=True)
    state = await pool.store.read_state()
    # the 2-GPU request fits the new pool and is granted at once; the others left
    assert state.queue == ()
    assert set(state.holds) == {0, 1}


async def test_a_waiter_hears_at_once_that_a_shrunk_pool_cannot_meet_it(pool, me, caller):
    await fill(pool, me)
    async with anyio.create_task_group() as tg:
        w = Waiters(tg, pool, caller)
        w.start("big", Request(count=6, kind="run"))
        await wait_queue(pool, 1)
        await pool.setup_pool(4, "fake", force=True)
        await w.until(lambda: "big" in w.errors, timeout=2)  # well before any heartbeat
    assert isinstance(w.errors["big"], LostPlace) and "resized" in str(w.errors["big"])


async def test_leaving_after_a_complete_grant_publishes_every_hold_it_ends(pool, me):
    """A waiter's --timeout firing just after its grant completed: whatever `leave` does
    with the granted GPUs, replaying the events must give the same holds as Redis."""
    req = Request(count=2, kind="run")
    res = pool.new_reservation(req, me)
    hub = EventHub(pool.store)
    async with hub.running(), hub.listen() as stream:
        status = await pool.enqueue(res, req)
        assert status.done and len(status.gpus) == 2  # granted at once, entry deleted
        before = await held_by(pool)
        ended = await pool.leave(res.rid, "timeout")
        after = await held_by(pool)
        seq = int(await pool.store.redis.get(pool.store.key("seq")))
        published = []
        with anyio.fail_after(5):
            while not published or published[-1].seq < seq:
                item = await stream.receive()
                if isinstance(item, Event):
                    published.append(item)
    gone = {g for g, rid in before.items() if after.get(g) != rid}
    assert gone == set(ended)
    told = {g for e in published if e.rid == res.rid and e.type in ("left", "released")
            for g in e.gpus}
    assert told == gone, f"GPUs {sorted(gone - told)} freed without an event"


async def test_a_waiter_survives_a_half_written_fake_gpu_file(pool, me, cli, fake_gpus):
    """The waiter's progress estimate scans the GPUs: a file caught mid-write is one
    warning at most, never a traceback, and the waiter still gets its GPUs."""
    await fill(pool, me, n=8)
    proc = await cli.open("wait", "--gpus", 2, "--", "true")
    try:
        lines = Lines(proc.stderr)
        assert "position 1 of 1" in await lines.next()
        fake_gpus.path.write_text('{"gpus": [{"index": 0, "memory_')  # mid-write
        await pool.release(me, ids=(3,))  # a partial grant: the waiter re-estimates
        said = await lines.next()  # progress, or a warning about the file
        assert "Traceback" not in said, said + await rest(proc.stderr)
        fake_gpus.write()
        await pool.release(me, ids=(4,))
        with anyio.fail_after(30):
            assert await proc.wait() == 0
        assert "Traceback" not in await rest(proc.stderr)
    finally:
        await reap(proc)


async def test_a_grant_from_the_queue_keeps_its_user_within_user_gpus(pool, me):
    """user_gpus counts in the queue's grant too: a waiter whose user holds their limit
    waits, the waiters behind it are served meanwhile, and it is granted once its user
    released some."""
    from dataclasses import replace

    from canhazgpu.core import Core
    core = Core(replace(pool.config, user_gpus=2), pool.store)
    alice = replace(me, is_admin=False)
    bob = replace(me, user="bob", uid=4242, is_admin=False)
    held = await core.allocate(Request(count=2, duration_s=600), alice)  # at her limit
    rest = await core.allocate(Request(count=6, duration_s=600),
                               replace(bob, is_admin=True))  # the pool is full
    req = Request(count=1, kind="run")
    places = {}
    for name, who in (("alice", alice), ("bob", bob)):
        places[name] = core.new_reservation(req, who)
        await core.enqueue(places[name], req, core.gpu_limit(who))
    await core.end(rest.rid, bob)  # 6 free: bob's waiter behind alice's is granted
    status = await core.queue_heartbeats([places["alice"].rid, places["bob"].rid])
    assert status[places["bob"].rid].done and not status[places["alice"].rid].done
    assert status[places["alice"].rid].position == 1
    await core.end(held.rid, alice)  # alice holds none now: hers is granted
    status = await core.queue_heartbeats([places["alice"].rid])
    assert status[places["alice"].rid].done
    holds = (await core.store.read_state()).holds.values()
    assert sum(h.uid == alice.uid for h in holds) == 1
