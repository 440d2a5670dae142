"""`canhazgpu serve` against a real Redis: every event type from a real change, expiry,
crash reclaim, PID reuse, one daemon per host, clean shutdown, and a Redis restart."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import time
from dataclasses import replace

import anyio
import psutil
import pytest
import redis

from canhazgpu.config import load
from canhazgpu.core import Core, Request
from canhazgpu.embedded import RedisServer
from canhazgpu.events import TYPES
from canhazgpu.identity import process_start
from canhazgpu.store import Store
from conftest import Cli, lease_expiry
from eventtools import Lines, Recorder, reap, rest, running_daemon, sleeper, stop

pytestmark = pytest.mark.anyio
LOCK = "canhazgpu:{testhost}:daemon"


def bob_on(gpu: int) -> dict:
    return {"index": gpu, "memory_used_mb": 3000,
            "processes": [{"pid": 4242, "name": "python3", "user": "bob",
                           "used_memory_mb": 2900}]}


async def test_every_event_type_in_order_with_consecutive_sequence_numbers(
        core, config, fake_gpus, me, caller):
    async with Recorder(core.store).running() as rec:
        await core.setup_pool(4, "fake", force=False)
        await rec.expect("pool_changed")
        async with running_daemon(config):
            await core.allocate(Request(ids=(0,), duration_s=0.3), me)
            await rec.expect("reserved", "expired")  # finalized by the daemon

            await core.allocate(Request(ids=(1,)), me)
            await core.release(me, ids=(1,))
            await rec.expect("reserved", "released")

            supervisor = await sleeper()
            await core.allocate(Request(ids=(2,), kind="run"), caller(process=supervisor))
            await rec.expect("reserved")
            supervisor.kill()
            await rec.expect("reclaimed")
            await supervisor.aclose()

            server, kernel = await sleeper(), await sleeper()  # a Jupyter kernel's hold
            res = await core.allocate(Request(ids=(2,), kind="kernel"), caller(process=server))
            await rec.expect("reserved")
            await core.heartbeat(replace(res, record={**res.record, "pid": kernel.pid,
                                                      "pid_start": process_start(kernel.pid)}))
            await rec.expect("owner")
            kernel.kill()
            await rec.expect("reclaimed")
            await reap(server, kernel)

            await core.allocate(Request(count=4), me)
            waiter = core.new_reservation(Request(count=1), me)
            await core.enqueue(waiter, Request(count=1))
            await rec.expect("reserved", "queued")
            await core.release(me, ids=(3,))
            await rec.expect("released", "granted")
            quitter = core.new_reservation(Request(count=1), me)
            await core.enqueue(quitter, Request(count=1))
            await core.leave(quitter.rid, "cancelled")
            await rec.expect("queued", "left")

            await core.setup_pool(3, "fake", force=True)
            await rec.expect("forced", "forced", "pool_changed")

            fake_gpus.write([bob_on(1)])
            detected = (await rec.expect("usage_changed", "unreserved_detected"))[1]
            fake_gpus.write([])
            cleared = (await rec.expect("usage_changed", "unreserved_cleared"))[1]
            fake_gpus.write([{"index": 2, "error": "GPU is lost"}])
            error = (await rec.expect("gpu_error"))[0]
            fake_gpus.write([])
            await rec.expect("gpu_recovered")

    seqs = [e.seq for e in rec.seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # the scanner's reservation events (idle warning, expiry, intruders): tests/test_idle.py;
    # the detached jobs' events: tests/test_jobs.py
    assert {e.type for e in rec.seen} == set(TYPES) - {
        "idle_warning", "expiring", "foreign_use", "job_submitted", "job_started", "job_ended"}
    assert detected.gpus == (1,) and detected.data["users"] == ["bob"]
    assert cleared.data["status"] == "available"
    assert error.data["error"] == "GPU is lost"
    assert all(e.data["v"] == 1 and e.host == "testhost" for e in rec.seen)


async def test_no_event_when_nothing_changed(pool, config, fake_gpus):
    fake_gpus.write([bob_on(2)])
    async with running_daemon(config) as daemon, Recorder(pool.store).running() as rec:
        for _ in range(3):  # scans that see the same thing publish nothing
            assert await daemon.scanner.scan_once() == []
        fake_gpus.write([{**bob_on(2), "memory_used_mb": 3500}])  # same processes, still busy
        assert await daemon.scanner.scan_once() == []
        fake_gpus.write([])
        await rec.expect("usage_changed", "unreserved_cleared")


async def time_to_expiry(pool, config, me, ttl_s: float, scan_interval: str):
    """(seconds from reserving for ttl_s to its `expired` event, rid), a daemon running."""
    async with running_daemon(config, scan_interval=scan_interval), \
            Recorder(pool.store).running() as rec:
        start = time.monotonic()
        res = await pool.allocate(Request(count=1, duration_s=ttl_s), me)
        await rec.until(lambda e: e.type == "expired" and e.rid == res.rid, timeout=3)
        return time.monotonic() - start, res.rid


async def test_a_lease_is_finalized_within_a_second_of_its_ttl(pool, config, me):
    # Scans are 30 s apart: only the keyspace notification can be this quick.
    elapsed, rid = await time_to_expiry(pool, config, me, 0.5, scan_interval="30s")
    assert elapsed <= 0.5 + 1.0
    history = await pool.store.history(0)
    assert [h.reason for h in history if h.rid == rid] == ["expired"]


async def test_the_daemon_turns_expiry_notifications_on_keeping_other_flags(pool, config,
                                                                          rclient):
    rclient.config_set("notify-keyspace-events", "Kg")
    try:
        async with running_daemon(config):
            flags = rclient.config_get("notify-keyspace-events")["notify-keyspace-events"]
    finally:
        rclient.config_set("notify-keyspace-events", "Ex")
    assert set("KgEx") <= set(flags)


async def test_without_keyspace_notifications_a_periodic_sweep_finalizes(
        pool, config, me, rclient, monkeypatch, caplog):
    async def refused(self):
        return "ERR unknown command 'CONFIG'"
    monkeypatch.setattr(Store, "enable_expiry_notifications", refused)
    rclient.config_set("notify-keyspace-events", "")
    caplog.set_level(logging.INFO, logger="canhazgpu.serve")
    try:
        elapsed, _ = await time_to_expiry(pool, config, me, 0.3, scan_interval="0.3s")
        assert elapsed <= 0.3 + 1.0
    finally:
        rclient.config_set("notify-keyspace-events", "Ex")
    said = [r.message for r in caplog.records if "keyspace notifications" in r.message]
    assert len(said) == 1 and "sweep every 0.3s" in said[0]


async def test_a_sigkilled_run_supervisor_is_reclaimed_within_two_seconds(pool, config, cli):
    async with running_daemon(config), Recorder(pool.store).running() as rec:
        supervisor = await cli.open("run", "--gpus", "1", "--", "sleep", "60",
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        try:
            reserved = await rec.until(lambda e: e.type == "reserved", timeout=20)
            start = time.monotonic()
            supervisor.kill()
            reclaimed = await rec.until(lambda e: e.type == "reclaimed", timeout=3)
            assert time.monotonic() - start <= 2.0
            assert reclaimed.rid == reserved.rid and reclaimed.gpus == reserved.gpus
        finally:
            try:
                os.killpg(supervisor.pid, signal.SIGKILL)  # its orphaned `sleep`
            except ProcessLookupError:
                pass
            await supervisor.aclose()
    view = await pool.view()
    assert all(g.hold is None for g in view.gpus)


async def test_a_reused_pid_does_not_keep_a_dead_reservation_alive(pool, config, caller):
    alive = await sleeper()
    try:
        async with Recorder(pool.store).running() as rec:
            # Made before the daemon starts: it learns it from the state, not an event.
            reused = await pool.allocate(Request(ids=(1,), kind="run"),
                                         caller(process=alive,
                                                start=process_start(alive.pid) - 3600))
            async with running_daemon(config) as daemon:
                event = await rec.until(lambda e: e.type == "reclaimed")
                assert event.rid == reused.rid
                real = await pool.allocate(Request(ids=(0,), kind="run"), caller(process=alive))
                await rec.until(lambda e: e.type == "reserved" and e.rid == real.rid)
                with anyio.fail_after(5):
                    while real.rid not in daemon.watcher.watched:
                        await daemon.watcher.reconciled.wait()
                    await daemon.watcher.watched[real.rid].verified.wait()
                view = await pool.view()
                assert view.gpus[0].hold.rid == real.rid and view.gpus[1].hold is None
    finally:
        alive.kill()
        await alive.aclose()


async def test_a_second_daemon_for_the_host_is_refused(pool, config, cli):
    async with running_daemon(config):
        result = await cli.run("serve")
    err = result.stderr.strip().splitlines()
    assert result.returncode == 1
    assert len(err) == 1, err
    assert err[0].startswith("Error: another canhazgpu daemon is already serving host "
                             "testhost (PID ")


async def test_sigterm_stops_the_daemon_and_leaves_no_state_behind(pool, config, cli, me,
                                                                   caller, rclient):
    supervisor = await sleeper()
    run = await pool.allocate(Request(ids=(0,), kind="run"), caller(process=supervisor))
    manual = await pool.allocate(Request(ids=(1,), duration_s=600), me)
    daemon = await cli.open("serve", stdout=subprocess.DEVNULL)
    try:
        log = Lines(daemon.stderr)
        await log.until(lambda line: "serving host testhost" in line, timeout=20)
        assert rclient.exists(LOCK)
        assert psutil.Process(daemon.pid).children() == []
        assert await stop(daemon) == 0
        tail = await rest(log.stream)
        assert "Traceback" not in tail and "stopped" in tail
    finally:
        await reap(daemon, supervisor)
    assert not rclient.exists(LOCK)
    view = await pool.view()  # the daemon leaves reservations alone when it stops
    assert view.gpus[0].hold.rid == run.rid and view.gpus[1].hold.rid == manual.rid
    async with running_daemon(config):  # and the next daemon starts at once
        pass


async def test_a_killed_daemon_is_replaced_at_once(pool, config, cli, rclient, caplog):
    daemon = await cli.open("serve", stdout=subprocess.DEVNULL)
    try:
        await Lines(daemon.stderr).until(lambda line: "serving host" in line, timeout=20)
        daemon.kill()
        await daemon.wait()
        assert rclient.exists(LOCK)  # its lock outlives it (for up to 5 s)...
        caplog.set_level(logging.INFO, logger="canhazgpu.serve")
        async with running_daemon(config):  # ...but a daemon on the same machine takes over
            pass
        assert any("took over" in r.message for r in caplog.records)
    finally:
        await reap(daemon)


async def test_corrupt_state_is_reported_with_its_key_and_survived(pool, config, me, rclient,
                                                                   caplog):
    caplog.set_level(logging.INFO, logger="canhazgpu.serve")
    async with running_daemon(config) as daemon, Recorder(pool.store).running() as rec:
        rclient.hset("canhazgpu:{testhost}:holds", "5", "{not json")
        await daemon.scanner.scan_once()
        assert any("canhazgpu:{testhost}:holds" in r.message for r in caplog.records)
        (healed,) = await rec.expect("expired")  # no lease names it: finalized at once
        assert healed.gpus == (5,)
        await pool.allocate(Request(ids=(1,), duration_s=0.2), me)
        await rec.expect("reserved", "expired")  # still serving


async def held(cli) -> set[int]:
    doc = json.loads((await cli.run("status", "--json", check=0)).stdout)
    return {g["id"] for g in doc["gpus"] if g["reservation"]}


async def test_embedded_redis_is_found_without_configuration_and_keeps_its_data(env, tmp_path):
    state = tmp_path / "embedded-state"
    local = Cli({**{k: v for k, v in env.items() if k != "CANHAZGPU_REDIS_URL"},
                 "CANHAZGPU_STATE_DIR": str(state)})
    for first in (True, False):
        daemon = await local.open("serve", "--embedded-redis", stdout=subprocess.DEVNULL)
        try:
            log = Lines(daemon.stderr)
            await log.until(lambda line: "serving host testhost" in line, timeout=20)
            url = (state / "redis.url").read_text().strip()
            password = (state / "redis.pass").read_text().strip()
            # private by construction (issue 15): a 0700 directory, a password kept 0600,
            # a socket only the daemon's user may open
            assert url == f"unix://:{password}@{state}/redis.sock" and len(password) >= 32
            assert stat.S_IMODE(state.stat().st_mode) == 0o700
            for name in ("redis.url", "redis.pass", "redis.sock"):
                assert stat.S_IMODE((state / name).stat().st_mode) & 0o077 == 0, name
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(unix_socket_path=str(state / "redis.sock")).ping()
            servers = psutil.Process(daemon.pid).children()
            assert len(servers) == 1
            if first:
                await local.run("admin", "--gpus", "2", check=0)
                await local.run("reserve", "--gpu-ids", "1", "-d", "1h", check=0)
            else:  # the AOF brought the reservation back, after a stop and after a crash
                assert await held(local) == {1}
                servers[0].kill()  # the daemon starts its Redis again
                await log.until(lambda line: "redis-server running again" in line)
                servers = psutil.Process(daemon.pid).children()
                assert await held(local) == {1}
            assert await stop(daemon) == 0
            await rest(log.stream)
        finally:
            await reap(daemon)
        assert (state / "redis.url").exists()  # kept: clients keep naming this Redis
        assert not psutil.pid_exists(servers[0].pid)


async def test_redis_restart_under_a_daemon_and_a_follower(tmp_path, env, fake_gpus, me):
    server = RedisServer(tmp_path / "redis", persist=True).start()
    local = Cli({**env, "CANHAZGPU_REDIS_URL": server.url, "CANHAZGPU_SCAN_INTERVAL": "0.2s"})
    core = Core(load(env=local.env))
    procs = []
    try:
        await core.setup_pool(4, "fake", force=False)
        daemon = await local.open("serve", stdout=subprocess.DEVNULL)
        procs.append(daemon)
        daemon_log = Lines(daemon.stderr)
        await daemon_log.until(lambda line: "serving host" in line, timeout=20)
        follow = await local.open("status", "--follow")
        procs.append(follow)
        docs, notes = Lines(follow.stdout), Lines(follow.stderr)
        assert json.loads(await docs.next())["event"] is None

        async def doc_where(predicate) -> dict:
            return json.loads(await docs.until(lambda line: predicate(json.loads(line))))

        kept = await core.allocate(Request(ids=(0,), duration_s=3600), me)
        short = await core.allocate(Request(ids=(1,), duration_s=1.5), me)
        await doc_where(lambda d: d["gpus"][1]["reservation"] is not None)

        server.kill()
        await notes.until(lambda line: "cannot reach Redis" in line)
        await daemon_log.until(lambda line: "cannot reach Redis" in line)
        server = RedisServer(tmp_path / "redis", persist=True).start()
        async with lease_expiry(core.store, {1}) as expired:  # during the outage, or now
            await expired(timeout=10)

        await notes.until(lambda line: "reachable again" in line)
        await daemon_log.until(lambda line: "redis: working again" in line)
        after = await doc_where(lambda d: d["gpus"][1]["reservation"] is None)
        assert after["gpus"][0]["reservation"]["id"] == kept.rid  # AOF: nothing lost
        fake_gpus.write([bob_on(2)])  # the daemon scans and publishes again
        doc = await doc_where(lambda d: (d["event"] or {}).get("type") == "unreserved_detected")
        assert doc["gpus"][2]["status"] == "unreserved"

        history = await core.store.history(0)
        assert [h.reason for h in history if h.rid == short.rid] == ["expired"]
        for proc in procs:
            assert await stop(proc) == 0
    finally:
        await reap(*procs)
        await core.aclose()
        server.stop()


async def test_a_failed_scan_is_shown_and_said_at_once(pool, config, fake_gpus):
    """Issue 17: after a scan failure, status does not show the last scan's usage until
    it ages; every GPU reads as unreadable, and a gpu_error event says why."""
    async with running_daemon(config), Recorder(pool.store).running() as rec:
        fake_gpus.path.write_text("{not json")
        event = await rec.until(lambda e: e.type == "gpu_error", timeout=10)
        assert "scan failed" in event.data["error"]
        view = await pool.view()
        assert all(g.status == "error" and "scan failed" in g.error for g in view.gpus)
        fake_gpus.write()
        await rec.until(lambda e: e.type == "gpu_recovered", timeout=10)


def test_the_daemons_log_lines_read_as_loggings_own():
    """LogLines formats the time once a second (a journal line per event): the same text
    as logging's own formatter, second after second."""
    from canhazgpu.daemon import LogLines
    fmt = "%(asctime)s %(levelname)s %(message)s"
    ours, theirs = LogLines(fmt), logging.Formatter(fmt)
    for created in (1.0e9, 1.0e9 + 0.25, 1.0e9 + 0.999, 1.0e9 + 1.0, 1.0e9 + 3600.5):
        record = logging.LogRecord("canhazgpu.serve", logging.INFO, "", 0, "#%d released",
                                   (7,), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == theirs.format(record)
