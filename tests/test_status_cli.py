"""`canhazgpu status` end to end: the real command, real reservations, the fake provider,
and the documents' own scripts run unchanged against its output."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_until

SCRIPTS = Path(__file__).parent / "fixtures" / "seed_scripts"

BOB = [{"pid": 12345, "name": "python3", "user": "bob", "used_memory_mb": 512,
        "cmdline": ["vllm", "serve", "mistralai/Mistral-7B-Instruct-v0.1"]},
       {"pid": 67890, "name": "jupyter", "user": "bob", "used_memory_mb": 512}]
CROWD = [{"pid": 12345 + k, "name": n, "user": u, "used_memory_mb": 512}
         for k, (n, u) in enumerate([("python3", "alice"), ("pytorch", "bob"),
                                     ("python3", "charlie"), ("python3", "alice")])]


@pytest.fixture
def staged(cli, fake_gpus, tmp_path):
    """The documents' scene: GPU 0 idle, 1 run by me with a process, 2 bob unreserved,
    3 manual and idle, 4 three users unreserved, 5-7 idle."""
    me_proc = [{"pid": os.getpid(), "name": "python3", "user": "me", "used_memory_mb": 8000}]
    scene = [{"index": 0, "memory_used_mb": 45},
             {"index": 2, "memory_used_mb": 1024, "processes": BOB},
             {"index": 4, "memory_used_mb": 2048, "processes": CROWD}]
    fake_gpus.write(scene)
    cli("admin", "--gpus", 8, check=0)
    ready = tmp_path / "ready"
    run = cli.popen("run", "--gpu-ids", 1, "--", sys.executable, "-c",
                    f"import pathlib, time; pathlib.Path({str(ready)!r}).write_text('x'); "
                    "time.sleep(60)")
    cli("reserve", "--gpu-ids", 3, "--duration", "4h", check=0)
    wait_until(ready.exists)
    # now the job on GPU 1 allocates its memory
    fake_gpus.write(scene + [{"index": 1, "memory_used_mb": 8452, "processes": me_proc}])
    yield cli
    run.terminate()
    run.wait(timeout=20)


def test_plain_status_in_a_pipe_is_the_line_format(staged):
    lines = staged("status", check=0).stdout.splitlines()
    assert len(lines) == 8 and all(line.startswith("GPU ") for line in lines)
    assert lines[0] == "GPU 0: AVAILABLE [validated: 45MB used]"
    assert lines[1].startswith("GPU 1: IN USE by ") and \
        "(run, last heartbeat 0h 0m " in lines[1] and \
        lines[1].endswith("[validated: 8452MB, 1 processes]")
    # seeds/003 line by line: 1024MB is in use at the default 1024 MB threshold
    assert lines[2] == ("GPU 2: IN USE WITHOUT RESERVATION by user bob - 1024MB used by "
                        "PID 12345 (python3), PID 67890 (jupyter)")
    assert "(manual, expires in 3h 59m" in lines[3] and \
        lines[3].endswith("[validated: no actual usage detected]")
    assert lines[4] == ("GPU 4: IN USE WITHOUT RESERVATION by users alice, bob and charlie - "
                        "2048MB used by PID 12345 (python3), PID 12346 (pytorch) and 2 more")


def test_table_and_json_and_summary(staged):
    table = staged("status", "--format", "table", check=0).stdout.splitlines()
    assert table[0].split() == ["GPU", "STATUS", "USER", "DURATION", "TYPE", "MODEL",
                                "DETAILS", "VALIDATION"]
    row2 = table[2 + 2]
    assert "mistralai/Mistral-7B-Instruct-v0.1" in row2 and "WITHOUT RESERVATION" in row2
    assert "alice,bob,charlie" in table[2 + 4]
    assert "\033[" not in "\n".join(table)  # no colour off a terminal
    out = staged("status", "--json", check=0).stdout
    assert out.count("\n") == 1  # one line off a terminal (indented on one: test_tty)
    doc = json.loads(out)
    assert [g["status"] for g in doc["gpus"]] == ["available", "reserved", "unreserved",
                                                  "reserved", "unreserved", "available",
                                                  "available", "available"]
    assert doc["gpus"][2]["model"] == {"id": "mistralai/Mistral-7B-Instruct-v0.1",
                                       "provider": "mistralai"}
    assert doc["gpus"][3]["reservation"]["type"] == "manual"
    assert doc["summary"]["unreserved"] == 2
    assert staged("status", "--summary", check=0).stdout.splitlines() == [
        "Available GPUs: 4 out of 8", "In use with reservations: 2 GPUs",
        "Unreserved usage: 2 GPUs"]


def test_the_documents_scripts_work_unchanged_against_the_real_command(staged, env):
    path = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    script_env = {**env, "PATH": path}
    metrics = subprocess.run(["bash", str(SCRIPTS / "gpu_metrics.sh")], env=script_env,
                             capture_output=True, text=True, check=True).stdout
    assert metrics.split("\n") == ["gpu_available 4", "gpu_in_use 2", "gpu_unauthorized 2",
                                   "gpu_total 8", ""]
    spec = importlib.util.spec_from_file_location("seed_parsers", SCRIPTS / "parsers.py")
    parsers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parsers)
    old = dict(os.environ)
    os.environ.update(script_env)
    try:
        assert parsers.get_gpu_status() == {0: "available", 1: "reserved", 2: "unauthorized",
                                            3: "reserved", 4: "unauthorized", 5: "available",
                                            6: "available", 7: "available"}
        assert [(v["users"], v["memory_mb"]) for v in parsers.check_unreserved_usage()] == [
            ("bob", 1024), ("alice, bob and charlie", 2048)]
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_unreserved_gpus_are_excluded_from_allocation(staged):
    proc = staged("reserve", "--gpus", 5)
    assert proc.returncode == 1
    assert proc.stderr == ("Error: Not enough GPUs available. Requested: 5, Available: 4 "
                           "(2 GPUs in use without reservation - run 'canhazgpu status' for "
                           "details)\n")
    assert staged("reserve", "--gpus", 4, "--short", check=0).stdout == "0,5,6,7\n"


def test_a_note_is_a_table_column_and_in_json_but_not_in_the_lines(staged):
    staged("reserve", "--gpu-ids", 5, "--note", "paper deadline", check=0)
    table = staged("status", "--format", "table", check=0).stdout.splitlines()
    assert table[0].split()[-1] == "NOTE"
    assert table[2 + 5].endswith(" paper deadline") and table[2 + 3].endswith("no usage detected")
    lines = staged("status", check=0).stdout.splitlines()
    assert re.fullmatch(r"GPU 5: IN USE by \S+ for 0h 0m \d+s \(manual, expires in 0h \d+m \d+s\) "
                        r"\[validated: no actual usage detected\]", lines[5]), lines[5]
    doc = json.loads(staged("status", "--json", check=0).stdout)
    assert doc["gpus"][5]["reservation"]["note"] == "paper deadline"
    assert doc["gpus"][3]["reservation"]["note"] == ""


@pytest.mark.anyio
@pytest.mark.parametrize("columns", [80, 200])
async def test_the_table_fits_the_terminal(staged, env, columns):
    from conftest import Cli, Terminal
    script = f"{shlex.join(Cli.argv('status'))}; echo END"
    term = Terminal(["sh", "-c", script], {k: v for k, v in env.items() if k != "NO_COLOR"}
                    | {"TERM": "xterm", "COLUMNS": str(columns)})
    await term.expect("END")
    assert await term.wait() == 0
    rows = re.sub(r"\x1b\[\d+m", "", term.text).replace("\r\n", "\n").splitlines()
    rows = rows[:rows.index("END")]
    assert rows[0].startswith("GPU STATUS") and len(rows) == 2 + 8
    assert max(map(len, rows)) <= columns
    model = "mistralai/Mistral-7B-Instruct-v0.1"
    if columns == 80:  # MODEL left out, what a glance needs whole (docs/status.md)
        assert "MODEL" not in rows[0] and "mistr" not in rows[2 + 2] and "…" in rows[2 + 4]
        assert rows[2 + 2].split()[:3] == ["2", "UNRESERVED", "bob"]
        assert "WITHOUT RESERVATION" in rows[2 + 2]
    else:
        assert model in rows[2 + 2] and "2 more" in rows[2 + 4]
