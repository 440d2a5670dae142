"""Issue 8's failures, each reproduced: no traceback from a bad file or a Redis error in
the waiter, every freed GPU has its event, one clock (Redis's), the scanner never
announces unreserved use after a reservation of the same GPU, and the one error edge."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import anyio
import pytest
from redis import exceptions as rexc

from canhazgpu.core import Request
from canhazgpu.errors import (BackendUnavailable, InvalidRequest, NotOwner, boundary,
                              expected)
from conftest import wait_until
from eventtools import Recorder, running_daemon

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

pytestmark = pytest.mark.anyio


def bob_on(gpu: int) -> dict:
    return {"index": gpu, "memory_used_mb": 3000,
            "processes": [{"pid": 4242, "name": "python3", "user": "bob",
                           "used_memory_mb": 2900}]}


async def test_leaving_after_a_completed_grant_ends_the_holds_with_an_event(pool, me):
    async with Recorder(pool.store).running() as rec:
        req = Request(count=2, kind="run")
        res = pool.new_reservation(req, me)
        status = await pool.enqueue(res, req)  # free GPUs: granted at once, entry deleted
        assert status.done and len(status.gpus) == 2
        queued, granted = await rec.expect("queued", "granted")
        assert await pool.leave(res.rid, "timeout") == list(status.gpus)  # --timeout fired late
        (released,) = await rec.expect("released")
        assert released.rid == res.rid and released.gpus == status.gpus
        assert released.seq == granted.seq + 1
    assert all(g.hold is None for g in (await pool.view()).gpus)


async def test_leaving_the_queue_with_a_partial_grant_says_what_it_gave_back(pool, me):
    for _ in range(7):
        await pool.allocate(Request(count=1), me)
    async with Recorder(pool.store).running() as rec:
        req = Request(count=2, kind="run")
        res = pool.new_reservation(req, me)
        await pool.enqueue(res, req)
        await rec.expect("queued", "granted")  # partial: the one free GPU
        await pool.leave(res.rid, "cancelled")
        (left,) = await rec.expect("left")
        assert left.gpus == (7,) and left.data["reason"] == "cancelled"


async def test_the_snapshot_is_stamped_and_judged_by_redis_time(pool, monkeypatch, rclient):
    usage = await pool.scan(source="daemon")
    await pool.publish_usage(usage, [])
    secs, micros = rclient.time()
    stamped = int(rclient.hget(pool.store.key("snapshot"), "scanned_ms"))
    assert abs(stamped - (secs * 1000 + micros // 1000)) < 1000
    # this machine's clock an hour off: the daemon's fresh snapshot is still used
    monkeypatch.setattr(time, "time", lambda: secs + 3600.0)
    snap = (await pool.store.read_usage())[1]
    assert snap is not None
    fresh = await pool.usage()
    assert fresh.scanned_ms == stamped


async def test_a_reservation_made_during_a_scan_is_never_followed_by_unreserved_news(
        pool, me, fake_gpus):
    from canhazgpu.scanner import diff
    fake_gpus.write(gpus=[bob_on(2)])
    usage = await pool.scan(source="daemon")
    events = diff({}, await pool.view(usage))  # judged before the reservation below
    assert [e["type"] for e in events] == ["unreserved_detected"]
    fake_gpus.write()
    async with Recorder(pool.store).running() as rec:
        await pool.allocate(Request(ids=(2,), duration_s=60), me)
        assert await pool.publish_usage(usage, events) == [2]
        await pool.release(me)
        seen = await rec.expect("reserved", "released")
    assert all(e.type != "unreserved_detected" for e in seen)


async def test_the_daemon_logs_unreadable_state_by_key_and_keeps_serving(
        pool, config, me, rclient, caplog):
    import logging
    caplog.set_level(logging.INFO, logger="canhazgpu.serve")
    async with running_daemon(config) as daemon, Recorder(pool.store).running() as rec:
        rclient.hset(pool.store.key("released"), "0", "garbage")
        rclient.hset(pool.store.key("snapshot"), "doc", "{half")
        await daemon.scanner.scan_once()
        assert any(pool.store.key("released") in r.message for r in caplog.records)
        await pool.allocate(Request(ids=(1,), duration_s=0.2), me)
        await rec.expect("reserved", "expired")  # still serving


def test_a_waiter_keeps_waiting_through_a_half_written_gpu_file(cli, fake_gpus):
    cli("admin", "--gpus", 2, check=0)
    cli("reserve", "--gpus", 2, check=0)
    proc = cli.popen("wait", "--gpus", "1", "--", "true", stderr=-1, text=True)
    wait_until(lambda: json.loads(cli("queue", "--json").stdout))
    fake_gpus.path.write_text('{"gpus": [')  # half written: every scan fails for now
    cli("release", "--gpu-ids", "0", check=0)  # wakes the waiter: it estimates, and is granted
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "ExceptionGroup" not in err


def test_the_edge_reads_one_error_through_nested_groups():
    inner = NotOwner("only its owner can release it")
    group = BaseExceptionGroup("outer", [ExceptionGroup("inner", [inner]),
                                         asyncio.CancelledError()])
    assert expected(group) is inner
    assert expected(ExceptionGroup("g", [inner, ValueError("bug")])) is None
    assert isinstance(expected(rexc.ConnectionError("gone")), BackendUnavailable)
    assert isinstance(expected(rexc.ResponseError("ERR x")), BackendUnavailable)
    assert "cannot use /etc/x" in str(expected(PermissionError(13, "Permission denied",
                                                               "/etc/x")))
    with pytest.raises(InvalidRequest):
        with boundary():
            raise ExceptionGroup("g", [InvalidRequest("bad")])
    with pytest.raises(ExceptionGroup):  # a bug is never hidden
        with boundary():
            raise ExceptionGroup("g", [KeyError("bug")])

