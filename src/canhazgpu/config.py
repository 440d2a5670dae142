"""Settings: flags > CANHAZGPU_* environment > TOML config file > defaults, validated once.

Which Redis a command uses is decided by one rule (docs/configuration.md, `Config.redis`):
a configured `redis_url` (flag, env, file), else the URL that `serve --embedded-redis`
published in a state directory, else the default. The published URL stays after the daemon
stops, so clients keep naming the daemon's Redis ("not running") instead of drifting to
another store.
"""

from __future__ import annotations

import os
from os.path import expanduser, isdir, join
from typing import TYPE_CHECKING

from .errors import BackendUnavailable, FileUnreadable, InvalidRequest
from .model import Value, fill
from .timefmt import parse_duration
from .urls import check_url, redacted

if TYPE_CHECKING:
    from pathlib import Path

# Paths are strings here: pathlib (with urllib.parse) is not imported by a command through
# the daemon (start-up time); the properties that callers use as paths give Path objects.
SYSTEM_CONFIG = "/etc/canhazgpu/config.toml"
USER_CONFIG = "~/.config/canhazgpu/config.toml"
SYSTEM_STATE = "/var/lib/canhazgpu"
URL_FILE = "redis.url"  # where `serve --embedded-redis` publishes its Redis's URL
DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT = "default"
# Where clients also look for the daemon's API: the secured systemd unit's, then one beside
# the system state directory (an unsecured daemon with the default state directory).
SYSTEM_API_SOCKETS = ("/run/canhazgpu/api.sock", join(SYSTEM_STATE, "api.sock"))


class RedisChoice(Value):
    """The Redis this configuration names, and where that came from (for every message):
    origin is "--redis-url", "$CANHAZGPU_REDIS_URL", a file, "default", or "" when set in
    code; published is the daemon's URL file the URL was read from."""

    __slots__ = ("url", "origin", "published")

    def __init__(self, url: str, origin: str, published: Path | None = None) -> None:
        fill(self, locals())

    def unreachable(self, err: BaseException) -> str:
        """The one line for "this Redis does not answer", naming where it came from."""
        url, why = redacted(self.url), err or type(err).__name__
        if type(err).__name__ == "TimeoutError":  # builtin or redis-py's: it is there, hung
            whose = "the canhazgpu daemon's Redis" if self.published else "Redis"
            set_by = f" (set by {self.origin})" if self.origin not in ("", DEFAULT) else ""
            return (f"{whose} at {url}{set_by} does not answer ({why}): it accepts "
                    "connections but is stopped, hung or overloaded; check its redis-server "
                    "process ('kill -CONT PID' resumes a stopped one)")
        if self.published is not None:
            return (f"the canhazgpu daemon's Redis at {url} is not running ({why}; its URL "
                    f"is published in {self.published}): start 'canhazgpu serve "
                    "--embedded-redis'")
        if self.origin == DEFAULT:
            return (f"cannot reach Redis at {url}, the default: no redis_url is configured "
                    f"and no 'canhazgpu serve --embedded-redis' ran on this host ({why}): "
                    "start one with 'canhazgpu serve --embedded-redis', or set "
                    "CANHAZGPU_REDIS_URL")
        if not self.origin:  # set in code: the daemon's own embedded Redis, tests
            return (f"cannot reach Redis at {url} ({why}): start it, or point "
                    "CANHAZGPU_REDIS_URL at a running Redis")
        where = self.origin if self.origin.startswith(("-", "$")) \
            else f"redis_url in {self.origin}"
        return (f"cannot reach Redis at {url} (set by {self.origin}) ({why}): start that "
                f"Redis, or point {where} at a running one ('canhazgpu serve "
                "--embedded-redis' runs a private one)")


class Config(Value):
    """The effective settings (docs/configuration.md): each key a parameter here, with its
    default; `origins` says where each key's value came from ("--host", "$CANHAZGPU_HOST",
    a file), and is not a setting."""

    __slots__ = (
        "redis_url", "provider", "fake_gpus", "memory_threshold", "host", "state_dir",
        "default_duration", "run_lease", "heartbeat_interval", "kill_grace", "strategy",
        "admin_group", "scan_interval", "snapshot_max_age", "queue_lease", "embedded_fsync",
        "api_socket", "client", "user_connections", "user_waiters", "user_gpus",
        "max_duration", "idle_utilization_pct", "idle_warn_after", "idle_release_after",
        "idle_kernels", "notify", "notify_repeat", "notify_expiry", "origins")

    def __init__(
        self,
        redis_url: str = "",  # empty: the embedded daemon's published URL, else DEFAULT_URL
        provider: str = "",  # empty: the pool's provider, else auto-detect
        fake_gpus: str = "",
        memory_threshold: int = 1024,  # MB; above it a GPU is "in use"
        host: str = "",
        state_dir: str = "",
        default_duration: str = "30m",
        run_lease: str = "20s",  # a SIGKILLed `run` gives its GPUs back within this
        heartbeat_interval: str = "5s",
        kill_grace: str = "10s",  # `run --timeout`: SIGTERM, then SIGKILL after this
        strategy: str = "lru",  # or "mru": your own most recently used GPUs first
        admin_group: str = "",
        scan_interval: str = "1s",  # daemon
        snapshot_max_age: str = "3s",  # a daemon snapshot younger than this is used, not a scan
        queue_lease: str = "10s",  # a waiter that stops heartbeating leaves the queue after this
        embedded_fsync: str = "always",  # `serve --embedded-redis`: AOF fsync policy
        api_socket: str = "",  # empty: STATE_DIR/api.sock (clients also try SYSTEM_API_SOCKETS)
        client: str = "auto",  # auto: the daemon's API when it answers, else Redis; daemon; direct
        # per-user limits the daemon enforces (0: none); root is never limited
        user_connections: int = 12000,  # API connections open at once (a wait, `events`: one each)
        user_waiters: int = 2500,  # requests queued at once through the daemon
        user_gpus: int = 0,  # GPUs held at once (checked in the allocate script)
        max_duration: str = "366d",  # the longest manual reservation
        # use it or lose it (docs/idle.md): off unless idle_warn_after / idle_release_after is set
        idle_utilization_pct: int = 5,  # below this (and no holder process in use) a GPU is idle
        idle_warn_after: str = "",
        idle_release_after: str = "",
        idle_kernels: bool = False,  # the policy also releases Jupyter kernels' reservations
        # notifications (docs/notify.md): admin [[notify]] tables, reminders' pace
        notify: tuple = (),
        notify_repeat: str = "1h",  # the same unreserved use is notified once per this
        notify_expiry: str = "10m",  # "expires soon" this long before a reservation ends; "": never
        origins: dict | None = None,
    ) -> None:
        origins = {} if origins is None else origins
        fill(self, locals())

    # ------------------------------------------------------------------ derived values
    @property
    def host_name(self) -> str:
        if self.host:
            return self.host
        import socket
        return socket.gethostname().split(".")[0]

    @property
    def state_path(self) -> Path:
        from pathlib import Path
        return Path(self._state_dir())

    def _state_dir(self) -> str:
        if self.state_dir:
            return expanduser(self.state_dir)
        if isdir(SYSTEM_STATE) and os.access(SYSTEM_STATE, os.W_OK | os.X_OK):
            return SYSTEM_STATE
        return expanduser("~/.local/state/canhazgpu")

    @property
    def redis(self) -> RedisChoice:
        """The configured URL, else the one the embedded daemon published, else the default."""
        if self.redis_url:
            return RedisChoice(self.redis_url, self.origins.get("redis_url", ""))
        for directory in dict.fromkeys((self._state_dir(), SYSTEM_STATE)):  # in this order
            found = join(directory, URL_FILE)
            try:
                text = _read(found, "the canhazgpu daemon's URL file",
                             "or set redis_url (CANHAZGPU_REDIS_URL)", private=True)
            except PermissionError:
                raise BackendUnavailable(
                    f"the canhazgpu daemon's Redis (its URL in {found}) is private to the "
                    "daemon's user: commands reach it through the daemon, which does not "
                    "answer now; is 'canhazgpu serve' running? (an admin: systemctl status "
                    "canhazgpu)") from None
            if text is not None:
                url = text.strip()
                try:
                    check_url(url)
                except InvalidRequest:
                    raise FileUnreadable(f"the canhazgpu daemon's URL file {found} holds "
                                         f"{url[:80]!r}, not a Redis URL: delete it and "
                                         "start 'canhazgpu serve --embedded-redis' again"
                                         ) from None
                from pathlib import Path
                return RedisChoice(url, f"published by the daemon in {found}",
                                   published=Path(found))
        return RedisChoice(DEFAULT_URL, DEFAULT)

    @property
    def url(self) -> str:
        return self.redis.url

    def origin(self, key: str) -> str:
        """Where a setting came from: a flag, an env variable, a config file, or "default"."""
        return self.origins.get(key, DEFAULT)

    @property
    def api_path(self) -> Path:
        """Where the daemon listens for API clients."""
        from pathlib import Path
        return Path(self._api_socket())

    def _api_socket(self) -> str:
        return expanduser(self.api_socket) if self.api_socket \
            else join(self._state_dir(), "api.sock")

    def api_paths(self) -> list[str]:
        """Where a client looks for the daemon, like the embedded Redis URL is found (as
        strings: a client of the daemon does not import pathlib)."""
        if self.api_socket:
            return [self._api_socket()]
        return list(dict.fromkeys([self._api_socket(), *SYSTEM_API_SOCKETS]))

    def seconds(self, name: str) -> float:
        value = getattr(self, name)
        found = _SECONDS.get((name, value))
        if found is None:
            found = _SECONDS[name, value] = parse_duration(value, what=name.replace("_", "-"))
        return found

    def optional_seconds(self, name: str) -> float | None:
        """A duration that may be left empty (a policy that is off): None then."""
        return self.seconds(name) if getattr(self, name) else None


_SECONDS: dict[tuple[str, str], float] = {}  # (key, its text) -> seconds: parsed once

_INT_KEYS = {"memory_threshold", "user_connections", "user_waiters", "user_gpus",
             "idle_utilization_pct"}
_BOOL_KEYS = {"idle_kernels"}
_DURATION_KEYS = {"default_duration", "run_lease", "heartbeat_interval", "kill_grace",
                  "scan_interval", "snapshot_max_age", "queue_lease", "max_duration",
                  "notify_repeat"}
_OPTIONAL_DURATIONS = {"idle_warn_after", "idle_release_after", "notify_expiry"}  # "": off
_CHOICES = {"strategy": ("lru", "mru"), "provider": ("", "nvidia", "amd", "fake"),
            "embedded_fsync": ("always", "everysec"), "client": ("auto", "daemon", "direct")}
KEYS = Config.__slots__[:-1]  # (not "origins")


def _coerce(key: str, value, origin: str):
    if key not in KEYS:
        from difflib import get_close_matches
        close = get_close_matches(str(key).lower().replace("-", "_").replace(".", "_"),
                                  KEYS, n=1, cutoff=0.6)
        fix = f"did you mean {close[0]!r}?" if close else f"known keys are {', '.join(KEYS)}"
        raise InvalidRequest(f"unknown config key {key!r} in {origin}: {fix}")
    if key == "notify":
        from .notify.rules import parse_admin_rules
        return parse_admin_rules(value, origin)
    if key in _BOOL_KEYS:
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        if not isinstance(value, bool):
            raise InvalidRequest(f"invalid {key} {value!r} in {origin}: use true or false")
        return value
    if key in _INT_KEYS:
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = -1
        if key == "idle_utilization_pct" and not 0 <= number <= 100:
            number = -1
        if number < 0 or isinstance(value, bool):
            allowed = {"idle_utilization_pct": "a percentage from 0 to 100",
                       "memory_threshold": "a whole number of MB >= 0"}.get(
                key, "a whole number >= 0 (0: no limit)")
            raise InvalidRequest(f"invalid {key} {value!r} in {origin}: use {allowed}")
        return number
    value = str(value)
    if key in _DURATION_KEYS or (key in _OPTIONAL_DURATIONS and value):
        parse_duration(value, what=f"{key} in {origin}")
    if key in _CHOICES and value not in _CHOICES[key]:
        allowed = ", ".join(c for c in _CHOICES[key] if c)
        raise InvalidRequest(f"invalid {key} {value!r} in {origin}: use one of {allowed}")
    if key == "redis_url" and value:
        check_url(value)
    return value


def _read(path: str, what: str, fix: str, private: bool = False) -> str | None:
    """A file's text; None when it does not exist. Any other failure is one line (exit 1):
    a file we cannot read is never silently skipped, or the settings would depend on who asks.
    private: a file others may not read by design (the daemon's URL file): PermissionError
    goes to the caller, which says why, never "fix its permissions"."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        if isinstance(err, PermissionError) and private:
            raise
        raise FileUnreadable(f"cannot read {what} {path} ({err.strerror or err}): fix its "
                             f"permissions, {fix}") from None


def _read_toml(path: str, required: bool) -> dict | None:
    text = _read(path, "config file", "or name another with --config FILE (CANHAZGPU_CONFIG)")
    if text is None:
        if required:
            raise InvalidRequest(f"cannot read config file {path}: it does not exist")
        return None
    if not text.strip():
        return {}  # an empty file: no parser to import
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InvalidRequest(f"invalid config file {path}: {err}") from None


def config_files(flags: dict | None = None, env: dict | None = None) -> tuple[list[str], str]:
    """The config files that are read, lowest first, and what chose them."""
    env = os.environ if env is None else env
    explicit = (flags or {}).get("config")
    if explicit:
        return [str(explicit)], "--config"
    if env.get("CANHAZGPU_CONFIG"):
        return [env["CANHAZGPU_CONFIG"]], "$CANHAZGPU_CONFIG"
    return [SYSTEM_CONFIG, expanduser(USER_CONFIG)], DEFAULT


def load(flags: dict | None = None, env: dict | None = None) -> Config:
    """Merge every source into one validated Config. Later sources override earlier ones.

    flags["config"] is the config file (`--config FILE`), over $CANHAZGPU_CONFIG.
    """
    env = os.environ if env is None else env
    values: dict = {}
    origins: dict = {}
    paths, chosen_by = config_files(flags, env)
    for path in paths:
        for key, value in (_read_toml(path, required=chosen_by != DEFAULT) or {}).items():
            values[key] = _coerce(key, value, str(path))
            origins[key] = str(path)
    for key in KEYS:
        if key == "notify":
            continue  # tables: the config file only
        name = f"CANHAZGPU_{key.upper()}"
        if name in env and env[name] != "":
            values[key] = _coerce(key, env[name], f"${name}")
            origins[key] = f"${name}"
    for key, value in (flags or {}).items():
        if value is not None and key != "config":
            flag = f"--{key.replace('_', '-')}"
            values[key] = _coerce(key, value, flag)
            origins[key] = flag
    config = Config(**values, origins=origins)
    warn, release = (config.optional_seconds(k) for k in ("idle_warn_after",
                                                          "idle_release_after"))
    if warn is not None and release is not None and warn >= release:
        raise InvalidRequest(f"invalid idle_warn_after {config.idle_warn_after!r} (in "
                             f"{config.origin('idle_warn_after')}): it must be shorter than "
                             f"idle_release_after {config.idle_release_after!r}")
    return config
