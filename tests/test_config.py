"""Settings: flags > environment > config file > defaults; every bad value is exit 2."""

from __future__ import annotations

import pytest

from canhazgpu.config import DEFAULT_URL, load
from canhazgpu.errors import InvalidRequest
from canhazgpu.store import Store, redacted
from canhazgpu.timefmt import coarse, hms, parse_duration, short


def test_precedence(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('memory_threshold = 100\ndefault_duration = "2h"\nstrategy = "mru"\n')
    env = {"CANHAZGPU_CONFIG": str(file), "CANHAZGPU_MEMORY_THRESHOLD": "200"}
    cfg = load({"memory_threshold": "300"}, env=env)
    assert cfg.memory_threshold == 300
    assert load(env=env).memory_threshold == 200
    assert load(env=env).default_duration == "2h" and load(env=env).strategy == "mru"


def test_defaults(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    cfg = load(env={"CANHAZGPU_CONFIG": str(empty), "CANHAZGPU_STATE_DIR": str(tmp_path)})
    assert cfg.memory_threshold == 1024 and cfg.default_duration == "30m"
    assert cfg.url == DEFAULT_URL
    assert cfg.seconds("run_lease") <= 30  # a SIGKILLed run gives its GPUs back within 30 s


def test_embedded_daemon_url_file_is_found_without_configuration(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    (tmp_path / "redis.url").write_text("unix:///tmp/x.sock\n")
    cfg = load(env={"CANHAZGPU_CONFIG": str(empty), "CANHAZGPU_STATE_DIR": str(tmp_path)})
    assert cfg.url == "unix:///tmp/x.sock"


@pytest.mark.parametrize("content, fragment", [
    ('colour = "blue"', "unknown config key 'colour'"),
    ("memory_threshold = -5", "memory_threshold"),
    ('memory_threshold = "lots"', "memory_threshold"),
    ('run_lease = "5x"', "'5x'"),
    ('strategy = "random"', "'random'"),
    ('redis_url = "http://x"', "http://x"),
    ("this is not toml", "invalid config file"),
])
def test_bad_config_values(tmp_path, content, fragment):
    file = tmp_path / "c.toml"
    file.write_text(content)
    with pytest.raises(InvalidRequest) as err:
        load(env={"CANHAZGPU_CONFIG": str(file)})
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_env_values_are_validated_and_named():
    with pytest.raises(InvalidRequest, match=r"\$CANHAZGPU_MEMORY_THRESHOLD"):
        load(env={"CANHAZGPU_MEMORY_THRESHOLD": "x", "CANHAZGPU_CONFIG": "/dev/null"})


@pytest.mark.parametrize("url", [
    "redis://localhost:6379/0", "rediss://cache.example:6380/1",
    "redis://:secret@localhost:6379/0", "redis://gpu-user:secret@localhost:6379/0",
    "unix:///run/redis/redis.sock", "unix:///run/redis.sock?db=2",
])
def test_redis_url_forms(url):
    assert Store(url, "h").url == url


def test_passwords_never_appear_in_messages():
    assert redacted("redis://user:hunter2@h:1/0") == "redis://user:***@h:1/0"
    assert "hunter2" not in Store("redis://:hunter2@127.0.0.1:1/0", "h").unreachable(OSError())


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("0.5h", 1800), ("1H", 3600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "0", "0m", "-1h", "", "h", "400d", "1.5.h"])
def test_bad_durations(text):
    with pytest.raises(InvalidRequest):
        parse_duration(text)


def test_duration_formats():
    assert hms(930) == "0h 15m 30s" and hms(3735) == "1h 2m 15s"
    assert short(5) == "5s" and short(2700) == "45m 0s" and short(5400) == "1h 30m 0s"
    assert coarse(7300) == "2h" and coarse(59) == "59s" and coarse(200000) == "2d"
