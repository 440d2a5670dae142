"""The command line itself: where our options end and the command begins, global options in
either place, the Go tool's short flags, completion, colours and the progress line."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from canhazgpu.cli.jobs import ProgressLine
from canhazgpu.identity import current
from canhazgpu.request import QueueStatus
from canhazgpu.waitqueue import Progress
from conftest import ROOT, Cli, Terminal, open_pty

ARGV = "import json, os, sys; print(json.dumps([os.environ['CUDA_VISIBLE_DEVICES'], sys.argv[1:]]))"


@pytest.fixture
def pool(cli):
    cli("admin", "--gpus", 8, check=0)
    return cli


@pytest.fixture
def argv_script(tmp_path):
    """A command that prints its GPUs and its arguments as JSON."""
    script = tmp_path / "argv.py"
    script.write_text(ARGV)
    return [sys.executable, str(script)]


def job(proc) -> tuple[int, list[str]]:
    """What the argv script saw: (how many GPUs, its arguments)."""
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    gpus, args = json.loads(proc.stdout)
    return len(gpus.split(",")), args


def nothing_held_or_queued(cli) -> None:
    status = json.loads(cli("status", "--json", check=0).stdout)
    assert [g["id"] for g in status["gpus"] if g["reservation"]] == []
    assert json.loads(cli("queue", "--json", check=0).stdout) == []


# ---------------------------------------------------------------------- 1. unknown options
@pytest.mark.parametrize("args, named", [
    (("run", "--gpu", "2", "--"), "--gpus"),
    (("run", "-x", "2", "--"), None),
    (("run", "--nonblok"), "--nonblock"),
    (("run", "--timout", "1m"), "--timeout"),
    (("wait", "--gpu", "2", "--"), "--gpus"),
    (("wait", "--gpu", "2"), "--gpus"),
])
def test_unknown_option_before_the_command_is_a_usage_error(pool, argv_script, tmp_path,
                                                            args, named):
    proc = pool(*args, *argv_script)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.startswith("Error: No such option") and proc.stderr.count("\n") == 1
    if named:
        assert "Did you mean" in proc.stderr and named in proc.stderr
    nothing_held_or_queued(pool)


# ---------------------------------------------------------------------- 2. the command's own
@pytest.mark.parametrize("words", [
    ["--gpus", "4", "--epochs", "3"],
    ["--note", "x", "-h", "--timeout", "5", "--wait", "1m", "-g", "3"],
    ["--", "--gpus", "4"],
])
def test_everything_from_the_command_on_is_the_commands(pool, argv_script, words):
    assert job(pool("run", *argv_script, *words)) == (1, words)
    assert job(pool("run", "--", *argv_script, *words)) == (1, words)
    assert job(pool("run", "-g", "2", "--note", "n", *argv_script, *words)) == (2, words)


def test_wait_leaves_the_commands_options_alone(pool, argv_script):
    words = ["--gpus", "4", "--timeout", "1", "--short", "-d", "1h"]
    assert job(pool("wait", "--quiet", *argv_script, *words)) == (1, words)
    proc = pool("wait", "-G", "3", "-t", "1m", "--", *argv_script, *words)
    assert json.loads(proc.stdout) == ["3", words]
    nothing_held_or_queued(pool)


# ---------------------------------------------------------------------- 3. global options
def test_global_options_work_before_and_after_the_command_name(pool, cli, fake_gpus):
    cli("admin", "--gpus", 2, "--host", "other", check=0)
    for args in (("--host", "other", "status", "--json"), ("status", "--host", "other", "--json"),
                 ("--host", "testhost", "status", "--host", "other", "--json")):
        assert len(json.loads(cli(*args, check=0).stdout)["gpus"]) == 2, args
    assert len(json.loads(cli("status", "--json", check=0).stdout)["gpus"]) == 8

    fake_gpus.write(gpus=[{"index": 1, "memory_used_mb": 600,
                           "processes": [{"pid": 1, "user": "bob", "used_memory_mb": 600}]}])

    def unreserved(*args):
        data = json.loads(cli(*args, "--json", check=0).stdout)
        return [g["id"] for g in data["gpus"] if g["status"] == "unreserved"]
    assert unreserved("status") == []
    assert unreserved("status", "--memory-threshold", "512") == [1]
    assert unreserved("--memory-threshold", "512", "status") == [1]
    assert unreserved("--memory-threshold", "512", "status", "--memory-threshold", "1024") == []
    proc = cli("status", "--memory-threshold", "lots", check=2)
    assert "'lots'" in proc.stderr


def test_config_option_is_accepted_in_both_places(cli, tmp_path):
    # config.load reads flags["config"] (helper H2's change); here: the option parses
    path = tmp_path / "other.toml"
    path.write_text("")
    for args in (("--config", path, "status", "--help"), ("status", "--config", path, "--help")):
        assert "Usage: canhazgpu status" in cli(*args, check=0).stdout
    assert "requires an argument" in cli("status", "--config", check=2).stderr


def test_help_lists_the_global_options_apart(cli):
    out = cli("reserve", "--help", check=0).stdout
    own, common = out.split("Global options:")
    assert "--duration" in own and "--redis-url" not in own
    for name in ("--config FILE", "--redis-url", "--host", "--memory-threshold", "--no-color"):
        assert name in common


# ---------------------------------------------------------------------- 4. short flags
def test_short_flags_of_the_go_tool(pool, argv_script):
    doc = json.loads(pool("reserve", "-g", "2", "-d", "1h", "-n", "hi", "-j", check=0).stdout)
    assert doc["gpus"] == [0, 1] and doc["duration_s"] == 3600
    assert pool("reserve", "-G", "3,4", "-s", "-w", "1m", "-q", check=0).stdout == "3,4\n"
    assert json.loads(pool("release", "-G", "3,4", "-j", check=0).stdout) == {"released": [3, 4]}
    proc = pool("run", "-g2", "-t", "1m", "-n", "x", "--nonblock", *argv_script, check=0)
    assert json.loads(proc.stdout) == ["2,5", []]  # never released ones first, by id
    assert pool("wait", "-G", "5", "-t", "1m", "-d", "1h", "-s", "-q", check=0).stdout == "5\n"
    status = json.loads(pool("status", "--json", check=0).stdout)
    held = {g["id"]: g["reservation"] for g in status["gpus"] if g["reservation"]}
    assert sorted(held) == [0, 1, 5] and held[0]["note"] == "hi"


def test_nonblock_fails_at_once_and_excludes_wait(pool, argv_script):
    pool("reserve", "--gpus", 8, check=0)
    proc = pool("reserve", "--nonblock", check=1)
    assert "Not enough GPUs available" in proc.stderr
    proc = pool("run", "--nonblock", "--wait", "1m", *argv_script, check=2)
    assert "--wait 1m" in proc.stderr and "--nonblock" in proc.stderr


def test_gpus_and_gpu_ids_together_when_the_counts_agree(pool):
    assert pool("reserve", "--gpus", 2, "--gpu-ids", "1,3", "-s", check=0).stdout == "1,3\n"
    proc = pool("reserve", "--gpus", 3, "--gpu-ids", "5,6", check=2)
    assert "--gpus 3" in proc.stderr and "--gpu-ids 5,6" in proc.stderr
    nothing = json.loads(pool("status", "--json", check=0).stdout)
    assert [g["id"] for g in nothing["gpus"] if g["reservation"]] == [1, 3]


def test_reserve_force_claims_only_your_own_unreserved_gpu(pool, fake_gpus):
    me = current().user
    fake_gpus.write(gpus=[
        {"index": 2, "processes": [{"pid": 10, "user": me, "used_memory_mb": 4096}]},
        {"index": 3, "processes": [{"pid": 11, "user": "bob", "used_memory_mb": 4096}]},
        {"index": 4, "processes": [{"pid": 12, "user": me, "used_memory_mb": 2048},
                                   {"pid": 13, "user": "bob", "used_memory_mb": 2048}]},
    ])
    assert "in use without reservation" in pool("reserve", "-G", "2", check=1).stderr
    proc = pool("reserve", "-G", "3", "--force", check=1)
    assert "GPU 3 is in use without reservation" in proc.stderr
    pool("reserve", "-G", "4", "--force", check=1)  # bob's process is there too
    assert pool("reserve", "-G", "2", "--force", "-s", check=0).stdout == "2\n"
    assert "--wait" in pool("reserve", "--force", "--wait", "1m", check=2).stderr


# ---------------------------------------------------------------------- 10. completion
@pytest.mark.parametrize("shell, marker", [
    ("bash", "complete -o nosort -F _canhazgpu_completion canhazgpu"),
    ("zsh", "#compdef canhazgpu"),
    ("fish", "complete --no-files --command canhazgpu"),
])
def test_completion_prints_the_script(cli, shell, marker):
    out = cli("completion", shell, check=0).stdout
    assert marker in out and "_CANHAZGPU_COMPLETE" in out
    assert "'tcsh'" in cli("completion", "tcsh", check=2).stderr


def complete(cli, line: str, extra_env=None) -> list[str]:
    """What bash completion offers for the last word of line (asyncclick's protocol)."""
    words = line.split(" ")
    proc = cli(extra_env={"_CANHAZGPU_COMPLETE": "bash_complete", "COMP_WORDS": line,
                          "COMP_CWORD": str(len(words) - 1), **(extra_env or {})}, check=0)
    return proc.stdout.splitlines()


@pytest.fixture
def path(tmp_path):
    """$PATH with a folder holding programs `mytool` and `canhazgpu`, and a file `mydata`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text, mode in (
            ("mytool", "#!/bin/sh\n", 0o755), ("mydata", "", 0o644),
            ("canhazgpu", f'#!/bin/sh\nexec "{sys.executable}" -m canhazgpu "$@"\n', 0o755)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(mode)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_completion_of_commands_and_options(cli, path):
    assert complete(cli, "canhazgpu st") == ["plain,status"]
    assert complete(cli, "canhazgpu run --gp") == ["plain,--gpus", "plain,--gpu-ids"]
    assert "plain,--redis-url" in complete(cli, "canhazgpu status --re")
    # after run/wait: a program first, then files, and no options of ours
    assert complete(cli, "canhazgpu run -g 2 myt", path) == ["plain,mytool"]
    assert complete(cli, "canhazgpu wait my", path) == ["plain,mytool"]
    assert complete(cli, "canhazgpu run mytool da", path) == ["file,da"]
    assert complete(cli, "canhazgpu run mytool --gp", path) == ["file,--gp"]
    assert complete(cli, "canhazgpu run ./my", path) == ["file,./my"]


def test_bash_runs_the_completion_script(cli, path, tmp_path):
    script = tmp_path / "canhazgpu.bash"
    script.write_text(cli("completion", "bash", check=0).stdout)
    probe = (f"source {script}; COMP_WORDS=(canhazgpu run -g 2 myt); COMP_CWORD=4; "
             "_canhazgpu_completion canhazgpu; echo \"${COMPREPLY[@]}\"")
    proc = subprocess.run(["bash", "--norc", "-c", probe], capture_output=True, text=True,
                          env={**cli.env, **path}, timeout=60)
    assert proc.stdout == "mytool\n", proc.stderr


def test_version(cli):
    from importlib.metadata import version
    assert cli("--version", check=0).stdout == f"canhazgpu, version {version('canhazgpu')}\n"


# ---------------------------------------------------------------------- 11. progress line
def progress(position=2, queued=3, granted=(), want=2, eta_s=None) -> Progress:
    return Progress(QueueStatus(position, tuple(granted), False, queued), want, eta_s)


def test_progress_line_fits_the_terminal():
    master, slave = open_pty(24, 40)
    with open(slave, "w") as stream:
        line = ProgressLine(stream)
        line(progress(eta_s=125))
        line(progress(position=1, eta_s=0))
        line.done()
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # read everything: the writer is closed
            break
        seen += chunk
    os.close(master)
    drawn = seen.decode().split("\r\x1b[K")[1:]
    # the longest form that fits, never a cut estimate
    assert drawn == ["queued 2/3, 0/2 granted, in ~2m 5s", "queued 1/3, 0/2 granted, now", ""]


@pytest.mark.parametrize("columns, expected", [
    (60, "waiting: position 1 of 1, 0/2 granted, expected in ~19m 57s"),
    (80, "waiting: position 1 of 1, 0/2 granted, expected in ~19m 57s"),
    (120, "waiting for 2 GPU(s): position 1 of 1 in the queue, 0/2 granted, "
          "expected in ~19m 57s")])
def test_progress_line_keeps_the_estimate_whole(columns, expected):
    texts = ProgressLine.texts(progress(position=1, queued=1, eta_s=1197))
    assert next(t for t in texts if len(t) < columns) == expected


def test_progress_line_off_a_terminal_only_when_something_changes(tmp_path):
    log = tmp_path / "stderr.log"
    with open(log, "w") as stream:
        line = ProgressLine(stream)
        for eta in (300, 297, 294):  # only the estimate ticks
            line(progress(eta_s=eta))
        line(progress(position=1, eta_s=290))
        line(progress(position=1, granted=(4,), eta_s=290))
        line(progress(position=1, granted=(4,), queued=2, eta_s=12))
        line.done()
    lines = log.read_text().splitlines()
    assert lines == [
        "canhazgpu: waiting for 2 GPU(s): position 2 of 3 in the queue, 0/2 granted, "
        "expected in ~5m 0s",
        "canhazgpu: waiting for 2 GPU(s): position 1 of 3 in the queue, 0/2 granted, "
        "expected in ~4m 50s",
        "canhazgpu: waiting for 2 GPU(s): position 1 of 3 in the queue, 1/2 granted, "
        "expected in ~4m 50s",
        "canhazgpu: waiting for 2 GPU(s): position 1 of 2 in the queue, 1/2 granted, "
        "expected in ~12s",
    ]


# ---------------------------------------------------------------------- 15. small ones
@pytest.fixture
def tty_env(pool, env):
    return {**env, "TERM": "xterm", "NO_COLOR": ""}


@pytest.mark.anyio
async def test_empty_no_color_keeps_colours(tty_env):
    term = Terminal(Cli.argv("status"), tty_env)
    await term.expect("\x1b[32m")  # green: available
    assert await term.wait() == 0


@pytest.mark.anyio
@pytest.mark.parametrize("args", [("status", "--no-color"), ("--no-color", "status")])
async def test_no_color_flag(tty_env, args):
    term = Terminal(Cli.argv(*args), tty_env)
    await term.expect("\n7 ")  # the last GPU's row
    assert await term.wait() == 0
    assert "\x1b[" not in term.text


def test_releasing_a_gpu_nobody_holds_is_not_a_usage_error(pool):
    proc = pool("release", "--gpu-ids", 5, check=1)
    assert "GPU 5 is not reserved" in proc.stderr
    pool("release", "--gpu-ids", 9, check=2)  # outside the pool: that is one


# ---------------------------------------------------------------------- issue 8: imports
def test_command_modules_do_not_import_each_other():
    commands = {"run", "wait", "reserve", "status", "admin", "report", "serve", "events"}
    for name in ("run", "wait", "reserve"):
        path = ROOT / "src" / "canhazgpu" / "cli" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = {node.module} if node.module else {a.name for a in node.names}
                assert not names & (commands - {name}), (name, names)
