"""Shared fixtures and helpers: one real redis-server per test session (flushed between
tests), the CLI in a child process, a pseudo-terminal, callers, and waits with deadlines."""

from __future__ import annotations

import codecs
import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
import zlib
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import pytest
import redis

from canhazgpu.config import load
from canhazgpu.core import Core
from canhazgpu.embedded import RedisServer
from canhazgpu.identity import current, process_start

HOST = "testhost"


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


# Every process the suite starts inherits this mark (the env fixture keeps it: it is not a
# CANHAZGPU_ variable), so what is still running at the end is found, whoever forked it.
# redis-server rewrites its environment (its process title): it is known by its title,
# which names its socket, under pytest's base directory or the session's TMPDIR.
SESSION_MARK = "HAZ_TEST_SESSION"


def marked_processes(token: str, places: tuple[str, ...] = ()) -> dict[int, str]:
    """pid -> command line of the running processes that carry this session's mark, or
    whose command line names one of `places` (directories of this session)."""
    found, needle = {}, f"{SESSION_MARK}={token}".encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == str(os.getpid()):
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if needle not in (entry / "environ").read_bytes() + b"\0" and \
                    not any(place in cmd for place in places):
                continue
        except OSError:  # gone, or not ours to read
            continue
        found[int(entry.name)] = cmd.strip()
    return found


@dataclass(frozen=True)
class Session:
    token: str
    places: tuple[str, ...]

    def processes(self) -> dict[int, str]:
        return marked_processes(self.token, self.places)


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory):
    """The suite leaves no process behind (a redis-server, a daemon, a tmux server): at the
    end, every process it started has ended (a few seconds' grace for those being stopped);
    any left is named, killed, and fails the session. Temporary directories go to a
    session directory (TMPDIR, world-readable like /tmp for the tests run as nobody)."""
    base = str(tmp_path_factory.getbasetemp())  # (fixed before TMPDIR changes)
    tmpdir = tempfile.mkdtemp(prefix="canhazgpu-tests-")
    os.chmod(tmpdir, 0o755)
    session = Session(f"{os.getpid()}-{time.time_ns()}", (base + "/", tmpdir + "/"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SESSION_MARK, session.token)
        patch.setenv("TMPDIR", tmpdir)
        patch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
        yield session
    deadline = time.monotonic() + 10
    while (left := session.processes()) and time.monotonic() < deadline:
        time.sleep(0.05)  # processes being stopped: nothing to wait on but their exit
    for pid in left:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    shutil.rmtree(tmpdir, ignore_errors=True)
    assert not left, "the suite left processes running: " + "; ".join(
        f"{pid} {cmd[:120]}" for pid, cmd in sorted(left.items()))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), shared=True).start()
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


@pytest.fixture
def caller(me):
    """Callers as the core sees them: caller("bob") is another user (another uid);
    caller(process=proc) is us as if `proc` were the run supervisor (started at `start`)."""
    def make(user: str | None = None, *, process=None, start: float | None = None,
             admin: bool | None = None):
        who = me if user in (None, me.user) else \
            replace(me, user=user, uid=10000 + zlib.crc32(user.encode()) % 1000000)
        if process is not None:
            who = replace(who, pid=process.pid,
                          pid_start=process_start(process.pid) if start is None else start)
        return who if admin is None else replace(who, is_admin=admin)
    return make


class Cli:
    """The real `canhazgpu` command in a child process: run to the end, started in the
    background (sync or as an anyio process), or on a terminal. extra_env adds variables."""

    def __init__(self, env):
        self.env = env
        self.children: list = []

    @staticmethod
    def argv(*args) -> list[str]:
        return [sys.executable, "-m", "canhazgpu", *map(str, args)]

    def environ(self, extra_env=None) -> dict:
        return {**self.env, **(extra_env or {})}

    def __call__(self, *args, input=None, timeout=60, extra_env=None, check=None):
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, input=input,
                              timeout=timeout, env=self.environ(extra_env))
        if check is not None:
            assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    def popen(self, *args, extra_env=None, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(*args), env=self.environ(extra_env), **kwargs)
        self.children.append(proc)
        return proc

    async def open(self, *args, extra_env=None, **kwargs):
        """An anyio process (stdout/stderr piped unless given), for async tests."""
        proc = await anyio.open_process(self.argv(*args), env=self.environ(extra_env),
                                        **kwargs)
        self.children.append(proc)
        return proc

    async def run(self, *args, extra_env=None, check=None):
        """Run to the end without blocking the event loop; stdout/stderr as text."""
        with anyio.fail_after(60):
            proc = await anyio.run_process(self.argv(*args), env=self.environ(extra_env),
                                           check=False)
        out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                          proc.stderr.decode())
        if check is not None:
            assert out.returncode == check, (out.returncode, out.stdout, out.stderr)
        return out

    def terminal(self, *args, extra_env=None, **size) -> Terminal:
        term = Terminal(self.argv(*args), self.environ(extra_env), **size)
        self.children.append(term.proc)
        return term

    def kill_all(self):
        """What a failed test left running (anyio processes are reaped by their test)."""
        for proc in self.children:
            if isinstance(proc, subprocess.Popen):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            elif proc.returncode is None:
                try:
                    proc.kill()
                except (ProcessLookupError, RuntimeError):  # gone, or its loop is closed
                    pass


def open_pty(rows: int = 40, cols: int = 160) -> tuple[int, int]:
    """A pseudo-terminal of rows x cols: (master, slave) file descriptors."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    return master, slave


def _controlling_tty():
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A child whose stdin/stdout/stderr is a pseudo-terminal (rows x cols) it controls, like
    a shell's foreground job (Ctrl+C reaches its process group). Read with deadlines."""

    def __init__(self, args, env, rows: int = 40, cols: int = 160) -> None:
        self.master, slave = open_pty(rows, cols)
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     preexec_fn=_controlling_tty)
        os.close(slave)  # the child's copies are the last: its exit ends our reads
        self.text = ""
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self.closed = False

    async def until(self, predicate, timeout: float = 20.0) -> str:
        """Everything shown so far, once predicate(it) holds (or the child closed the
        terminal: the caller's assertion says what was missing)."""
        with anyio.fail_after(timeout):
            while not predicate(self.text) and not self.closed:
                await anyio.wait_readable(self.master)
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the other side closed
                    chunk = b""
                self.text += self._decode(chunk, final=not chunk)
                self.closed = not chunk
        return self.text

    async def expect(self, text: str, timeout: float = 20.0) -> str:
        seen = await self.until(lambda t: text in t, timeout)
        assert text in seen, f"{text!r} not seen before the terminal closed; got {seen!r}"
        return seen

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    async def wait(self, timeout: float = 20.0) -> int:
        """The child's exit code, then the terminal is closed."""
        code = await anyio.to_thread.run_sync(lambda: self.proc.wait(timeout))
        self.close()
        return code

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


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
    the block runs); `await expired()` returns once every one of them has run out. A lease
    already gone when it is awaited (it ran out before we subscribed, e.g. while Redis was
    down) counts as run out: subscribe, then read the state, then wait."""
    from canhazgpu.events import EventHub, Message
    hub = EventHub(store, (store.expired_channel,), host_events=False)
    async with hub.running(), hub.listen() as stream:
        async def expired(timeout: float = 5.0) -> None:
            left = {g for g in gpus if await store.redis.exists(store.lease_key(g))}
            with anyio.fail_after(timeout):
                while left:
                    item = await stream.receive()
                    if isinstance(item, Message):
                        left.discard(store.gpu_of_lease_key(item.data))
        yield expired
