"""test_cli.py's cases again, every command through the daemon's API (client = daemon):
one behaviour, two transports. The cases about reaching Redis itself are direct mode's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from canhazgpu.api.client import answering
from canhazgpu.config import load
from conftest import wait_until
from test_cli import *  # noqa: F401,F403 (the same tests, collected here again)

DIRECT_ONLY = {
    "test_redis_down_is_one_line_exit_1": "the CLI does not reach Redis through the daemon",
    "test_password_protected_redis": "the CLI does not reach Redis through the daemon",
    "test_corrupt_state_names_the_key_and_heals_on_the_next_change":
        "a running daemon's next scan heals it before status can show it",
}


@pytest.fixture(autouse=True)
def _direct_only(request):
    reason = DIRECT_ONLY.get(request.node.originalname)
    if reason:
        pytest.skip(reason)


@pytest.fixture
def env(env):
    """The test environment with a daemon serving it; the CLI must use the daemon."""
    daemon = subprocess.Popen([sys.executable, "-m", "canhazgpu", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    config = load(env=env)
    try:
        wait_until(lambda: daemon.poll() is not None or answering(config) is not None)
        assert daemon.poll() is None, daemon.stderr.read().decode()
        yield {**env, "CANHAZGPU_CLIENT": "daemon"}
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        daemon.stderr.close()
