"""`canhazgpu config` / `doctor`: every setting with where it came from, and checks of
Redis, the pool, the daemon and the GPU provider."""

from __future__ import annotations

import json

from canhazgpu.config import KEYS


def test_settings_name_their_source_and_checks_say_what_answers(cli, env):
    proc = cli("--memory-threshold", "512", "config", "--json")
    assert proc.returncode == 1  # no pool yet: a check fails
    doc = json.loads(proc.stdout)
    settings = doc["settings"]
    assert set(settings) == set(KEYS)
    assert settings["memory_threshold"] == {"value": 512, "from": "--memory-threshold"}
    assert settings["host"] == {"value": "testhost", "from": "$CANHAZGPU_HOST"}
    assert settings["redis_url"] == {"value": env["CANHAZGPU_REDIS_URL"],
                                     "from": "$CANHAZGPU_REDIS_URL"}
    assert settings["kill_grace"] == {"value": "10s", "from": "default"}
    assert doc["config_files"] == [{"path": env["CANHAZGPU_CONFIG"],
                                    "chosen_by": "$CANHAZGPU_CONFIG", "exists": True}]
    checks = doc["checks"]
    assert checks["redis"]["status"] == "warn"  # the test Redis does not persist
    assert "appendonly no" in checks["redis"]["detail"]
    assert checks["pool"]["status"] == "fail" and "admin --gpus N" in checks["pool"]["detail"]
    assert checks["provider"]["status"] == "ok"  # CANHAZGPU_PROVIDER=fake needs no pool

    cli("admin", "--gpus", 3, check=0)
    proc = cli("doctor", check=0)  # the alias; nothing fails now
    lines = proc.stdout.splitlines()
    assert lines[2 + KEYS.index("memory_threshold")].startswith("memory_threshold = 1024 ")
    checks = dict(line.split(None, 2)[:2] for line in lines[lines.index("# checks") + 1:])
    assert checks == {"redis": "warn", "pool": "ok", "daemon": "warn", "provider": "ok"}
    assert "pool      ok    3 GPUs, provider fake" in lines


def test_redis_down_is_a_failed_check_naming_the_url(cli):
    proc = cli("doctor", extra_env={"CANHAZGPU_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode == 1
    redis_line = next(line for line in proc.stdout.splitlines() if line.startswith("redis "))
    assert redis_line.startswith("redis     fail  cannot reach Redis at redis://127.0.0.1:1/0 "
                                 "(set by $CANHAZGPU_REDIS_URL)")


def test_wait_gives_up_at_its_deadline(cli):
    proc = cli("doctor", "--wait", "0.3s", "--json",
               extra_env={"CANHAZGPU_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode == 1 and json.loads(proc.stdout)["checks"]["redis"]["status"] == "fail"
    assert cli("doctor", "--wait", "soon").returncode == 2


def test_the_config_option_names_the_file(cli, tmp_path):
    chosen = tmp_path / "chosen.toml"
    chosen.write_text("memory_threshold = 2048\n")
    doc = json.loads(cli("config", "--json", "--config", chosen).stdout)
    assert doc["config_files"] == [{"path": str(chosen), "chosen_by": "--config",
                                    "exists": True}]
    assert doc["settings"]["memory_threshold"] == {"value": 2048, "from": str(chosen)}
