"""Settings: flags > CANHAZGPU_* environment > TOML config file > defaults, validated once."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .errors import InvalidRequest
from .timefmt import parse_duration
from .urls import check_url

SYSTEM_CONFIG = Path("/etc/canhazgpu/config.toml")
USER_CONFIG = Path("~/.config/canhazgpu/config.toml")
DEFAULT_URL = "redis://localhost:6379/0"
# Where clients also look for the daemon: the secured systemd unit's, then one beside the
# system state directory (an unsecured daemon with the default state directory).
SYSTEM_API_SOCKETS = (Path("/run/canhazgpu/api.sock"), Path("/var/lib/canhazgpu/api.sock"))


@dataclass(frozen=True)
class Config:
    redis_url: str = ""  # empty: the embedded daemon's URL file if there is one, else DEFAULT_URL
    provider: str = ""  # empty: the pool's provider, else auto-detect
    fake_gpus: str = ""
    memory_threshold: int = 1024  # MB; above it a GPU is "in use"
    host: str = ""
    state_dir: str = ""
    default_duration: str = "30m"
    run_lease: str = "20s"  # a SIGKILLed `run` gives its GPUs back within this
    heartbeat_interval: str = "5s"
    kill_grace: str = "10s"  # `run --timeout`: SIGTERM, then SIGKILL after this
    strategy: str = "lru"  # or "mru": your own most recently used GPUs first
    admin_group: str = ""
    scan_interval: str = "1s"  # daemon
    snapshot_max_age: str = "3s"  # a daemon snapshot younger than this is used instead of a scan
    queue_lease: str = "10s"  # a waiter that stops heartbeating leaves the queue after this
    api_socket: str = ""  # empty: STATE_DIR/api.sock (clients also try SYSTEM_API_SOCKETS)
    client: str = "auto"  # auto: the daemon's API when it answers, else Redis; daemon; direct

    # ------------------------------------------------------------------ derived values
    @property
    def host_name(self) -> str:
        return self.host or socket.gethostname().split(".")[0]

    @property
    def state_path(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        system = Path("/var/lib/canhazgpu")
        if system.is_dir() and os.access(system, os.W_OK | os.X_OK):
            return system
        return Path("~/.local/state/canhazgpu").expanduser()

    @property
    def url(self) -> str:
        if self.redis_url:
            return self.redis_url
        for state in {self.state_path, Path("/var/lib/canhazgpu")}:
            found = state / "redis.url"
            if found.is_file():
                return found.read_text().strip()
        return DEFAULT_URL

    @property
    def api_path(self) -> Path:
        """Where the daemon listens for API clients."""
        return Path(self.api_socket).expanduser() if self.api_socket \
            else self.state_path / "api.sock"

    def api_paths(self) -> list[Path]:
        """Where a client looks for the daemon, like the embedded Redis URL is found."""
        if self.api_socket:
            return [self.api_path]
        return list(dict.fromkeys([self.api_path, *SYSTEM_API_SOCKETS]))

    def seconds(self, name: str) -> float:
        return parse_duration(getattr(self, name), what=name.replace("_", "-"))


_INT_KEYS = {"memory_threshold"}
_DURATION_KEYS = {"default_duration", "run_lease", "heartbeat_interval", "kill_grace",
                  "scan_interval", "snapshot_max_age", "queue_lease"}
_CHOICES = {"strategy": ("lru", "mru"), "provider": ("", "nvidia", "amd", "fake"),
            "client": ("auto", "daemon", "direct")}
KEYS = tuple(f.name for f in fields(Config))


def _coerce(key: str, value, origin: str):
    if key not in KEYS:
        raise InvalidRequest(
            f"unknown config key {key!r} in {origin}: known keys are {', '.join(KEYS)}"
        )
    if key in _INT_KEYS:
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = -1
        if number < 0 or isinstance(value, bool):
            raise InvalidRequest(f"invalid {key} {value!r} in {origin}: use a whole number of MB >= 0")
        return number
    value = str(value)
    if key in _DURATION_KEYS:
        parse_duration(value, what=f"{key} in {origin}")
    if key in _CHOICES and value not in _CHOICES[key]:
        allowed = ", ".join(c for c in _CHOICES[key] if c)
        raise InvalidRequest(f"invalid {key} {value!r} in {origin}: use one of {allowed}")
    if key == "redis_url" and value:
        check_url(value)
    return value


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise InvalidRequest(f"invalid config file {path}: {err}") from None
    except OSError as err:
        raise InvalidRequest(f"cannot read config file {path}: {err.strerror}") from None


def load(flags: dict | None = None, env: dict | None = None) -> Config:
    """Merge every source into one validated Config. Later sources override earlier ones."""
    env = os.environ if env is None else env
    values: dict = {}
    explicit = env.get("CANHAZGPU_CONFIG")
    paths = [Path(explicit)] if explicit else [SYSTEM_CONFIG, USER_CONFIG.expanduser()]
    for path in paths:
        if explicit or path.is_file():
            for key, value in _read_toml(path).items():
                values[key] = _coerce(key, value, str(path))
    for key in KEYS:
        name = f"CANHAZGPU_{key.upper()}"
        if name in env and env[name] != "":
            values[key] = _coerce(key, env[name], f"${name}")
    for key, value in (flags or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
    return replace(Config(), **values)
