"""Exit codes mean one thing: 1 for every operational failure, 2 only for bad usage or a bad
value (docs/run.md, README); and the small refusals of issue 17: an option given twice,
`release --force` alone, a mistyped config key, `admin` re-run on a pool made elsewhere."""

from __future__ import annotations

import json
import subprocess

import pytest

from canhazgpu.gpu import nvidia


def one_error_line(proc) -> str:
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc.stderr


@pytest.fixture
def pool(cli):
    cli("admin", "--gpus", 4, check=0)
    return cli


def test_a_corrupt_fake_gpu_file_is_operational(pool, fake_gpus):
    fake_gpus.path.write_text("{not json")
    line = one_error_line(pool("reserve", check=1))
    assert f"fake GPU file {fake_gpus.path} is not valid JSON" in line
    fake_gpus.path.write_text(json.dumps({"gpus": [{"index": "zero"}]}))
    assert "index must be a whole number" in one_error_line(pool("reserve", "-g", 1, check=1))


@pytest.mark.parametrize("content", ["garbage\n", None], ids=["garbage", "a directory"])
def test_an_unusable_daemon_url_file_is_operational(cli, env, tmp_path, content):
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    if content is None:
        (state / "redis.url").mkdir()
    else:
        (state / "redis.url").write_text(content)
    implicit = {k: v for k, v in env.items() if k != "CANHAZGPU_REDIS_URL"}
    cli.env = implicit
    line = one_error_line(cli("status", check=1))
    assert str(state / "redis.url") in line


@pytest.mark.skipif(nvidia.available(), reason="NVML works here: a provider is found")
def test_admin_without_any_provider_is_operational_and_names_the_option(cli, tmp_path):
    none = {"CANHAZGPU_PROVIDER": "", "CANHAZGPU_FAKE_GPUS": "", "PATH": str(tmp_path)}
    line = one_error_line(cli("admin", "--gpus", 2, extra_env=none, check=1))
    assert "no GPU provider found" in line and "--provider nvidia|amd|fake" in line


def test_admin_rerun_keeps_the_stored_provider(cli, tmp_path):
    """The README's `admin --gpus 8` on the pool `serve --fake 8` made (no file, no env)."""
    bare = {"CANHAZGPU_PROVIDER": "", "CANHAZGPU_FAKE_GPUS": "", "PATH": str(tmp_path)}
    cli("admin", "--gpus", 4, "--provider", "fake", extra_env=bare, check=0)
    proc = cli("admin", "--gpus", 8, extra_env=bare, check=0)
    assert proc.stdout == "Initialized 8 GPUs (0 to 7) with provider fake\n"
    doc = json.loads(cli("status", "--json", extra_env=bare, check=0).stdout)
    assert doc["provider"] == "fake" and len(doc["gpus"]) == 8


@pytest.mark.parametrize("args", [("run", "--gpus", 2, "--gpus", 3, "--", "true"),
                                  ("reserve", "-g", 1, "-g", 2),
                                  ("wait", "-G", 1, "--gpu-ids", 2, "--", "true")])
def test_an_option_given_twice_is_a_usage_error(pool, args):
    line = one_error_line(pool(*args, check=2))
    assert "give --gpus once" in line or "give --gpu-ids once" in line
    assert not [g for g in json.loads(pool("status", "--json", check=0).stdout)["gpus"]
                if g["reservation"]]


def test_release_force_alone_says_what_to_give(pool):
    line = one_error_line(pool("release", "--force", check=2))
    assert "--user NAME" in line and "--gpu-ids IDS" in line


@pytest.mark.parametrize("text, suggested", [("memory_treshold = 5", "memory_threshold"),
                                             ('redis.url = "x"', "redis_url"),
                                             ('colour = "blue"', None)])
def test_an_unknown_config_key_gets_a_did_you_mean(cli, env, text, suggested):
    with open(env["CANHAZGPU_CONFIG"], "w") as config:
        config.write(text + "\n")
    line = one_error_line(cli("status", check=2))
    assert (f"did you mean {suggested!r}?" in line) if suggested else "did you mean" not in line


def test_the_suite_finds_the_processes_it_left(no_process_left_behind):
    """conftest's check at the end of the session sees a process this session started."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert child.pid in no_process_left_behind.processes()
    finally:
        child.kill()
        child.wait()
    assert child.pid not in no_process_left_behind.processes()


def test_a_hung_redis_is_not_called_not_running(cli, tmp_path):
    """A stopped (SIGSTOP) Redis accepts connections and never answers: say so, not 'start
    that Redis' (issue 17)."""
    import signal

    from canhazgpu.embedded import RedisServer
    with RedisServer(tmp_path / "hung") as server:
        server.proc.send_signal(signal.SIGSTOP)
        try:
            proc = cli("status", extra_env={"CANHAZGPU_REDIS_URL": server.url}, check=1)
        finally:
            server.proc.send_signal(signal.SIGCONT)
    line = one_error_line(proc)
    assert "does not answer" in line and "stopped, hung or overloaded" in line
    assert "start that Redis" not in line
