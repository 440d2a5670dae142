"""End-to-end: the real `canhazgpu` command against the real Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import held_gpus, wait_until


@pytest.fixture
def admin(cli):
    cli("admin", "--gpus", 8, check=0)
    return cli


def test_help_on_every_command_has_examples(cli):
    from canhazgpu.cli.main import _register, cli as group
    _register()
    commands = sorted(group.commands)
    assert {"admin", "status", "reserve", "release", "run", "report", "wait", "queue",
            "serve", "events"} <= set(commands)
    for cmd in ["", *commands]:
        proc = cli(*(cmd.split() + ["--help"]), check=0)
        assert "Examples:" in proc.stdout, cmd


def test_admin_creates_the_pool(cli):
    proc = cli("admin", "--gpus", 4, check=0)
    assert "Initialized 4 GPUs" in proc.stdout
    status = cli("status", "--json", check=0)
    assert len(json.loads(status.stdout)["gpus"]) == 4


def test_admin_without_count_asks_the_provider(cli, fake_gpus):
    fake_gpus.write(count=3)
    cli("admin", check=0)
    assert len(json.loads(cli("status", "--json").stdout)["gpus"]) == 3


def test_admin_refuses_resize_with_live_reservations(admin):
    admin("reserve", "--gpus", 1, check=0)
    proc = admin("admin", "--gpus", 4, check=1)
    assert "--force" in proc.stderr and proc.stderr.count("\n") == 1
    admin("admin", "--gpus", 4, "--force", check=0)


def test_reserve_short_prints_only_ids(admin):
    proc = admin("reserve", "--gpus", 2, "--short", check=0)
    assert proc.stdout == "0,1\n"


def test_reserve_and_release(admin):
    proc = admin("reserve", "--gpu-ids", "2,5", "--duration", "2h", "--note", "debug", check=0)
    assert "2,5" in proc.stdout
    data = json.loads(admin("status", "--json").stdout)
    held = {g["id"]: g["reservation"] for g in data["gpus"] if g["reservation"]}
    assert set(held) == {2, 5}
    assert held[2]["type"] == "manual" and held[2]["note"] == "debug"
    assert 7190 < held[2]["expires_in_s"] <= 7200
    out = admin("release", check=0)
    assert "2,5" in out.stdout
    assert admin("release", check=0).stdout.startswith("No manual reservations")


@pytest.mark.parametrize("args, fragment", [
    (("reserve", "--gpus", "0"), "'0'"),
    (("reserve", "--gpus", "-1"), "'-1'"),
    (("reserve", "--gpus", "abc"), "'abc'"),
    (("reserve", "--gpus", "9"), "9"),
    (("reserve", "--gpu-ids", "1,1"), "'1,1'"),
    (("reserve", "--gpu-ids", "8"), "8"),
    (("reserve", "--gpu-ids", "x"), "'x'"),
    (("reserve", "--duration", "5x"), "'5x'"),
    (("reserve", "--duration", "0"), "'0'"),
    (("reserve", "--duration", "0m"), "'0m'"),
    (("reserve", "--duration", "9999d"), "'9999d'"),
    (("reserve", "--gpus", "2", "--gpu-ids", "1"), "--gpu-ids 1"),
    (("run", "--gpus", "1"), "needs a command"),
    (("run", "--gpus", "1", "--timeout", "soon", "--", "true"), "'soon'"),
    (("report", "--days", "-3"), "'-3'"),
    (("reserve", "--bogus"), "--bogus"),
])
def test_bad_values_exit_2_with_one_line_and_change_nothing(admin, args, fragment):
    proc = admin(*args)
    assert proc.returncode == 2, proc
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(admin("status", "--json").stdout)
    assert all(g["reservation"] is None for g in data["gpus"])


def test_unknown_config_key_is_a_usage_error(admin, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('colour = "blue"\n')
    proc = admin("status", extra_env={"CANHAZGPU_CONFIG": str(bad)})
    assert proc.returncode == 2 and "unknown config key 'colour'" in proc.stderr


def test_not_enough_gpus_text(admin, fake_gpus):
    fake_gpus.write([{"index": 6, "memory_used_mb": 3000}, {"index": 7, "memory_used_mb": 3000}])
    admin("reserve", "--gpus", 5, check=0)
    proc = admin("run", "--gpus", 3, "--", "true")
    assert proc.returncode == 1
    assert proc.stderr == ("Error: Not enough GPUs available. Requested: 3, Available: 1 "
                           "(2 GPUs in use without reservation - run 'canhazgpu status' "
                           "for details)\n")


def test_redis_down_is_one_line_exit_1(admin):
    proc = admin("status", extra_env={"CANHAZGPU_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode == 1
    assert "redis://127.0.0.1:1/0" in proc.stderr and "canhazgpu serve" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_bad_redis_url_is_exit_2(admin):
    proc = admin("status", extra_env={"CANHAZGPU_REDIS_URL": "http://x"})
    assert proc.returncode == 2 and "http://x" in proc.stderr


def test_run_sets_cuda_visible_devices_and_releases(admin):
    proc = admin("run", "--gpus", 2, "--", sys.executable, "-c",
                 "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])",
                 extra_env={"CUDA_VISIBLE_DEVICES": "7"}, check=0)
    assert proc.stdout == "0,1\n"
    data = json.loads(admin("status", "--json").stdout)
    assert all(g["reservation"] is None for g in data["gpus"])


def test_run_holds_gpus_while_the_command_runs(admin):
    proc = admin("run", "--gpus", 1, "--", sys.executable, "-c",
                 "import subprocess, sys, json; "
                 "out = subprocess.run([sys.executable, '-m', 'canhazgpu', 'status', '--json'],"
                 " capture_output=True, text=True).stdout; "
                 "g = json.loads(out)['gpus'][0]['reservation']; print(g['type'], g['user'])",
                 check=0)
    kind, user = proc.stdout.split()
    assert kind == "run"


def test_run_exit_code_is_the_commands(admin):
    assert admin("run", "--", sys.executable, "-c", "raise SystemExit(7)").returncode == 7
    proc = admin("run", "--", sys.executable, "-c",
                 "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert proc.returncode == 128 + signal.SIGKILL


def test_run_command_not_found_releases(admin):
    proc = admin("run", "--gpus", 2, "--", "no-such-command-xyz")
    assert proc.returncode == 127 and "no-such-command-xyz" in proc.stderr
    data = json.loads(admin("status", "--json").stdout)
    assert all(g["reservation"] is None for g in data["gpus"])


def test_run_forwards_sigterm_and_releases(admin, tmp_path):
    ready = tmp_path / "ready"
    child = (f"import signal, sys, pathlib; "
             f"signal.signal(signal.SIGTERM, lambda *a: sys.exit(42)); "
             f"pathlib.Path({str(ready)!r}).write_text('x'); signal.pause()")
    proc = admin.popen("run", "--gpus", 1, "--", sys.executable, "-c", child)
    wait_until(ready.exists)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 42
    assert held_gpus(admin) == set()


def test_run_forwards_sigint_when_not_from_a_terminal(admin, tmp_path):
    ready = tmp_path / "ready"
    # ready is written inside the try: a SIGINT right after it is still the child's
    child = (f"import pathlib, time\n"
             f"try:\n    pathlib.Path({str(ready)!r}).write_text('x')\n    time.sleep(60)\n"
             f"except KeyboardInterrupt:\n    raise SystemExit(3)\n")
    proc = admin.popen("run", "--", sys.executable, "-c", child)
    wait_until(ready.exists)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 3


def test_run_survives_sighup_and_still_releases(admin, tmp_path):
    ready, go = tmp_path / "ready", tmp_path / "go"
    child = (f"import signal, pathlib, time\n"
             f"signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
             f"pathlib.Path({str(ready)!r}).write_text('x')\n"
             f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n")
    proc = admin.popen("run", "--gpus", 1, "--", sys.executable, "-c", child)
    wait_until(ready.exists)
    proc.send_signal(signal.SIGHUP)
    # the supervisor is still there, holding the GPU for the command that ignored the hang-up
    assert held_gpus(admin) == {0} and proc.poll() is None
    go.write_text("x")
    assert proc.wait(timeout=20) == 0
    assert held_gpus(admin) == set()


def test_run_timeout_terms_then_kills(admin):
    start = time.monotonic()
    proc = admin("run", "--timeout", "1s", "--", sys.executable, "-c",
                 "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                 "time.sleep(60)", extra_env={"CANHAZGPU_KILL_GRACE": "1s"})
    assert proc.returncode == 128 + signal.SIGKILL
    assert time.monotonic() - start < 20
    assert held_gpus(admin) == set()


def test_sigkilled_supervisor_gives_gpus_back_within_the_lease(admin, tmp_path):
    ready = tmp_path / "ready"
    env = {"CANHAZGPU_RUN_LEASE": "2s", "CANHAZGPU_HEARTBEAT_INTERVAL": "0.5s"}
    proc = admin.popen("run", "--gpus", 2, "--", sys.executable, "-c",
                       f"import pathlib, time; pathlib.Path({str(ready)!r}).write_text('x'); "
                       f"time.sleep(30)", extra_env=env, start_new_session=True)
    wait_until(ready.exists)
    assert held_gpus(admin) == {0, 1}
    killed = time.monotonic()
    proc.kill()
    proc.wait()
    wait_until(lambda: held_gpus(admin) == set(), timeout=10)
    assert time.monotonic() - killed <= 3.0
    os.killpg(proc.pid, signal.SIGKILL)  # the orphaned command


def test_release_someone_elses_gpu_is_refused(admin, rclient):
    admin("reserve", "--gpu-ids", 3, check=0)
    key = "canhazgpu:{testhost}:holds"
    hold = json.loads(rclient.hget(key, "3"))
    hold["user"], hold["uid"] = "bob", 4242  # authority is by uid
    rclient.hset(key, "3", json.dumps(hold))
    proc = admin("release", "--gpu-ids", 3)
    assert proc.returncode == 1 and "reserved by bob" in proc.stderr
    assert held_gpus(admin) == {3}


def test_report(admin):
    admin("reserve", "--gpus", 2, check=0)
    admin("run", "--", "true", check=0)
    proc = admin("report", "--days", 1, check=0)
    assert "GPU HOURS" in proc.stdout
    data = json.loads(admin("report", "--json").stdout)
    (me,) = data["users"]
    assert me["run"] == 1 and me["manual"] == 1 and me["percent"] == 100.0


def test_password_protected_redis(cli, tmp_path):
    from canhazgpu.embedded import RedisServer
    with RedisServer(tmp_path / "auth", password="s3cret") as server:
        good = f"unix://:s3cret@{server.socket}"
        cli("admin", "--gpus", 2, extra_env={"CANHAZGPU_REDIS_URL": good}, check=0)
        bad = cli("status", extra_env={"CANHAZGPU_REDIS_URL": f"unix://:wrong@{server.socket}"})
        assert bad.returncode == 1 and "s3cret" not in bad.stderr and "wrong" not in bad.stderr
        assert "password" in bad.stderr and bad.stderr.count("\n") == 1
        none = cli("status", extra_env={"CANHAZGPU_REDIS_URL": f"unix://{server.socket}"})
        assert none.returncode == 1 and "password" in none.stderr


def test_mru_strategy_prefers_my_recent_gpus(admin):
    env = {"CANHAZGPU_STRATEGY": "mru"}
    admin("reserve", "--gpu-ids", 6, extra_env=env, check=0)
    admin("release", extra_env=env, check=0)
    assert admin("reserve", "--short", extra_env=env, check=0).stdout == "6\n"
    admin("release", check=0)
    # LRU (the default) hands out the least recently released instead
    assert admin("reserve", "--short", check=0).stdout == "0\n"


def test_no_arguments_prints_help(cli):
    proc = cli()
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: canhazgpu")
    assert "Error" not in proc.stderr + proc.stdout


def test_unknown_command_is_a_usage_error(cli):
    proc = cli("xyzzy")  # (not near any command's name: no 'Did you mean')
    assert proc.returncode == 2 and proc.stderr == \
        "Error: No such command 'xyzzy'. (see 'canhazgpu --help')\n"


def test_memory_threshold_flag_decides_unreserved(admin, fake_gpus):
    fake_gpus.write([{"index": 1, "memory_used_mb": 3000}])
    default = json.loads(admin("status", "--json", check=0).stdout)
    assert default["gpus"][1]["status"] == "unreserved" and default["threshold_mb"] == 1024
    high = json.loads(admin("--memory-threshold", 5000, "status", "--json", check=0).stdout)
    assert high["gpus"][1]["status"] == "available" and high["threshold_mb"] == 5000
    env = json.loads(admin("status", "--json", extra_env={"CANHAZGPU_MEMORY_THRESHOLD": "5000"},
                           check=0).stdout)
    assert env["gpus"][1]["status"] == "available"


def test_releasing_a_running_jobs_gpu_is_not_undone_by_its_heartbeat(admin, tmp_path):
    ready = tmp_path / "ready"
    proc = admin.popen("run", "--gpus", 2, "--", sys.executable, "-c",
                       f"import pathlib, time; pathlib.Path({str(ready)!r}).write_text('x'); "
                       "time.sleep(60)", extra_env={"CANHAZGPU_HEARTBEAT_INTERVAL": "0.2s"},
                       stderr=subprocess.PIPE, text=True)
    wait_until(ready.exists)
    admin("release", "--gpu-ids", 1, check=0)  # the owner gives one GPU back by hand
    warning = proc.stderr.readline()  # the next heartbeat notices, once
    assert "GPU 1 no longer reserved for this command" in warning
    assert held_gpus(admin) == {0}  # and did not take it back
    proc.terminate()
    proc.wait(timeout=20)
    assert held_gpus(admin) == set()


def test_large_output_is_complete_through_a_pipe(cli):
    # more than a pipe buffer (64 KiB) of JSON: everything is flushed before the fast exit
    cli("admin", "--gpus", 300, check=0)
    out = cli("status", "--json", check=0).stdout
    assert len(out) > 65536 and len(json.loads(out)["gpus"]) == 300


def test_corrupt_state_names_the_key_and_heals_on_the_next_change(admin, rclient):
    rclient.hset("canhazgpu:{testhost}:holds", "3", "not json")
    rclient.hset("canhazgpu:{testhost}:released", "0", "garbage")
    proc = admin("status")  # the other GPUs are still shown; the unreadable ones name the key
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[3].startswith("GPU 3: ERROR (corrupt value in Redis key "
                               "canhazgpu:{testhost}:holds field 3")
    assert lines[0].startswith("GPU 0: ERROR (corrupt value in Redis key "
                               "canhazgpu:{testhost}:released field 0")
    assert all(line.startswith(f"GPU {i}: AVAILABLE") for i, line in enumerate(lines)
               if i not in (0, 3))
    assert json.loads(admin("status", "--json", check=0).stdout)["summary"]["error"] == 2
    admin("reserve", "--gpu-ids", 5, check=0)  # any script finalizes what it cannot read
    assert held_gpus(admin) == {5}
