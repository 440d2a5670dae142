"""`canhazgpu queue` and `canhazgpu report` end to end: the real commands' text."""

from __future__ import annotations

import json
import re

import pytest

from conftest import wait_until


@pytest.fixture
def admin(cli):
    cli("admin", "--gpus", 2, check=0)
    return cli


def test_queue_table_shows_who_waits_for_what(admin):
    assert admin("queue", check=0).stdout == "The queue is empty.\n"
    admin("reserve", "--gpus", 2, check=0)
    waiter = admin.popen("wait", "--gpu-ids", "0,1", "--quiet", "--note", "eval run", "--",
                         "true")
    wait_until(lambda: json.loads(admin("queue", "--json", check=0).stdout))
    header, row = admin("queue", check=0).stdout.splitlines()
    assert header.split() == ["POS", "USER", "REQUESTED", "GRANTED", "WAITING", "NOTE"]
    assert re.fullmatch(r"1 +\S+ +GPUs 0,1 +- +\d+s +eval run", row), row
    admin("release", check=0)
    assert waiter.wait(timeout=20) == 0


def test_report_days_accepts_fractions_and_says_so(admin):
    admin("run", "--", "true", check=0)
    proc = admin("report", "--days", "0.5", check=0)
    head, _, row = proc.stdout.splitlines()
    # a one-second run: not "0.00 GPU hours" next to a 100.0% share
    assert head == "GPU usage over the last 0.5 days: <0.01 GPU hours"
    assert row.split()[1:3] == ["<0.01", "100.0%"]
    assert json.loads(admin("report", "--days", "0.5", "--json", check=0).stdout)[
        "users"][0]["gpu_hours"] > 0
    for bad in ("0", "-1", "3661", "nan", "inf", "week"):
        proc = admin("report", "--days", bad)
        assert proc.returncode == 2 and proc.stderr == (
            f"Error: invalid --days '{bad}': use a number of days above 0 and up to 3660, "
            "e.g. 7 or 0.5\n"), proc.stderr
    assert admin("report", "--days", "3660", check=0).stdout.startswith(
        "GPU usage over the last 3660 days: ")
