"""`canhazgpu serve` as an admin deploys it: one obvious Redis, `--fake N` to try it out,
a warning when Redis does not persist, fsync always by default, and a systemd unit that
runs the installed canhazgpu."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import anyio
import pytest
import redis

from canhazgpu.embedded import RedisServer
from conftest import Cli
from eventtools import Lines, reap, rest, stop

pytestmark = pytest.mark.anyio


def local_env(env, tmp_path) -> dict:
    """No Redis configured: what a fresh machine has."""
    return {**{k: v for k, v in env.items()
               if k not in ("CANHAZGPU_REDIS_URL", "CANHAZGPU_FAKE_GPUS", "CANHAZGPU_PROVIDER")},
            "CANHAZGPU_STATE_DIR": str(tmp_path / "state")}


async def run(env, *args) -> subprocess.CompletedProcess:
    return await anyio.run_process(Cli.argv(*args), env=env, check=False)


async def test_clients_keep_naming_the_daemons_redis_when_it_is_down(env, tmp_path):
    local = local_env(env, tmp_path)
    state = tmp_path / "state"
    daemon = await anyio.open_process(Cli.argv("serve", "--embedded-redis", "--fake", "4"),
                                      env=local, stdout=subprocess.DEVNULL)
    try:
        log, start = Lines(daemon.stderr), []
        await log.until(lambda line: start.append(line) or "serving host testhost" in line,
                        timeout=20)
        assert any("created a pool of 4 idle fake GPUs" in line for line in start)
        assert not any("appendonly" in line for line in start)  # the AOF is on
        doc = json.loads((await run(local, "status", "--json")).stdout)
        assert len(doc["gpus"]) == 4 and doc["provider"] == "fake"  # --fake made the pool
        assert (await run(local, "reserve", "--gpu-ids", "2", "-d", "1h")).returncode == 0
        checks = json.loads((await run(local, "doctor", "--json")).stdout)["checks"]
        assert {name: c["status"] for name, c in checks.items()} == {
            "redis": "ok", "pool": "ok", "daemon": "ok", "provider": "ok"}
        assert checks["daemon"]["detail"].startswith(f"PID {daemon.pid} on ")
        client = redis.Redis.from_url((state / "redis.url").read_text().strip(),
                                      decode_responses=True)  # with the private password
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.close()
        assert await stop(daemon) == 0
        await rest(log.stream)
    finally:
        await reap(daemon)
    down = await run(local, "status")
    assert down.returncode == 1
    err = down.stderr.decode()
    assert err.startswith(f"Error: the canhazgpu daemon's Redis at unix://:***@{state}/redis.sock "
                          "is not running (")  # never its password
    assert err.count("\n") == 1 and "6379" not in err
    assert err.rstrip().endswith(f"its URL is published in {state}/redis.url): start "
                                 "'canhazgpu serve --embedded-redis'")


async def test_embedded_redis_with_another_configured_redis_is_refused(env, tmp_path):
    proc = await run(env, "serve", "--embedded-redis")
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.startswith(f"Error: --embedded-redis serves unix://{tmp_path}/state/redis.sock, "
                          f"but redis_url is {env['CANHAZGPU_REDIS_URL']} (set by "
                          "$CANHAZGPU_REDIS_URL)")
    assert not (tmp_path / "state").exists()


async def test_serve_warns_once_when_redis_does_not_persist(pool, env):
    daemon = await anyio.open_process(Cli.argv("serve"), env=env, stdout=subprocess.DEVNULL)
    try:
        log = Lines(daemon.stderr)
        await log.until(lambda line: "serving host" in line, timeout=20)
        warning = await log.next()
        assert "WARNING" in warning and "has appendonly no" in warning
        assert "set 'appendonly yes'" in warning
        assert await stop(daemon) == 0
        assert "appendonly" not in await rest(log.stream)
    finally:
        await reap(daemon)


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_embedded_fsync(tmp_path, fsync):
    with RedisServer(tmp_path / "r", persist=True, fsync=fsync) as server:
        client = redis.Redis(unix_socket_path=str(server.socket), decode_responses=True)
        assert client.config_get("appendfsync") == {"appendfsync": fsync}
        client.close()


def test_the_systemd_unit_runs_this_canhazgpu(cli, tmp_path):
    proc = cli("serve", "--print-systemd-unit", check=0)
    assert f"\nExecStart={sys.executable} -m canhazgpu serve --embedded-redis\n" in proc.stdout
    assert "\nUser=canhazgpu\n" in proc.stdout
    unit = tmp_path / "canhazgpu.service"
    unit.write_text(proc.stdout)
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr


async def test_the_first_embedded_daemon_says_when_clients_leave_a_pool_behind(
        pool, env, tmp_path, monkeypatch, caplog):
    import logging

    from canhazgpu import config as settings
    from canhazgpu.cli.serve import _warn_if_clients_move
    monkeypatch.setattr(settings, "DEFAULT_URL", env["CANHAZGPU_REDIS_URL"])  # "localhost"
    fresh = settings.load(env=local_env(env, tmp_path))
    caplog.set_level(logging.INFO, logger="canhazgpu.serve")
    await _warn_if_clients_move(fresh)
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert record.message.startswith(
        f"host testhost has a pool of 8 GPUs in Redis at {env['CANHAZGPU_REDIS_URL']} "
        "(default), which clients used until now; from now on they use this daemon's Redis")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "redis.url").write_text("unix:///x.sock\n")  # set up already
    caplog.clear()
    await _warn_if_clients_move(settings.load(env=local_env(env, tmp_path)))
    assert caplog.records == []
