"""Redis going away under a running `run`: the command keeps going, the lease comes back."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from canhazgpu.embedded import RedisServer
from conftest import wait_until


def test_run_survives_a_redis_restart_and_renews_its_lease(cli, tmp_path):
    server = RedisServer(tmp_path / "redis", persist=True).start()
    env = {"CANHAZGPU_REDIS_URL": server.url, "CANHAZGPU_RUN_LEASE": "2s",
           "CANHAZGPU_HEARTBEAT_INTERVAL": "0.3s"}
    ready, go, alive = tmp_path / "ready", tmp_path / "go", tmp_path / "alive"
    child = (f"import pathlib, time\n"
             f"pathlib.Path({str(ready)!r}).write_text('x')\n"
             f"n = 0\n"
             f"while not pathlib.Path({str(go)!r}).exists():\n"
             f"    n += 1; pathlib.Path({str(alive)!r}).write_text(str(n)); time.sleep(0.02)\n")
    try:
        cli("admin", "--gpus", 2, extra_env=env, check=0)
        proc = cli.popen("run", "--gpus", 1, "--", sys.executable, "-c", child,
                         extra_env=env, stderr=subprocess.PIPE, text=True)
        wait_until(ready.exists)
        server.stop()  # a clean shutdown writes the AOF: the reservation survives on disk
        warning = proc.stderr.readline()  # the next heartbeat fails and says so, once
        assert "cannot reach Redis" in warning and "keeps running" in warning
        beat = alive.read_text()
        wait_until(lambda: alive.read_text() != beat)  # the command keeps running without Redis
        server = RedisServer(tmp_path / "redis", persist=True).start()
        restarted_ms = time.time() * 1000

        def renewed():
            out = cli("status", "--json", extra_env=env)
            res = out.returncode == 0 and json.loads(out.stdout)["gpus"][0]["reservation"]
            return bool(res) and res["heartbeat_ms"] >= restarted_ms
        wait_until(renewed)  # the supervisor renewed the lease after the restart
        assert "reachable again" in proc.stderr.readline()
        go.write_text("x")
        assert proc.wait(timeout=20) == 0
        out = json.loads(cli("status", "--json", extra_env=env, check=0).stdout)
        assert all(g["reservation"] is None for g in out["gpus"])
    finally:
        server.stop()


def test_a_waiter_keeps_its_place_across_a_redis_restart(cli, tmp_path):
    server = RedisServer(tmp_path / "redis", persist=True).start()
    env = {"CANHAZGPU_REDIS_URL": server.url, "CANHAZGPU_QUEUE_LEASE": "3s"}
    try:
        cli("admin", "--gpus", 1, extra_env=env, check=0)
        cli("reserve", extra_env=env, check=0)
        out = tmp_path / "ran"
        proc = cli.popen("wait", "--quiet", "--", sys.executable, "-c",
                         f"import pathlib; pathlib.Path({str(out)!r}).write_text('x')",
                         extra_env=env)

        def queued():
            q = cli("queue", "--json", extra_env=env)
            return q.returncode == 0 and len(json.loads(q.stdout)) == 1
        wait_until(queued)
        server.stop()  # clean shutdown: the queue is in the AOF
        server = RedisServer(tmp_path / "redis", persist=True).start()
        wait_until(queued)  # still there after the restart
        cli("release", extra_env=env, check=0)  # the waiter's grant arrives as an event
        assert proc.wait(timeout=30) == 0 and out.exists()
    finally:
        server.stop()


def test_a_waiter_shows_progress_through_a_redis_crash_without_a_traceback(cli, tmp_path):
    server = RedisServer(tmp_path / "redis", persist=True).start()
    env = {"CANHAZGPU_REDIS_URL": server.url, "CANHAZGPU_QUEUE_LEASE": "3s"}
    try:
        cli("admin", "--gpus", 1, extra_env=env, check=0)
        cli("reserve", "-d", "1h", extra_env=env, check=0)
        proc = cli.popen("wait", "--", "true", extra_env=env, stderr=subprocess.PIPE,
                         text=True)
        assert "position 1 of 1" in proc.stderr.readline()  # queued, with progress
        server.kill()  # SIGKILL: what the AOF has is all there is
        assert "cannot reach Redis" in proc.stderr.readline()
        server = RedisServer(tmp_path / "redis", persist=True).start()
        cli("release", extra_env=env, check=0)  # the waiter is still queued: it gets GPU 0
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        server.stop()
