"""Start-up: `--help` and completion list the commands without importing them, a command
imports its own module only, and the daemon path of the everyday commands stays free of
redis-py, psutil, ssl and logging set-up (an import check, not a timing: benchmarks/bench_cli.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import wait_until

# Printed by the child after the command ran: which modules it imported.
PROBE = """
import os, sys, json
from canhazgpu.cli import main as m
def exit_now(code):
    print("\\n" + json.dumps(sorted(sys.modules)), file=sys.stderr)
    sys.stderr.flush()
    os._exit(code)
m.exit_now = exit_now
sys.argv = ["canhazgpu", *sys.argv[1:]]
m.main()
"""
HEAVY = ("redis", "psutil", "ssl", "logging set-up")  # (asyncio imports logging itself)
COMMAND_MODULES = {f"canhazgpu.cli.{module}" for module, _ in
                   __import__("canhazgpu.cli.main", fromlist=["COMMANDS"]).COMMANDS.values()}


def imported(env: dict, *args: str, check: int = 0) -> tuple[subprocess.CompletedProcess, set]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == check, (proc.stdout, proc.stderr)
    return proc, set(json.loads(proc.stderr.rstrip().rsplit("\n", 1)[-1]))


def heavy(modules: set) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def commands_of(modules: set) -> set:
    return modules & COMMAND_MODULES


def test_the_table_names_every_command_and_its_module():
    from canhazgpu.cli.main import COMMANDS, _register, cli as group
    _register()
    assert set(COMMANDS) == set(group.commands)
    for name, (module, text) in COMMANDS.items():
        command = group.commands[name]
        assert sys.modules[command.callback.__module__].__name__.endswith(f".{module}"), name
        assert text.endswith(".") and len(text) <= 66, name  # one whole line at 80 columns


def test_help_lists_whole_descriptions_without_importing_commands(env):
    proc, modules = imported(env, "--help")
    assert commands_of(modules) == set() and heavy(modules) == [] and "asyncio" not in modules
    listing = proc.stdout.split("Commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    rows = {line.split()[0]: line.split(None, 1)[1] for line in listing}
    assert "..." not in "\n".join(listing) and len(rows) == len(listing)
    assert rows["config"] != rows["doctor"]
    assert rows["status"] == "Show every GPU: available, reserved or in use unreserved."


def test_the_version_needs_no_command_no_event_loop_and_no_package_metadata(env):
    proc, modules = imported(env, "--version")
    assert proc.stdout.startswith("canhazgpu, version ")
    assert commands_of(modules) == set()
    assert not modules & {"asyncio", "importlib.metadata"}


def test_completion_of_command_names_imports_no_command(env):
    env = {**env, "_CANHAZGPU_COMPLETE": "bash_complete", "COMP_WORDS": "canhazgpu re",
           "COMP_CWORD": "1"}
    proc, modules = imported(env)
    assert proc.stdout.split() == ["plain,release", "plain,report", "plain,reserve"]
    assert commands_of(modules) == set()
    env = {**env, "COMP_WORDS": "canhazgpu status --js", "COMP_CWORD": "2"}
    proc, modules = imported(env)
    assert proc.stdout.split() == ["plain,--json"]
    assert commands_of(modules) <= {"canhazgpu.cli.status", "canhazgpu.cli.hosts"}


def test_a_command_imports_its_own_module_only(env):
    _, modules = imported(env, "completion", "bash")
    assert commands_of(modules) == {"canhazgpu.cli.completion"} and "asyncio" not in modules


def test_an_unknown_command_is_still_a_usage_error(env):
    proc, _ = imported(env, "stauts", check=2)
    assert "No such command 'stauts'" in proc.stderr


def test_direct_mode_starts_its_event_loop_once(env, cli):
    cli("admin", "--gpus", 2, check=0)
    proc, modules = imported({**env, "CANHAZGPU_CLIENT": "direct"}, "reserve", "--gpus", "1")
    assert "redis" in modules and proc.stdout.count("Reserved 1 GPU") == 1


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["queue"], ["hosts"],
                                  ["hosts", "--json"], ["status", "--all-hosts", "--json"],
                                  ["submit", "--gpus", "1", "--", "true"]])
def test_direct_reads_import_neither_redis_py_nor_asyncio(env, cli, args):
    """Direct mode's views (and submit's pool size) read over a blocking connection
    (quickread.py): no event loop, no redis-py, no psutil's ssl."""
    cli("admin", "--gpus", 2, check=0)
    proc, modules = imported({**env, "CANHAZGPU_CLIENT": "direct"}, *args)
    if args[0] == "submit":
        stop_agent(env)
    assert not modules & {"redis", "asyncio", "ssl"}, proc.stdout


def stop_agent(env: dict) -> None:
    from canhazgpu.config import load
    from canhazgpu.jobs.files import JobDir, jobs_root
    """The job agent that submit started (it stays IDLE_S = 30 s after its last job)."""
    jobs = JobDir(jobs_root(load(env=env)))
    wait_until(lambda: jobs.agent_pid() is not None)
    os.kill(jobs.agent_pid(), signal.SIGTERM)
    wait_until(lambda: jobs.agent_pid() is None)


@pytest.fixture
def daemon_env(env, cli):
    """A daemon serving the test Redis; the CLI must go through it."""
    from canhazgpu.api.client import answering
    from canhazgpu.config import load
    cli("admin", "--gpus", 8, check=0)
    daemon = cli.popen("serve", stderr=subprocess.DEVNULL)
    config = load(env=env)
    wait_until(lambda: daemon.poll() is not None or answering(config) is not None)
    assert daemon.poll() is None
    return {**env, "CANHAZGPU_CLIENT": "daemon"}


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["queue"],
                                  ["reserve", "--gpus", "1"], ["release"], ["hosts"],
                                  ["hosts", "--json"], ["report"]])
def test_the_daemon_path_imports_no_redis_psutil_ssl_or_logging_set_up(daemon_env, args):
    proc, modules = imported(daemon_env, *args)
    assert heavy(modules) == [], proc.stdout
    assert len(commands_of(modules)) <= 3  # its own module and the helpers it shares
    assert "asyncio" not in modules  # one request over a blocking socket: no event loop
    # values cost no code generation (model.Value, not dataclasses), paths are strings
    assert not modules & {"dataclasses", "pathlib"}, proc.stdout


def test_events_through_the_daemon_import_no_redis(daemon_env):
    proc, modules = imported(daemon_env, "events", "--since", "0", "--count", "1")
    assert "pool_changed" in proc.stdout  # (anyio's event loop, with ssl: a command that lasts)
    assert not {m.split(".")[0] for m in modules} & {"redis", "psutil"}


def test_what_needs_an_event_loop_gets_one(daemon_env):
    """The fast path gives way before it prints anything: the output appears once."""
    proc, modules = imported(daemon_env, "reserve", "--wait", "1s")
    assert "asyncio" in modules
    assert proc.stdout.count("Reserved 1 GPU(s)") == 1


@pytest.mark.parametrize("args", [["status", "--all-hosts"], ["status", "--host", "x,y"]])
def test_the_views_across_hosts_are_one_request_to_the_daemon(daemon_env, args):
    """A daemon reads every host for us (any host on its Redis: client auto too), without
    redis-py or an event loop here; each section is printed once."""
    env = {**daemon_env, "CANHAZGPU_CLIENT": "auto"} if args[1] == "--host" else daemon_env
    proc, modules = imported(env, *args)
    assert heavy(modules) == [] and "asyncio" not in modules, proc.stderr
    if args[1] == "--host":
        assert proc.stdout.count("== x ") == 1 and proc.stdout.count("== y ") == 1
    else:
        assert proc.stdout.count("GPU 0:") == 1


def test_the_daemon_runs_on_uvloop_and_a_command_on_asyncio():
    """cli/runner.py: `serve` (server=True) on uvloop where installed, for its CPU per
    request; every other command on plain asyncio, which starts faster."""
    import asyncio

    from canhazgpu.cli import runner

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert runner.run(loop_module, server=True).startswith("uvloop")
    assert runner.run(loop_module).startswith("asyncio")
