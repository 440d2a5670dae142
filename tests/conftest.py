"""Shared fixtures: one real redis-server per test session, flushed between tests."""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
import redis

from canhazgpu.config import load
from canhazgpu.core import Core
from canhazgpu.embedded import RedisServer
from canhazgpu.identity import current

HOST = "testhost"


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    client = redis.Redis(unix_socket_path=str(redis_server.socket))
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def fake_gpus(tmp_path):
    """The fake provider's file; write(gpus=[...]) stages usage, count sets the pool size."""
    path = tmp_path / "gpus.json"

    class Fake:
        def __init__(self):
            self.path = path
            self.write()

        def write(self, gpus=(), count=8):
            path.write_text(json.dumps({"count": count, "gpus": list(gpus)}))

    return Fake()


@pytest.fixture
def env(redis_url, fake_gpus, tmp_path):
    """Environment for a CLI process (or in-process config) against the test Redis."""
    config = tmp_path / "config.toml"
    config.write_text("")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("CANHAZGPU_")},
        "CANHAZGPU_REDIS_URL": redis_url,
        "CANHAZGPU_HOST": HOST,
        "CANHAZGPU_PROVIDER": "fake",
        "CANHAZGPU_FAKE_GPUS": str(fake_gpus.path),
        "CANHAZGPU_CONFIG": str(config),
        "CANHAZGPU_STATE_DIR": str(tmp_path / "state"),
        "NO_COLOR": "1",
    }


@pytest.fixture
def config(env):
    return load(env=env)


@pytest.fixture
async def core(config):
    core = Core(config)
    yield core
    await core.aclose()


@pytest.fixture
async def pool(core):
    """An initialised pool of 8 fake GPUs."""
    await core.setup_pool(8, "fake", force=False)
    return core


@pytest.fixture
def me():
    return current()


class Cli:
    """Run the real `canhazgpu` command in a child process."""

    def __init__(self, env):
        self.env = env
        self.children: list[subprocess.Popen] = []

    def __call__(self, *args, input=None, timeout=60, extra_env=None, check=None):
        proc = subprocess.run(
            [sys.executable, "-m", "canhazgpu", *map(str, args)],
            capture_output=True, text=True, input=input, timeout=timeout,
            env={**self.env, **(extra_env or {})},
        )
        if check is not None:
            assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    def popen(self, *args, extra_env=None, **kwargs):
        proc = subprocess.Popen([sys.executable, "-m", "canhazgpu", *map(str, args)],
                                env={**self.env, **(extra_env or {})}, **kwargs)
        self.children.append(proc)
        return proc

    def kill_all(self):
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def cli(env):
    runner = Cli(env)
    yield runner
    runner.kill_all()


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


@pytest.fixture
def rclient(redis_url):
    client = redis_client(redis_url)
    yield client
    client.close()


ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate, timeout: float = 15.0) -> None:
    """Wait for a condition another process brings about, with a deadline (no fixed sleep:
    a plain process has no event to wait on, so the condition is re-checked every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def held_gpus(cli) -> set[int]:
    """GPU ids with a live reservation, from `canhazgpu status --json`."""
    data = json.loads(cli("status", "--json", check=0).stdout)
    return {g["id"] for g in data["gpus"] if g["reservation"]}


@asynccontextmanager
async def lease_expiry(store, gpus):
    """Listen for Redis's `expired` notifications of these GPUs' leases (subscribed before
    the block runs); `await expired()` returns once every one of them has run out."""
    from canhazgpu.events import EventHub, Message
    hub = EventHub(store, (store.expired_channel,), host_events=False)
    async with hub.running(), hub.listen() as stream:
        async def expired(timeout: float = 5.0) -> None:
            left = set(gpus)
            with anyio.fail_after(timeout):
                while left:
                    item = await stream.receive()
                    if isinstance(item, Message):
                        left.discard(store.gpu_of_lease_key(item.data))
        yield expired
