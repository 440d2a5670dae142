"""Use it or lose it (docs/idle.md) with the fake provider and a real daemon: idle clocks in
the snapshot and in status, one warning, a release with reason idle, busy GPUs resetting
the clock, runs never released, and the scanner's other reservation events."""

from __future__ import annotations

import anyio
import pytest

from canhazgpu.core import Request
from canhazgpu.render import render_json, render_table
from eventtools import Recorder, running_daemon, sleeper

pytestmark = pytest.mark.anyio
POLICY = {"idle_warn_after": "1s", "idle_release_after": "2s"}


def busy(gpu: int, user: str, mb: int = 3000, **extra) -> dict:
    return {"index": gpu, "memory_used_mb": mb, **extra,
            "processes": [{"pid": 4000 + gpu, "name": "python3", "user": user,
                           "used_memory_mb": mb}]}


async def idle_since(core, gpu: int, timeout: float = 5.0, *, after: int = 0) -> int:
    """The GPU's idle clock once the daemon has set one (later than `after`)."""
    with anyio.fail_after(timeout):
        while True:
            since = (await core.view()).gpus[gpu].idle_since_ms
            if since is not None and since > after:
                return since
            await anyio.sleep(0.05)


async def test_idle_manual_reservation_is_warned_once_then_released(pool, config, me):
    async with Recorder(pool.store).running() as rec, running_daemon(config, **POLICY):
        res = await pool.allocate(Request(ids=(1, 2), duration_s=3600), me)
        await rec.expect("reserved")
        warning = await rec.until(lambda e: e.type != "usage_changed")
        released = await rec.until(lambda e: e.type != "usage_changed")
    assert warning.type == "idle_warning" and warning.rid == res.rid
    assert warning.gpus == (1, 2) and warning.data["idle_ms"] >= 1000
    assert released.type == "released" and released.data["reason"] == "idle"
    assert released.rid == res.rid and released.gpus == (1, 2)
    assert [e["type"] for e in await pool.store.events_since(0)].count("idle_warning") == 1
    history = await pool.store.history(0)
    assert {(h.gpu, h.reason) for h in history if h.rid == res.rid} == {(1, "idle"), (2, "idle")}
    report = await pool.report(1)
    assert report["users"][0]["idle_released"] == 1


async def test_a_busy_gpu_resets_the_clock_and_is_never_warned(pool, config, me, fake_gpus):
    fake_gpus.write([busy(0, me.user)])
    async with Recorder(pool.store).running() as rec, \
            running_daemon(config, idle_warn_after="1s", idle_release_after="30s") as daemon:
        await pool.allocate(Request(ids=(0,), duration_s=3600, claim_own=True), me)
        await rec.until(lambda e: e.type == "reserved")
        await daemon.scanner.scan_once()  # a scan that saw the reservation: busy, no clock
        assert (await pool.view()).gpus[0].idle_since_ms is None
        fake_gpus.write([])  # the holder's job ended
        first = await idle_since(pool, 0)
        fake_gpus.write([{"index": 0, "utilization_pct": 80}])  # computing again, little memory
        with anyio.fail_after(5):
            while (await pool.view()).gpus[0].idle_since_ms is not None:
                await anyio.sleep(0.05)
        fake_gpus.write([])
        again = await idle_since(pool, 0, after=first)
        assert again > first
        await rec.until(lambda e: e.type == "idle_warning")
        view = await pool.view()
    doc = render_json(view)["gpus"][0]["reservation"]
    assert doc["idle_since_ms"] == again and doc["idle_s"] >= 0
    assert "idle " in render_table(view)


async def test_a_run_is_never_released_nor_warned(pool, config, caller):
    supervisor = await sleeper()
    try:
        async with Recorder(pool.store).running() as rec, running_daemon(config, **POLICY):
            res = await pool.allocate(Request(ids=(3,), kind="run"),
                                      caller(process=supervisor))
            await rec.expect("reserved")
            since = await idle_since(pool, 3)
            with anyio.fail_after(10):  # idle past idle_release_after, and still held
                while (await pool.view()).now_ms - since < 3000:
                    await anyio.sleep(0.1)
            view = await pool.view()
            assert view.gpus[3].hold is not None and view.gpus[3].hold.rid == res.rid
            assert view.gpus[3].idle_since_ms == since  # shown, never acted on
            assert not [e for e in await pool.store.events_since(0)
                        if e["type"] in ("idle_warning", "released")]
    finally:
        supervisor.kill()
        await supervisor.aclose()


async def test_policy_off_by_default_yet_the_idle_clock_is_shown(pool, config, me):
    async with running_daemon(config):
        await pool.allocate(Request(ids=(0,), duration_s=3600), me)
        since = await idle_since(pool, 0)
        with anyio.fail_after(10):
            while (await pool.view()).now_ms - since < 1500:
                await anyio.sleep(0.1)
    assert not [e for e in await pool.store.events_since(0)
                if e["type"] in ("idle_warning", "released")]


async def test_expiring_and_foreign_use_events(pool, config, me, fake_gpus):
    async with Recorder(pool.store).running() as rec, \
            running_daemon(config, notify_expiry="2s"):
        res = await pool.allocate(Request(ids=(4,), duration_s=3), me)
        expiring = await rec.until(lambda e: e.type == "expiring")
        fake_gpus.write([busy(4, "mallory")])
        foreign = await rec.until(lambda e: e.type == "foreign_use")
        fake_gpus.write([busy(4, "mallory", 3100)])  # still there: said once
        await rec.until(lambda e: e.type == "expired", timeout=5)
    assert expiring.rid == res.rid and 0 < expiring.data["expires_in_ms"] <= 2000
    assert foreign.data["user"] == me.user and foreign.data["users"] == ["mallory"]
    assert [e["type"] for e in await pool.store.events_since(0)].count("foreign_use") == 1


async def test_status_through_the_daemon_shows_the_idle_clock(pool, config, me, cli):
    import json
    async with running_daemon(config):
        await pool.allocate(Request(ids=(6,), duration_s=3600), me)
        since = await idle_since(pool, 6)
        out = await cli.run("--client", "daemon", "status", "--json")
        table = await cli.run("--client", "daemon", "status", "--format", "table")
    hold = json.loads(out.stdout)["gpus"][6]["reservation"]
    assert hold["idle_since_ms"] == since and hold["idle_s"] >= 0
    assert "idle " in table.stdout.splitlines()[2 + 6]


async def test_a_restarted_daemon_keeps_the_clock_and_does_not_warn_again(pool, config, me):
    policy = {"idle_warn_after": "1s", "idle_release_after": "1h"}
    async with Recorder(pool.store).running() as rec:
        async with running_daemon(config, **policy):
            await pool.allocate(Request(ids=(7,), duration_s=3600), me)
            await rec.until(lambda e: e.type == "idle_warning")
            since = (await pool.view()).gpus[7].idle_since_ms
        async with running_daemon(config, **policy) as daemon:
            for _ in range(5):
                await daemon.scanner.scan_once()
            assert (await pool.view()).gpus[7].idle_since_ms == since
    kept = await pool.store.events_since(0)  # every event published, read or not
    assert [e["type"] for e in kept].count("idle_warning") == 1


def test_an_unreadable_gpu_keeps_the_clock_as_it_was():
    from canhazgpu.idle import Policy, track
    from canhazgpu.model import GpuState, GpuUsage, Hold, PoolView
    hold = Hold(gpu=0, rid="r", user="alice", kind="manual", start_ms=0)
    before = {"r": {"since": 1000, "warned": False, "expiring": False}}
    lost = PoolView(now_ms=10_000_000, gpus=(GpuState(
        gpu=0, hold=hold, usage=GpuUsage(index=0, error="GPU is lost")),))
    after, events, release = track(lost, before, Policy(warn_after_ms=1, release_after_ms=2))
    assert (after, events, release) == (before, [], [])
