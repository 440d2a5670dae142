"""Fault suite: 32 clients (Python clients on the core and the real CLI) reserve, release,
run and wait while random clients are SIGKILLed, Redis is SIGKILLed and restarted on its
AOF, and (second test) the daemon runs and is itself SIGKILLed and restarted. The events
alone must show no GPU held twice; nothing may leak, no client may print a traceback, no
acknowledged reservation may be lost. A short version of benchmarks/fault_run.py (which
documents every check); docs/reliability.md has a long run's figures."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from fault_run import Plan, fault_run  # noqa: E402

pytestmark = pytest.mark.slow


def check(report, plan: Plan) -> None:
    assert report.double_grants == []
    assert report.freed_silently == []  # every freed GPU has its event
    assert report.leaks == []
    assert report.lost == []
    assert report.tracebacks == []
    # the scripts keep every event in the host's stream: the replay is complete
    assert report.replay == "stream" and report.missed_events == 0
    assert report.redis_restarts == plan.restarts and report.client_kills > 0
    assert report.operations > 0 and report.events > 0
    for what, n in report.exit_codes.items():
        command, code = what.rsplit(" ", 1)
        allowed = {"0", "-9"} if command == "python client" else {"0", "1", "-9"}
        assert code in allowed, (what, n, report.exit_codes)


def test_clients_and_redis_killed_without_a_daemon():
    plan = Plan(clients=32, duration=8, kills=8, restarts=2, seed=1)
    check(fault_run(plan), plan)


def test_with_the_daemon_running_and_killed():
    plan = Plan(clients=32, duration=8, kills=8, restarts=1, daemon=True, daemon_kills=2,
                seed=2)
    report = fault_run(plan)
    check(report, plan)
    assert report.daemon_kills == plan.daemon_kills
