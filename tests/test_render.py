"""render.py against the seed documents: their exact lines, their table, and their scripts."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from canhazgpu import render
from canhazgpu.model import GpuProcess, GpuState, GpuUsage, Hold, PoolView, Usage

NOW = 1_700_000_000_000
SCRIPTS = Path(__file__).parent / "fixtures" / "seed_scripts"
OLD = 100  # the original documents' threshold (001/003); the newer one is 1024


def ago(seconds: float) -> int:
    return NOW - int(seconds * 1000)


def proc(pid, name, user, mb=None, cmd=()):
    return GpuProcess(pid=pid, name=name, user=user, used_memory_mb=mb, cmdline=tuple(cmd))


def use(i, mb, *procs, **extra):
    return GpuUsage(index=i, name="Fake H100", memory_used_mb=mb, memory_total_mb=81559,
                    processes=procs, **extra)


def run(i, user, for_s, beat_s, **extra):
    return Hold(gpu=i, rid=f"r{i}", user=user, kind="run", start_ms=ago(for_s),
                heartbeat_ms=ago(beat_s), uid=1000, host="gpu-box", pid=4242, **extra)


def manual(i, user, for_s, left_s, **extra):
    return Hold(gpu=i, rid=f"m{i}", user=user, kind="manual", start_ms=ago(for_s),
                expires_ms=NOW + left_s * 1000, uid=1001, host="gpu-box", **extra)


def gpu(i, *, hold=None, released_s=None, usage=None, threshold=OLD):
    released = None if released_s is None else ago(released_s)
    return GpuState(gpu=i, hold=hold, last_released_ms=released, usage=usage,
                    threshold_mb=threshold)


def view(*gpus):
    return PoolView(now_ms=NOW, gpus=tuple(gpus), provider="fake", scanned_ms=ago(1))


MISTRAL = ["vllm", "serve", "mistralai/Mistral-7B-Instruct-v0.1"]
ONE_PROC = proc(999, "python3", "alice", 8000, MISTRAL)
BOB_TWO = (proc(12345, "python3", "bob", 600, ["python3", "train.py"]),
           proc(67890, "jupyter", "bob", 400))
THREE_USERS = (proc(12345, "python3", "alice", 900), proc(23456, "pytorch", "bob", 700),
               proc(34567, "python3", "charlie", 300), proc(45678, "python3", "alice", 100))

# seeds/003 "Example Output": every line reproduced byte for byte.
DOC_003 = view(
    gpu(0, released_s=1815, usage=use(0, 45)),
    gpu(1, hold=run(1, "alice", 930, 5), usage=use(1, 8452, ONE_PROC)),
    gpu(2, usage=use(2, 1024, *BOB_TWO)),
    gpu(3, hold=manual(3, "charlie", 3735, 11745), usage=use(3, 3)),
    gpu(4, usage=use(4, 2048, *THREE_USERS)),
)
DOC_003_TEXT = """\
GPU 0: AVAILABLE (last released 0h 30m 15s ago) [validated: 45MB used]
GPU 1: IN USE by alice for 0h 15m 30s (run, last heartbeat 0h 0m 5s ago) [validated: 8452MB, 1 processes]
GPU 2: IN USE WITHOUT RESERVATION by user bob - 1024MB used by PID 12345 (python3), PID 67890 (jupyter)
GPU 3: IN USE by charlie for 1h 2m 15s (manual, expires in 3h 15m 45s) [validated: no actual usage detected]
GPU 4: IN USE WITHOUT RESERVATION by users alice, bob and charlie - 2048MB used by PID 12345 (python3), PID 23456 (pytorch) and 2 more"""  # noqa: E501


def test_document_003_example_output():
    assert render.render_lines(DOC_003) == DOC_003_TEXT


SAME_PROCESS = proc(11111, "python3", "alice", 2000)


@pytest.mark.parametrize("state, line", [
    # seeds/001 "Multi-GPU Unauthorized Usage": one process on several GPUs
    (gpu(5, usage=use(5, 2048, SAME_PROCESS)),
     "GPU 5: IN USE WITHOUT RESERVATION by user alice - 2048MB used by PID 11111 (python3)"),
    # seeds/001 "Mixed Usage Patterns"
    (gpu(0, hold=run(0, "bob", 5400, 5), usage=use(0, 8452, ONE_PROC)),
     "GPU 0: IN USE by bob for 1h 30m 0s (run, last heartbeat 0h 0m 5s ago) "
     "[validated: 8452MB, 1 processes]"),
    (gpu(1, usage=use(1, 1024, proc(22222, "jupyter", "alice"))),
     "GPU 1: IN USE WITHOUT RESERVATION by user alice - 1024MB used by PID 22222 (jupyter)"),
    (gpu(2, released_s=7200, usage=use(2, 45)),
     "GPU 2: AVAILABLE (last released 2h 0m 0s ago) [validated: 45MB used]"),
    (gpu(3, hold=manual(3, "charlie", 2700, 26100), usage=use(3, 0)),
     "GPU 3: IN USE by charlie for 0h 45m 0s (manual, expires in 7h 15m 0s) "
     "[validated: no actual usage detected]"),
    # seeds/001 "Container-Based": two users, three processes
    (gpu(1, usage=use(1, 3072, proc(33333, "dockerd", "root"), proc(44444, "python3", "alice"),
                      proc(55555, "python3", "alice"))),
     "GPU 1: IN USE WITHOUT RESERVATION by users root, alice - 3072MB used by PID 33333 "
     "(dockerd), PID 44444 (python3) and 1 more"),
    # seeds/001 "Multiple Unauthorized Users"
    (gpu(3, usage=use(3, 2048, *THREE_USERS)),
     "GPU 3: IN USE WITHOUT RESERVATION by users alice, bob and charlie - 2048MB used by "
     "PID 12345 (python3), PID 23456 (pytorch) and 2 more"),
    # seeds/003 "Stale Reservations" and "Heartbeat Issues"
    (gpu(3, hold=manual(3, "alice", 31500, 900), usage=use(3, 12)),
     "GPU 3: IN USE by alice for 8h 45m 0s (manual, expires in 0h 15m 0s) "
     "[validated: no actual usage detected]"),
    (gpu(1, hold=run(1, "bob", 9000, 330), usage=use(1, 8452, ONE_PROC)),
     "GPU 1: IN USE by bob for 2h 30m 0s (run, last heartbeat 0h 5m 30s ago) "
     "[validated: 8452MB, 1 processes]"),
    # seeds/003 "Planning Allocations": no usage known, no bracket
    (gpu(0, released_s=7200), "GPU 0: AVAILABLE (last released 2h 0m 0s ago)"),
    # shapes the documents imply
    # never reserved: as the original prints it (DESIGN.md)
    (gpu(0, usage=use(0, 45)), "GPU 0: AVAILABLE [validated: 45MB used]"),
    (gpu(0), "GPU 0: AVAILABLE"),
    (gpu(6, usage=use(6, 2048)), "GPU 6: IN USE WITHOUT RESERVATION by user unknown - 2048MB used"),
    (gpu(5, usage=GpuUsage(index=5, error="GPU is lost")), "GPU 5: ERROR (GPU is lost)"),
    (gpu(7, hold=run(7, "dave", 60, 2)), "GPU 7: IN USE by dave for 0h 1m 0s "
                                         "(run, last heartbeat 0h 0m 2s ago)"),
    (gpu(7, hold=run(7, "dave", 60, 2), usage=GpuUsage(index=7, error="GPU is lost")),
     "GPU 7: IN USE by dave for 0h 1m 0s (run, last heartbeat 0h 0m 2s ago) "
     "[validation failed: GPU is lost]"),
    # reserved: idle below the threshold, used from it on even without visible processes
    (gpu(4, hold=manual(4, "frank", 60, 60), usage=use(4, OLD - 1)),
     "GPU 4: IN USE by frank for 0h 1m 0s (manual, expires in 0h 1m 0s) "
     "[validated: no actual usage detected]"),
    (gpu(4, hold=manual(4, "frank", 60, 60), usage=use(4, OLD)),
     "GPU 4: IN USE by frank for 0h 1m 0s (manual, expires in 0h 1m 0s) "
     "[validated: 100MB, 0 processes]"),
    # granted to a queued request that still waits for the rest of its GPUs
    (gpu(2, hold=run(2, "gina", 10, 1, waiting=True)),
     "GPU 2: IN USE by gina for 0h 0m 10s (run, waiting for more GPUs)"),
    # reserved, little memory but a process: it is used, not idle
    (gpu(2, hold=run(2, "erin", 10, 1), usage=use(2, 50, proc(7, "python3", "erin", 50))),
     "GPU 2: IN USE by erin for 0h 0m 10s (run, last heartbeat 0h 0m 1s ago) "
     "[validated: 50MB, 1 processes]"),
])
def test_every_line_shape(state, line):
    assert render.render_lines(view(state)) == line


def test_threshold_decides_unreserved_and_is_inclusive():
    """At or above the threshold is in use; below it the GPU is available (DESIGN.md)."""
    under = gpu(2, usage=use(2, 1023, *BOB_TWO), threshold=1024)
    at = gpu(2, usage=use(2, 1024, *BOB_TWO), threshold=1024)
    assert render.render_lines(view(under)) == "GPU 2: AVAILABLE [validated: 1023MB used]"
    assert "WITHOUT RESERVATION by user bob - 1024MB" in render.render_lines(view(at))
    assert (under.status, at.status) == ("available", "unreserved")
    usage = Usage(scanned_ms=NOW, gpus=(use(0, 1023), use(1, 1024), use(2, 5000)))
    assert usage.busy(1024) == [1, 2]


def test_document_003_example_at_the_newer_threshold():
    """The documents' scene with the default 1 GB threshold: bob's 1024MB is in use."""
    newer = view(*(replace(g, threshold_mb=1024) for g in DOC_003.gpus))
    assert render.render_lines(newer) == DOC_003_TEXT


# ---------------------------------------------------------------- the documents' scripts
REGEX = r'by users? ([^-]+) - (\d+)MB'  # seeds/000 and 001, verbatim
SED = r's/.*by users\? \([^-]*\) -.*/\1/p'  # seeds/000 and 001, verbatim


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    """`canhazgpu status` (and `wall`) stand-ins first on PATH; returns a stager."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    status = tmp_path / "status.txt"
    (bin_dir / "canhazgpu").write_text(f'#!/bin/sh\ncat "{status}"\n')
    (bin_dir / "wall").write_text('#!/bin/sh\necho "wall $*"\ncat >/dev/null\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def stage(pool: PoolView) -> str:
        text = render.render_lines(pool)
        status.write_text(text + "\n")  # print() adds the newline
        return text
    return stage


def bash(script: str, *, stdin: str | None = None) -> str:
    return subprocess.run(["bash", "-c", script] if stdin is not None else
                          ["bash", str(SCRIPTS / script)], input=stdin, text=True,
                          capture_output=True, check=True).stdout


def seed_parsers():
    spec = importlib.util.spec_from_file_location("seed_parsers", SCRIPTS / "parsers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regex_of_the_documents():
    found = [m.groups() for m in map(re.compile(REGEX).search,
                                     render.render_lines(DOC_003).splitlines()) if m]
    assert found == [("bob", "1024"), ("alice, bob and charlie", "2048")]


def test_prometheus_script(fake_cli):
    fake_cli(DOC_003)
    assert bash("gpu_metrics.sh").split("\n") == [
        "gpu_available 1", "gpu_in_use 2", "gpu_unauthorized 2", "gpu_total 5", ""]


def test_capacity_script_counts_one_line_per_gpu(fake_cli):
    conflicts = [gpu(i, released_s=60, usage=use(i, 10)) for i in range(2)] + \
        [gpu(i, hold=manual(i, "alice", 60, 60)) for i in range(2, 6)] + \
        [gpu(i, usage=use(i, 5000, SAME_PROCESS)) for i in range(6, 8)]
    fake_cli(view(*conflicts))
    assert bash("capacity_alert.sh") == ""  # 75% used: no warning
    full = fake_cli(view(*conflicts[2:]))
    assert bash("capacity_alert.sh") == f"WARNING: GPU utilization at 100%\n{full}\n"


def test_grep_and_sed_scripts(fake_cli):
    text = fake_cli(DOC_003)
    unreserved = [line for line in text.splitlines() if "WITHOUT RESERVATION" in line]
    assert bash("unreserved_reminder.sh") == \
        "Reminder: Please use canhazgpu for GPU reservations\n" + "\n".join(unreserved) + "\n"
    users = bash(f"sed -n '{SED}'", stdin="\n".join(unreserved) + "\n")
    assert users == "bob\nalice, bob and charlie\n"
    # the notify script splits on whitespace, as the document's script does
    assert bash("unreserved_notify.sh").splitlines() == [
        "wall -n bob", "wall -n alice,", "wall -n bob", "wall -n and", "wall -n charlie"]
    assert bash('canhazgpu status | grep "AVAILABLE" | wc -l', stdin="").strip() == "1"
    assert bash('canhazgpu status | grep "IN USE by" | wc -l', stdin="").strip() == "2"


def test_python_parsers_of_the_documents(fake_cli):
    parsers = seed_parsers()
    fake_cli(view(*DOC_003.gpus, gpu(5, usage=GpuUsage(index=5, error="GPU is lost"))))
    assert parsers.get_gpu_status() == {0: "available", 1: "reserved", 2: "unauthorized",
                                        3: "reserved", 4: "unauthorized"}
    assert parsers.wait_for_gpus(1, timeout=5) is True
    assert [(v["users"], v["memory_mb"]) for v in parsers.check_unreserved_usage()] == [
        ("bob", 1024), ("alice, bob and charlie", 2048)]


# ---------------------------------------------------------------- table (seeds/000)
DOC_000_HEADER = ("GPU STATUS    USER     DURATION    TYPE    MODEL            DETAILS           "
                  "         VALIDATION")
DOC_000_RULE = ("--- --------- -------- ----------- ------- ---------------- ------------------"
                "-------- ---------------------")
DOC_000_CHARLIE = ("3   reserved  charlie  45m 0s      manual                   expires in 7h 15m"
                   " 0s      no usage detected")
MIXED = view(
    gpu(0, hold=run(0, "bob", 5400, 5), usage=use(0, 8452, proc(1, "python3", "bob", 8000, [
        "python", "-m", "vllm.entrypoints.openai.api_server", "--model",
        "microsoft/DialoGPT-large"]))),
    gpu(1, usage=use(1, 1024, proc(22222, "jupyter", "alice", 1000, [
        "python3", "-m", "sglang.launch_server", "--model-path",
        "teknium/OpenHermes-2.5-Mistral-7B"]))),
    gpu(2, released_s=7200, usage=use(2, 45)),
    gpu(3, hold=manual(3, "charlie", 2700, 26100), usage=use(3, 0)),
    gpu(4, usage=use(4, 3072, proc(33333, "dockerd", "root"), proc(44444, "python3", "alice"),
                     proc(55555, "python3", "alice"))),
    gpu(5, usage=GpuUsage(index=5, error="GPU is lost")),
)


def columns(table: str) -> list[list[str]]:
    """Cells of each row, cut at the column starts that the dashes row shows."""
    lines = table.split("\n")
    starts = [m.start() for m in re.finditer(r"-+", lines[1])]
    ends = starts[1:] + [None]
    return [[line[a:b].strip() for a, b in zip(starts, ends)] for line in lines]


QWEN = proc(31337, "python3", "dave", 9000, ["vllm", "serve", "Qwen/Qwen2-7B"])


def test_table_matches_the_document_where_values_fit():
    table = render.render_table(view(gpu(3, hold=manual(3, "charlie", 2700, 26100),
                                         usage=use(3, 0), threshold=1024),
                                     gpu(6, hold=run(6, "dave", 60, 5), usage=use(6, 9000, QWEN),
                                         threshold=1024)), width=200)
    header, rule, charlie, _ = table.split("\n")
    assert (header, rule) == (DOC_000_HEADER, DOC_000_RULE)
    # The document's row starts VALIDATION one column left of its own header; ours follows
    # the header.
    assert charlie == DOC_000_CHARLIE.replace(" 0s      no", " 0s       no")
    assert charlie.index("no usage") == header.index("VALIDATION")


def test_table_cells_of_the_documents():
    assert columns(render.render_table(MIXED))[2:] == [
        ["0", "reserved", "bob", "1h 30m 0s", "run", "microsoft/DialoGPT-large",
         "heartbeat 5s ago", "8452MB, 1 processes"],
        ["1", "UNRESERVED", "alice", "", "", "teknium/OpenHermes-2.5-Mistral-7B",
         "WITHOUT RESERVATION", "1024MB used by PID 22222 (jupyter)"],
        ["2", "available", "", "", "", "", "free for 2h", "45MB used"],
        ["3", "reserved", "charlie", "45m 0s", "manual", "", "expires in 7h 15m 0s",
         "no usage detected"],
        ["4", "UNRESERVED", "root,alice", "", "", "", "WITHOUT RESERVATION",
         "3072MB used by PID 33333 (dockerd), PID 44444 (python3) and 1 more"],
        ["5", "error", "", "", "", "", "GPU is lost", ""],
    ]


def test_table_columns_grow_with_content_and_stay_aligned():
    table = render.render_table(MIXED)
    lines = table.split("\n")
    model_width = len("teknium/OpenHermes-2.5-Mistral-7B")
    assert lines[1].split(" ")[5] == "-" * model_width
    offset = lines[0].index("VALIDATION")
    for line in lines[2:-1]:  # (the last GPU, in error, says so in DETAILS)
        assert line[offset - 1] == " " and line[offset] != " "
    assert all(line == line.rstrip() for line in lines)
    assert columns(render.render_table(view(gpu(0))))[2] == [
        "0", "available", "", "", "", "free", ""]
    waiting = view(gpu(2, hold=manual(2, "gina", 10, 50, waiting=True)))
    assert columns(render.render_table(waiting))[2][5] == "waiting for more GPUs"
    assert render.render_json(waiting)["gpus"][0]["reservation"]["waiting"] is True


def test_table_color_only_when_asked():
    plain = render.render_table(MIXED)
    colored = render.render_table(MIXED, color=True)
    assert "\033[" not in plain
    assert re.sub(r"\033\[\d+m", "", colored) == plain
    rows = colored.split("\n")[2:]
    assert [re.match(r"\S+\s+\033\[(\d+)m", row).group(1) for row in rows] == [
        "33", "31", "32", "33", "31", "31"]  # reserved yellow, unreserved/error red


def test_table_shows_model_and_note_only_when_some_gpu_has_one():
    """Without models and notes the table is 91 columns, not 108 or more."""
    plain = render.render_table(view(gpu(0, usage=use(0, 45)),
                                     gpu(1, hold=manual(1, "charlie", 60, 60))))
    assert plain.split("\n")[0].split() == ["GPU", "STATUS", "USER", "DURATION", "TYPE",
                                            "DETAILS", "VALIDATION"]
    assert max(map(len, plain.split("\n")[:2])) == 91
    noted = view(gpu(0, usage=use(0, 45)),
                 gpu(1, hold=manual(1, "charlie", 60, 60, note="paper deadline\nfriday")))
    header, _, free, held = columns(render.render_table(noted))
    assert header[-1] == "NOTE" and "MODEL" not in header
    assert (free[-1], held[-1]) == ("", "paper deadline friday")  # one line, always
    # the lines keep the documents' format: no note there
    assert render.render_lines(noted).split("\n")[1] == \
        "GPU 1: IN USE by charlie for 0h 1m 0s (manual, expires in 0h 1m 0s)"
    assert render.render_json(noted)["gpus"][1]["reservation"]["note"] == \
        "paper deadline\nfriday"


NOTED = view(*MIXED.gpus[:3], gpu(3, hold=manual(3, "charlie", 2700, 26100, note="fine-tuning "
                                                 "llama for the paper, please keep"),
                                  usage=use(3, 0)), *MIXED.gpus[4:])


def cut_from(full: str, shown: str) -> bool:
    """`shown` is `full`, or its start with an ellipsis."""
    return shown == full or (shown.endswith("…") and full.startswith(shown[:-1]))


DROP_ORDER = ["MODEL", "NOTE", "TYPE", "VALIDATION", "DURATION"]  # docs/status.md


@pytest.mark.parametrize("width", [60, 80, 120])
@pytest.mark.parametrize("pool", [MIXED, NOTED, view(*MIXED.gpus[2:])], ids=["models", "note",
                                                                           "plain"])
def test_table_fits_the_terminal(pool, width):
    full, fitted = render.render_table(pool), render.render_table(pool, width=width)
    lines = fitted.split("\n")
    assert len(full) > len(fitted) and all(len(line) <= width for line in lines)
    want, got = columns(full), columns(fitted)
    # the columns left out are the first ones of the documented order
    gone = [title for title in want[0] if title not in got[0]]
    assert set(gone) == set([t for t in DROP_ORDER if t in want[0]][:len(gone)])
    assert got[0] == [title for title in want[0] if title not in gone]  # titles whole
    at = [want[0].index(title) for title in got[0]]
    whole = [got[0].index(title) for title in ("GPU", "STATUS", "USER", "DETAILS")]
    for full_row, row in zip(want[2:], got[2:]):
        kept = [full_row[i] for i in at]
        assert all(cut_from(a, b) for a, b in zip(kept, row)), row
        assert [row[i] for i in whole] == [kept[i] for i in whole]  # what a glance needs
        for title in ("DURATION", "TYPE"):  # whole or left out (run, manual: never cut)
            assert title not in got[0] or row[got[0].index(title)] == kept[got[0].index(title)]
    # 80 columns keep how long a GPU is held, and something of what it really does
    assert width < 80 or {"DURATION", "VALIDATION"} <= set(got[0])
    assert width < 120 or "MODEL" not in want[0] or "MODEL" in got[0]


def test_table_at_80_columns_without_models():
    assert render.render_table(view(*MIXED.gpus[2:]), width=80) == """\
GPU STATUS     USER       DURATION TYPE   DETAILS              VALIDATION
--- ---------- ---------- -------- ------ -------------------- -----------------
2   available                             free for 2h          45MB used
3   reserved   charlie    45m 0s   manual expires in 7h 15m 0s no usage detected
4   UNRESERVED root,alice                 WITHOUT RESERVATION  3072MB used by P…
5   error                                 GPU is lost"""


def test_table_at_60_columns_keeps_who_and_until_when():
    assert render.render_table(MIXED, width=60) == """\
GPU STATUS     USER       DURATION    DETAILS
--- ---------- ---------- ----------- ----------------------
0   reserved   bob        1h 30m 0s   heartbeat 5s ago
1   UNRESERVED alice                  WITHOUT RESERVATION
2   available                         free for 2h
3   reserved   charlie    45m 0s      expires in 7h 15m 0s
4   UNRESERVED root,alice             WITHOUT RESERVATION
5   error                             GPU is lost"""


def test_table_that_fits_is_not_cut_and_colour_survives_the_cut():
    assert render.render_table(MIXED, width=200) == render.render_table(MIXED)
    assert "teknium/OpenHermes-2.5-Mistral-7B" in render.render_table(MIXED, width=200)
    colored = render.render_table(MIXED, color=True, width=80)
    assert re.sub(r"\033\[\d+m", "", colored) == render.render_table(MIXED, width=80)


# ---------------------------------------------------------------- JSON
GPU_KEYS = {"id", "status", "reservation", "last_released_ms", "free_for_s", "memory_used_mb",
            "memory_total_mb", "name", "uuid", "error", "users", "processes", "model",
            "utilization_pct"}
HOLD_KEYS = {"id", "user", "uid", "host", "pid", "type", "start_ms", "duration_s",
             "heartbeat_ms", "heartbeat_age_s", "expires_ms", "expires_in_s", "note",
             "waiting", "idle_since_ms", "idle_s", "name"}


def test_json_document():
    doc = render.render_json(MIXED)
    assert json.loads(json.dumps(doc)) == doc
    assert {k: doc[k] for k in ("version", "time_ms", "provider", "scanned_ms",
                                "threshold_mb")} == {
        "version": 1, "time_ms": NOW, "provider": "fake", "scanned_ms": ago(1),
        "threshold_mb": OLD}
    assert doc["summary"] == {"total": 6, "available": 1, "reserved": 2, "unreserved": 2,
                              "error": 1}
    gpus = doc["gpus"]
    assert all(set(g) == GPU_KEYS for g in gpus)
    assert [g["status"] for g in gpus] == ["reserved", "unreserved", "available", "reserved",
                                           "unreserved", "error"]
    run_hold, manual_hold = gpus[0]["reservation"], gpus[3]["reservation"]
    assert set(run_hold) == set(manual_hold) == HOLD_KEYS
    assert run_hold == {
        "id": "r0", "user": "bob", "uid": 1000, "host": "gpu-box", "pid": 4242, "type": "run",
        "start_ms": ago(5400), "duration_s": 5400.0, "heartbeat_ms": ago(5),
        "heartbeat_age_s": 5.0, "expires_ms": None, "expires_in_s": None, "note": "",
        "waiting": False, "idle_since_ms": None, "idle_s": None, "name": ""}
    assert (manual_hold["expires_in_s"], manual_hold["heartbeat_ms"]) == (26100.0, None)
    assert gpus[0]["model"] == {"id": "microsoft/DialoGPT-large", "provider": "microsoft"}
    assert gpus[1]["reservation"] is None and gpus[1]["users"] == ["alice"]
    assert gpus[1]["processes"] == [{
        "pid": 22222, "name": "jupyter", "user": "alice", "used_memory_mb": 1000,
        "cmdline": ["python3", "-m", "sglang.launch_server", "--model-path",
                    "teknium/OpenHermes-2.5-Mistral-7B"]}]
    assert (gpus[2]["free_for_s"], gpus[2]["last_released_ms"]) == (7200.0, ago(7200))
    assert gpus[2]["memory_used_mb"] == 45 and gpus[2]["memory_total_mb"] == 81559
    assert gpus[4]["users"] == ["root", "alice"] and gpus[4]["model"] is None
    assert gpus[5]["error"] == "GPU is lost" and gpus[5]["free_for_s"] is None


def test_idle_reservation_in_table_and_json():
    from canhazgpu.model import GpuState, GpuUsage, Hold, PoolView
    hold = Hold(gpu=0, rid="r1", user="charlie", kind="manual", start_ms=ago(9000),
                expires_ms=NOW + 3600_000)
    view = PoolView(now_ms=NOW, gpus=(GpuState(gpu=0, hold=hold, usage=GpuUsage(
        index=0, memory_used_mb=45, utilization_pct=0), idle_since_ms=ago(7800)),))
    assert "idle 2h 10m" in render.render_table(view)
    assert "validated: no actual usage detected" in render.render_lines(view)  # unchanged
    doc = render.render_json(view)["gpus"][0]
    assert (doc["reservation"]["idle_s"], doc["utilization_pct"]) == (7800.0, 0)


def test_json_without_usage_or_gpus():
    doc = render.render_json(PoolView(now_ms=NOW, gpus=(gpu(0),), provider="nvidia"))
    assert doc["gpus"][0]["memory_used_mb"] is None and doc["gpus"][0]["users"] == []
    assert doc["gpus"][0]["status"] == "available" and doc["gpus"][0]["free_for_s"] is None
    assert render.render_json(PoolView(now_ms=NOW, gpus=()))["threshold_mb"] == 1024


# ---------------------------------------------------------------- summary (seeds/003)
def test_summary_lines():
    conflicts = [gpu(i) for i in range(2)] + \
        [gpu(i, hold=manual(i, "alice", 60, 60)) for i in range(2, 6)] + \
        [gpu(i, usage=use(i, 5000)) for i in range(6, 8)]
    assert render.render_summary(view(*conflicts)) == (
        "Available GPUs: 2 out of 8\nIn use with reservations: 4 GPUs\nUnreserved usage: 2 GPUs")
    assert render.render_summary(MIXED).split("\n")[1:] == [
        "In use with reservations: 2 GPUs", "Unreserved usage: 2 GPUs", "In error: 1 GPU"]


# ---------------------------------------------------------------- queue and report tables
QUEUE = [{"position": 1, "id": "w1", "user": "alice", "requested": [1, 3], "granted": [3],
          "waiting_s": 95.0, "type": "run", "note": "eval for the paper, please let me in"},
         {"position": 2, "id": "w2", "user": "bob", "requested": 2, "granted": [],
          "waiting_s": 4.2, "type": "manual", "note": ""}]


def test_queue_table():
    assert render.render_queue(QUEUE) == """\
POS  USER   REQUESTED  GRANTED  WAITING  NOTE
1    alice  GPUs 1,3   3        1m 35s   eval for the paper, please let me in
2    bob    2 GPU(s)   -        4s"""
    narrow = render.render_queue(QUEUE, 60).split("\n")
    assert max(map(len, narrow)) == 60 and narrow[1].endswith("  eval for the paper…")
    assert render.render_queue([]) == "The queue is empty."


REPORT = {"days": 7, "since_ms": 0, "now_ms": 0, "total_gpu_hours": 41.5, "users": [
    {"user": "alice", "gpu_hours": 30.25, "run": 4, "manual": 1, "percent": 72.9},
    {"user": "bob", "gpu_hours": 11.25, "run": 0, "manual": 2, "percent": 27.1}]}


def test_report_text_of_the_documentation():
    assert render.render_report(REPORT) == """\
GPU usage over the last 7 days: 41.50 GPU hours
USER   GPU HOURS   SHARE   RUN  MANUAL
alice      30.25   72.9%     4       1
bob        11.25   27.1%     0       2"""
    assert render.render_report({**REPORT, "days": 1, "total_gpu_hours": 0.0, "users": []}) \
        == "GPU usage over the last 1 day: 0.00 GPU hours\nNo reservations in this period."


def record(user, start_s, end_s, rid="r", kind="run"):
    return {"user": user, "rid": rid, "kind": kind, "start_ms": int(start_s * 1000),
            "end_ms": int(end_s * 1000)}


def test_report_of_a_short_run_never_shows_zero_hours_and_a_share():
    from canhazgpu.accounting import summarize
    data = summarize([record("me", 100, 101)], 0, 200_000, 0.5)  # one GPU for a second
    (me,) = data["users"]
    assert me["gpu_hours"] == data["total_gpu_hours"] == round(1 / 3600, 6)
    assert me["percent"] == 100.0
    head, _, row = render.render_report(data).split("\n")
    assert head == "GPU usage over the last 0.5 days: <0.01 GPU hours"
    assert row.split() == ["me", "<0.01", "100.0%", "1", "0"]
    # nothing at all (a reservation that ended as it began): no share either
    none = summarize([record("me", 100, 100)], 0, 200_000, 1)
    assert (none["users"][0]["gpu_hours"], none["users"][0]["percent"]) == (0.0, 0.0)
    assert render.render_report(none).split("\n")[2].split() == ["me", "0.00", "0.0%", "1", "0"]
    # shares are of the hours shown: they add up to 100
    data = summarize([record("a", 0, 3600, "1"), record("b", 0, 7200, "2")], 0, 10_000_000, 1)
    assert [(u["user"], u["gpu_hours"], u["percent"]) for u in data["users"]] == [
        ("b", 2.0, 66.7), ("a", 1.0, 33.3)]
