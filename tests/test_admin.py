"""`canhazgpu admin`: only root or the admin group changes the pool; providers that cannot
read this machine are refused; fake GPUs need no file."""

from __future__ import annotations

import json

import pytest
import redis

from canhazgpu.gpu import nvidia
from otheruser import as_nobody, needs_root, open_dir, open_redis  # noqa: F401 (fixtures)


@pytest.fixture
def open_env(env, open_dir, open_redis):
    """The test environment, on a Redis and files that uid 65534 can reach too."""
    client = redis.Redis(unix_socket_path=str(open_redis.socket))
    client.flushall()
    client.close()
    (open_dir / "gpus.json").write_text(json.dumps({"count": 8, "gpus": []}))
    (open_dir / "config.toml").write_text("")
    return {**env, "CANHAZGPU_REDIS_URL": open_redis.url, "HOME": str(open_dir),
            "CANHAZGPU_FAKE_GPUS": str(open_dir / "gpus.json"),
            "CANHAZGPU_CONFIG": str(open_dir / "config.toml"),
            "CANHAZGPU_STATE_DIR": str(open_dir / "state")}


def reservations(cli, env) -> dict[int, str]:
    doc = json.loads(cli("status", "--json", extra_env=env, check=0).stdout)
    return {g["id"]: g["reservation"]["user"] for g in doc["gpus"] if g["reservation"]}


@needs_root
def test_only_root_or_the_admin_group_changes_the_pool(cli, open_env, open_dir):
    cli("admin", "--gpus", 8, extra_env=open_env, check=0)
    cli("reserve", "--gpu-ids", 1, "-d", "1h", extra_env=open_env, check=0)
    for args in (("--gpus", 6, "--force"), ("--gpus", 8, "--provider", "fake"), ()):
        proc = as_nobody("admin", *args, env=open_env)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert proc.stderr == ("Error: only root (no admin_group is configured) may change "
                               "the pool; you are nobody: ask an admin, or run it with sudo\n")
        assert proc.stdout == ""
    assert len(json.loads(cli("status", "--json", extra_env=open_env).stdout)["gpus"]) == 8
    assert reservations(cli, open_env) == {1: "root"}  # root's reservation is untouched
    assert as_nobody("status", env=open_env).returncode == 0  # reading stays open

    # a member of the admin group may
    (open_dir / "config.toml").write_text('admin_group = "nogroup"\n')
    proc = as_nobody("admin", "--gpus", 6, "--force", env=open_env, groups="65534")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(cli("status", "--json", extra_env=open_env).stdout)["gpus"]) == 6
    assert reservations(cli, open_env) == {}
    proc = as_nobody("admin", "--gpus", 8, env=open_env)  # not in the group: refused
    assert proc.returncode == 1
    assert "only root or members of group 'nogroup' (admin_group)" in proc.stderr


def test_a_busy_pool_names_its_reservations_in_good_english(cli):
    cli("admin", "--gpus", 8, check=0)
    cli("reserve", "--gpu-ids", 0, check=0)
    proc = cli("admin", "--gpus", 4, check=1)
    assert proc.stderr.startswith("Error: 1 GPU is reserved: GPU 0 (")
    cli("reserve", "--gpu-ids", 1, check=0)
    assert cli("admin", "--gpus", 4, check=1).stderr.startswith("Error: 2 GPUs are reserved:")


def test_fake_gpus_need_no_file(cli):
    proc = cli("admin", "--gpus", 4, "--provider", "fake",
               extra_env={"CANHAZGPU_FAKE_GPUS": "", "CANHAZGPU_PROVIDER": ""}, check=0)
    assert proc.stdout == "Initialized 4 GPUs (0 to 3) with provider fake\n"
    lines = cli("status", "--format", "lines",
                extra_env={"CANHAZGPU_FAKE_GPUS": "", "CANHAZGPU_PROVIDER": ""}, check=0)
    assert len(lines.stdout.splitlines()) == 4
    for i, line in enumerate(lines.stdout.splitlines()):
        assert line.startswith(f"GPU {i}: AVAILABLE") and line.endswith("[validated: 0MB used]")


@pytest.mark.skipif(nvidia.available(), reason="NVML works here: nvidia is a valid provider")
def test_a_provider_that_cannot_read_this_machine_is_refused(cli):
    cli("admin", "--gpus", 2, check=0)
    proc = cli("admin", "--gpus", 4, "--provider", "nvidia", check=1)
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("Error: pool not changed: provider nvidia does not work here: ")
    assert "install the NVIDIA driver" in proc.stderr or "nvidia-ml-py" in proc.stderr
    doc = json.loads(cli("status", "--json", check=0).stdout)
    assert len(doc["gpus"]) == 2 and doc["provider"] == "fake"
