"""The hosts the web server shows, and a core for each.

`Hosts` is the seam where the host registry (issue 11) plugs in: today it is the local
host, or the hosts named with `--hosts`. Everything else in the web package asks it for
`names()` and `core(host)` and never cares where the list came from.
"""

from __future__ import annotations

from dataclasses import replace

from ..config import Config
from ..core import Core
from ..errors import InvalidRequest
from ..hosts import snapshot_usage
from ..model import Usage


class SnapshotCore(Core):
    """The core of a host that is not this machine: its GPU usage is whatever its daemon
    stored last (however old), never a scan of our own GPUs. No snapshot: no usage known."""

    async def usage(self) -> Usage:
        return await snapshot_usage(self)


class Hosts:
    """A fixed list of hosts: `web` shows this host, `web --hosts A,B` shows A and B."""

    def __init__(self, config: Config, names: tuple[str, ...] = ()) -> None:
        self.config = config
        self._names = list(dict.fromkeys(names)) or [config.host_name]
        self._cores: dict[str, Core] = {}

    async def names(self) -> list[str]:
        return list(self._names)

    def local(self, host: str) -> bool:
        """Whether `host` is this machine (its GPUs may be scanned here)."""
        return host == self.config.host_name

    def core(self, host: str) -> Core:
        """The core of a known host (cached); InvalidRequest for any other name."""
        if host not in self._names:
            raise UnknownHost(host, self._names)
        if host not in self._cores:
            config = replace(self.config, host=host)
            self._cores[host] = Core(config) if self.local(host) else SnapshotCore(config)
        return self._cores[host]

    async def aclose(self) -> None:
        for core in self._cores.values():
            await core.aclose()
        self._cores.clear()


class UnknownHost(InvalidRequest):
    """A host name this server does not show."""

    def __init__(self, host: str, known: list[str]) -> None:
        super().__init__(f"unknown host {host!r}: this server shows {', '.join(known)}")


def parse_hosts(values: tuple[str, ...]) -> tuple[str, ...]:
    """`--hosts a,b --hosts c` -> ('a', 'b', 'c'), each a plausible host name."""
    names = tuple(n.strip() for v in values for n in v.split(",") if n.strip())
    for name in names:
        if any(c in name for c in "{}:/ \t") or len(name) > 253:
            raise InvalidRequest(f"invalid host name {name!r}: use a host name as in "
                                 "CANHAZGPU_HOST, e.g. gpu01")
    return names
