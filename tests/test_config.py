"""Settings: flags > environment > config file > defaults; every bad value is exit 2."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canhazgpu.config import DEFAULT_URL, load
from canhazgpu.errors import FileUnreadable, InvalidRequest
from canhazgpu.store import Store, redacted
from canhazgpu.timefmt import coarse, hms, parse_duration, short
from otheruser import as_nobody, needs_root, open_dir  # noqa: F401 (fixture)


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
    assert cfg.redis.published == tmp_path / "redis.url"
    line = cfg.redis.unreachable(ConnectionRefusedError("refused"))
    assert line.startswith("the canhazgpu daemon's Redis at unix:///tmp/x.sock is not running")
    assert str(tmp_path / "redis.url") in line and "canhazgpu serve --embedded-redis" in line
    # a configured URL wins, and says where it came from
    env = {"CANHAZGPU_CONFIG": str(empty), "CANHAZGPU_STATE_DIR": str(tmp_path),
           "CANHAZGPU_REDIS_URL": "redis://db:1/0"}
    assert load(env=env).redis.origin == "$CANHAZGPU_REDIS_URL"
    assert "(set by $CANHAZGPU_REDIS_URL)" in load(env=env).redis.unreachable(OSError("x"))


def test_the_default_url_says_it_is_the_default(tmp_path):
    cfg = load(env={"CANHAZGPU_CONFIG": "/dev/null", "CANHAZGPU_STATE_DIR": str(tmp_path)})
    line = cfg.redis.unreachable(ConnectionRefusedError("refused"))
    assert line.startswith(f"cannot reach Redis at {DEFAULT_URL}, the default: no redis_url")


def test_a_bad_url_file_is_named(tmp_path):
    (tmp_path / "redis.url").write_text("garbage\n")
    cfg = load(env={"CANHAZGPU_CONFIG": "/dev/null", "CANHAZGPU_STATE_DIR": str(tmp_path)})
    with pytest.raises(FileUnreadable,
                       match=f"URL file {tmp_path / 'redis.url'} holds 'garbage'"):
        cfg.url


def test_config_flag_wins_over_the_environment_and_origins_are_kept(tmp_path):
    by_env, by_flag = tmp_path / "env.toml", tmp_path / "flag.toml"
    by_env.write_text("memory_threshold = 100\n")
    by_flag.write_text('memory_threshold = 200\nstrategy = "mru"\n')
    env = {"CANHAZGPU_CONFIG": str(by_env), "CANHAZGPU_HOST": "h1"}
    cfg = load({"config": str(by_flag), "scan_interval": "2s", "host": None}, env=env)
    assert cfg.memory_threshold == 200 and cfg.strategy == "mru"
    assert cfg.origin("memory_threshold") == str(by_flag)
    assert cfg.origin("host") == "$CANHAZGPU_HOST" and cfg.host == "h1"
    assert cfg.origin("scan_interval") == "--scan-interval"
    assert cfg.origin("kill_grace") == "default"
    with pytest.raises(InvalidRequest, match="cannot read config file /nonexistent.toml"):
        load({"config": "/nonexistent.toml"}, env=env)


def test_embedded_fsync_is_always_unless_configured():
    assert load(env={"CANHAZGPU_CONFIG": "/dev/null"}).embedded_fsync == "always"
    env = {"CANHAZGPU_CONFIG": "/dev/null", "CANHAZGPU_EMBEDDED_FSYNC": "everysec"}
    assert load(env=env).embedded_fsync == "everysec"
    with pytest.raises(InvalidRequest, match="invalid embedded_fsync 'no'"):
        load(env={**env, "CANHAZGPU_EMBEDDED_FSYNC": "no"})


@needs_root
def test_an_unreadable_config_file_is_one_line_exit_1(env, open_dir):
    secret = open_dir / "root-only.toml"
    secret.write_text("memory_threshold = 5\n")
    secret.chmod(0o600)
    home = open_dir / "home"  # a HOME kept by sudo: its ~/.config is not ours to read
    (home / ".config" / "canhazgpu").mkdir(parents=True, exist_ok=True)
    (home / ".config" / "canhazgpu" / "config.toml").write_text("strategy = 'mru'\n")
    home.chmod(0o700)
    implicit = {k: v for k, v in env.items() if k != "CANHAZGPU_CONFIG"}
    for extra, path in (({"CANHAZGPU_CONFIG": str(secret)}, secret),
                        ({"HOME": str(home)}, home / ".config/canhazgpu/config.toml")):
        proc = as_nobody("status", env={**implicit, **extra})
        assert proc.returncode == 1, proc.stderr  # operational: the file, not a value
        assert proc.stderr == (f"Error: cannot read config file {path} (Permission denied): "
                               "fix its permissions, or name another with --config FILE "
                               "(CANHAZGPU_CONFIG)\n")


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


URL_PIECES = ("redis", "rediss", "unix", "redis+cluster", "REDIS", "http", "://", ":", "/",
              "@", "u", ":pw", "Host", "127.0.0.1", "[::1]", "[", ":6379", ":0", ":65536",
              ":06379", ":x", "/0", "/", "?", "db=2", "&", "password=x", "#f", " ", "\t", "é")


@given(st.lists(st.sampled_from(URL_PIECES), min_size=1, max_size=9).map("".join))
def test_the_common_url_forms_are_read_as_urlsplit_reads_them(url):
    """urls.py reads the common forms without urllib.parse (start-up time): the same
    answers as urlsplit's way, which reads every other URL."""
    from urllib.parse import urlsplit

    from canhazgpu import urls
    assert urls.store_identity(url) == urls._identity_of_any(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number from 0 to 65535)
        accepted = parts.scheme in urls._URL_SCHEMES
    except ValueError:
        accepted = False
    if accepted:
        assert urls.check_url(url) == url
    else:
        with pytest.raises(InvalidRequest):
            urls.check_url(url)


def test_passwords_never_appear_in_messages():
    assert redacted("redis://user:hunter2@h:1/0") == "redis://user:***@h:1/0"
    assert "hunter2" not in Store("redis://:hunter2@127.0.0.1:1/0", "h").unreachable(OSError())


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("0.5h", 1800), ("1H", 3600),
    ("1h30m", 5400), ("1h 30m", 5400), ("1h 30m 0s", 5400), (" 2h 5s ", 7205),
    ("1d 12h", 129600), ("0h 15m 30s", 930)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@given(st.integers(1, 366 * 86400))
def test_what_we_print_reads_back(seconds):
    """hms and short print durations that -d accepts as they are (issue 17)."""
    assert parse_duration(hms(seconds)) == parse_duration(short(seconds)) == seconds


@pytest.mark.parametrize("text", ["5x", "0", "0m", "-1h", "", "h", "400d", "1.5.h", "30",
                                  "1h1h", "30m 1h", "1h,30m", "1h30"])
def test_bad_durations(text):
    with pytest.raises(InvalidRequest):
        parse_duration(text)


def test_zero_is_zero_with_or_without_a_unit():
    messages = []
    for text in ("0", "0s", "0h 0m 0s"):
        with pytest.raises(InvalidRequest) as err:
            parse_duration(text)
        messages.append(str(err.value).replace(repr(text), "D"))
    assert messages == ["invalid duration D: it must be greater than zero, e.g. 30m"] * 3


def test_duration_formats():
    assert hms(930) == "0h 15m 30s" and hms(3735) == "1h 2m 15s"
    assert short(5) == "5s" and short(2700) == "45m 0s" and short(5400) == "1h 30m 0s"
    assert coarse(7300) == "2h" and coarse(59) == "59s" and coarse(200000) == "2d"
