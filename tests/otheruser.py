"""Running the real CLI as another user (uid 65534, "nobody"), where identity decides.

We run as root; `setpriv` drops to nobody. Nobody cannot enter pytest's temporary
directories (mode 0700), so what it must reach (a Redis socket, a fake GPU file) lives in
`open_dir`, a world-readable directory of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from canhazgpu.embedded import RedisServer
from conftest import Cli

NOBODY = 65534


def _why_nobody_cannot_run_us() -> str | None:
    """Why uid 65534 cannot start our Python and import canhazgpu from here (None: it can).
    Each requirement is named on its own: root, setpriv, then a checkout and Python that
    nobody can read (one inside a private directory, e.g. a CI clone under mktemp -d)."""
    if os.getuid() != 0:
        return f"needs root to run as another uid (running as uid {os.getuid()})"
    if not shutil.which("setpriv"):
        return "needs setpriv (util-linux) on PATH to run as another uid"
    probe = subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY),
                            "--clear-groups", sys.executable, "-c", "import canhazgpu.cli.main"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return (f"uid {NOBODY} cannot run {sys.executable} and import canhazgpu from "
                f"{Path(__file__).resolve().parent.parent} (a directory on the way is private?): "
                f"{last}")
    return None


_WHY_NOT = _why_nobody_cannot_run_us()
needs_root = pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or "")


@pytest.fixture(scope="module")
def open_dir():
    path = Path(tempfile.mkdtemp(prefix="canhazgpu-open-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def open_redis(open_dir):
    """A Redis that nobody can reach (its socket is mode 777 in a world-readable dir)."""
    server = RedisServer(open_dir / "redis", shared=True).start()
    yield server
    server.stop()


def as_nobody(*args, env: dict, groups: str = "", timeout: float = 60):
    """`canhazgpu ARGS` as uid/gid 65534; `groups` its supplementary groups (none by default)."""
    who = ["--groups", groups] if groups else ["--clear-groups"]
    return subprocess.run(
        ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), *who,
         *Cli.argv(*args)],
        capture_output=True, text=True, env=env, timeout=timeout)


async def nobody_runs(env, *args: str, check: int | None = None):
    """`canhazgpu ARGS` as uid 65534 without blocking the event loop: (code, out, err)."""
    import anyio
    proc = await anyio.run_process(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY),
                                    "--clear-groups", *Cli.argv(*args)], env=env, check=False)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    if check is not None:
        assert proc.returncode == check, (proc.returncode, out, err)
    return proc.returncode, out, err
