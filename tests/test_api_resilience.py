"""The daemon's API under stress: a daemon SIGKILLed and restarted under a running `run`,
garbage from clients (hypothesis), and hundreds of idle connections while others work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canhazgpu.api import protocol
from canhazgpu.api.ops import OPS
from canhazgpu.api.client import RemoteCore, answering
from canhazgpu.core import Request
from conftest import held_gpus, wait_until
from eventtools import running_daemon

pytestmark = pytest.mark.anyio


def start_daemon(env) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "canhazgpu", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = load_config(env)
    wait_until(lambda: proc.poll() is not None or answering(config) is not None)
    assert proc.poll() is None
    return proc


def load_config(env):
    from canhazgpu.config import load
    return load(env=env)


def test_a_run_carries_on_through_a_daemon_restart(cli, env, tmp_path, rclient):
    """SIGKILL the daemon under a running `run`: the command goes on, its lease is renewed
    through the next daemon, and it is released once, at its end."""
    cli("admin", "--gpus", 4, check=0)
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    run_env = {**env, "CANHAZGPU_CLIENT": "daemon", "CANHAZGPU_HEARTBEAT_INTERVAL": "0.2s",
               "CANHAZGPU_RUN_LEASE": "3s"}
    first = start_daemon(env)
    job = subprocess.Popen([sys.executable, "-m", "canhazgpu", "run", "--gpus", "2", "--",
                            "cat", str(fifo)], env=run_env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    second = None
    try:
        wait_until(lambda: held_gpus(cli) == {0, 1})
        first.kill()
        first.wait()
        key = "canhazgpu:{testhost}:holds"
        beat = max(json.loads(v)["heartbeat_ms"] for v in rclient.hgetall(key).values())
        second = start_daemon(env)
        # renewed through the new daemon: a heartbeat later than any before the restart
        wait_until(lambda: min(json.loads(v)["heartbeat_ms"]
                               for v in rclient.hgetall(key).values()) > beat)
        assert held_gpus(cli) == {0, 1} and job.poll() is None
        with open(fifo, "w") as go:
            go.write("done\n")
        out, err = job.communicate(timeout=30)
        assert job.returncode == 0 and out == "done\n", err
        assert held_gpus(cli) == set()
        events = rclient.xrange("canhazgpu:{testhost}:stream")
        types = [json.loads(f["doc"])["type"] for _, f in events]
        assert types.count("released") == 1 and "reclaimed" not in types \
            and "expired" not in types, types
    finally:
        for proc in (job, first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_wait_keeps_its_place_through_a_daemon_restart(cli, env, rclient):
    """SIGKILL the daemon under a queued `wait`: the client reconnects to the next daemon,
    follows the same place, and is granted once when a GPU comes free."""
    cli("admin", "--gpus", 2, check=0)
    cli("reserve", "--gpus", 2, check=0)
    first = start_daemon(env)
    waiter = subprocess.Popen([sys.executable, "-m", "canhazgpu", "wait", "--gpus", "1",
                               "--short"], env={**env, "CANHAZGPU_CLIENT": "daemon"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    stream = "canhazgpu:{testhost}:stream"

    def types() -> list[str]:
        return [json.loads(f["doc"])["type"] for _, f in rclient.xrange(stream)]
    try:
        wait_until(lambda: "queued" in types())
        first.kill()
        first.wait()
        second = start_daemon(env)
        cli("release", "--gpu-ids", 1, check=0)
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0 and out == "1\n", err
        assert "reconnecting" in err
        assert types().count("queued") == 1 and types().count("granted") == 1
        assert "left" not in types()
    finally:
        for proc in (waiter, first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_garbage_gets_an_error_or_a_closed_connection(pool, config):
    async with running_daemon(config):
        path = str(config.api_path)

        @settings(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.one_of(
            st.binary(max_size=300),
            st.builds(lambda d: json.dumps(d).encode() + b"\n",
                      st.dictionaries(st.sampled_from(["v", "op", "args", "x"]),
                                      st.one_of(st.none(), st.integers(), st.text(max_size=20),
                                                st.sampled_from(sorted(OPS)),
                                                st.dictionaries(st.text(max_size=8),
                                                                st.integers()))))))
        def garbage(data: bytes) -> None:
            anyio.from_thread.run(send_garbage, path, data)

        await anyio.to_thread.run_sync(garbage)
        # still answering, the pool untouched
        assert await RemoteCore(config, path).pool_size() == 8


async def send_garbage(path: str, data: bytes) -> None:
    async with await anyio.connect_unix(path) as stream:
        await stream.send(data)
        await stream.send_eof()
        with anyio.fail_after(10):  # the daemon answers or closes, never hangs
            received = b""
            try:
                while True:
                    received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    for line in received.splitlines():
        doc = json.loads(line)
        assert doc["v"] == protocol.VERSION and ("ok" in doc or "error" in doc
                                                 or "event" in doc)


async def test_500_idle_connections_do_not_stop_the_others(pool, config):
    async with running_daemon(config):
        path = str(config.api_path)
        idle = [await anyio.connect_unix(path) for _ in range(500)]
        try:
            remote = RemoteCore(config, path)
            with anyio.fail_after(10):
                for _ in range(20):
                    res = await remote.acquire(Request(count=2, duration_s=60))
                    assert await remote.release(ids=res.gpus) == list(res.gpus)
        finally:
            for stream in idle:
                await stream.aclose()
