"""test_cli.py's cases, and the CLI cases of events, status --follow and replay, again with
every command through the daemon's API (client = daemon): one behaviour, two transports.
The cases about reaching Redis itself are direct mode's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from canhazgpu.api.client import answering
from canhazgpu.config import load
from conftest import wait_until
from test_cli import *  # noqa: F401,F403 (the same tests, collected here again)
from test_events import (test_events_json_prints_each_event_as_published,  # noqa: F401
                         test_events_lines_with_a_type_filter,
                         test_events_rejects_an_unknown_type)
from test_follow import (test_in_a_pipe_each_change_is_one_json_document,  # noqa: F401
                         test_on_a_terminal_the_table_is_redrawn_in_place)
from test_replay import (test_a_bad_since_is_a_usage_error,  # noqa: F401
                         test_events_since_replays_then_stops_at_count,
                         test_events_since_says_what_is_no_longer_kept)

pytestmark = pytest.mark.anyio  # for the async cases imported above

DIRECT_ONLY = {
    "test_redis_down_is_one_line_exit_1": "the CLI does not reach Redis through the daemon",
    "test_password_protected_redis": "the CLI does not reach Redis through the daemon",
    "test_events_json_prints_each_event_as_published":
        "waits for the CLI's own Redis subscription: see test_events_through_the_daemon",
    "test_events_lines_with_a_type_filter":
        "waits for the CLI's own Redis subscription: see test_events_through_the_daemon",
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


def test_events_through_the_daemon(admin):
    """Replay, then live, with nothing missed or shown twice: the events come from the
    daemon's subscription, wherever the command connected in between."""
    proc = admin.popen("events", "--json", "--since", "0", "--count", "3",
                       stdout=subprocess.PIPE, text=True)
    admin("reserve", "--gpu-ids", "4", check=0)
    admin("release", check=0)
    out, _ = proc.communicate(timeout=30)
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["type"] for d in docs] == ["pool_changed", "reserved", "released"]
    assert [d["seq"] for d in docs] == [1, 2, 3]


def test_an_explicit_redis_wins_over_the_daemon(admin):
    """A daemon answers, but the settings name another Redis: that Redis (here: none),
    in every mode, never the daemon's store (issue 15)."""
    unreachable = {"CANHAZGPU_REDIS_URL": "redis://127.0.0.1:1/0"}
    for mode in ("auto", "direct"):
        proc = admin("--client", mode, "status", extra_env=unreachable)
        assert proc.returncode == 1 and "127.0.0.1:1" in proc.stderr
    proc = admin("--client", "daemon", "status", extra_env=unreachable)
    assert proc.returncode == 1 and "not redis://127.0.0.1:1/0" in proc.stderr
