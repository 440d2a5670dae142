"""Many hosts on one Redis (or a Redis Cluster): the registry of hosts, and views across them.

A host registers when its pool is set up (`admin`) and while its daemon serves (a heartbeat
every HEARTBEAT_S; "down" on a clean stop). A daemon killed, or cut off from Redis, stops
heartbeating and is shown down after STALE_MS; a host leaves the registry only when an
admin retires it. A view of several hosts is each host's own Core view (no second copy of
the view logic), read concurrently on the connections of the caller's store.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import anyio

from .accounting import summarize
from .errors import BackendUnavailable, CanHazGpuError, InvalidRequest, NotOwner
from .identity import Caller, require_admin
from .model import PoolView, Usage, Value, fill, replace

if TYPE_CHECKING:
    from .core import Core

HEARTBEAT_S = 5.0  # a serving daemon refreshes its entry this often
STALE_MS = 15_000  # a daemon silent this long is shown down (killed, or cut off from Redis)
PARALLEL = 32  # hosts read at once


class HostUnknown(CanHazGpuError):
    """A host named that is not in the registry."""


class HostServing(CanHazGpuError):
    """A host cannot be retired while its daemon serves (it would register again)."""


class HostElsewhere(InvalidRequest):
    """A reservation for a host that another machine serves (docs/hosts.md)."""


class HostView(Value):
    """One host as the views across hosts show it: its registry entry ({} for a host named
    but not registered), its daemon ("up", "down", "none": never served, or "unknown": not
    registered) and its pool (view None when it cannot be read: see error)."""

    __slots__ = ("host", "entry", "daemon", "view", "error")

    def __init__(self, host: str, entry: dict, daemon: str, view: PoolView | None,
                 error: str | None = None) -> None:
        fill(self, locals())


def version() -> str:
    from importlib import metadata  # (~40 ms: only where a host registers)
    try:
        return metadata.version("canhazgpu")
    except metadata.PackageNotFoundError:
        return "unknown"


def daemon_state(entry: dict, now_ms: int) -> str:
    """up, down or none: an "up" not heard of for STALE_MS is down (it could not say so)."""
    if not entry:
        return "unknown"
    state = str(entry.get("daemon") or "none")
    if state == "up" and now_ms - int(entry.get("last_seen_ms") or 0) > STALE_MS:
        return "down"
    return state


# ---------------------------------------------------------------------- the registry
async def register(core: Core, op: str) -> None:
    """Write this host's entry: op "admin" (pool set up), "up" (daemon serving, a heartbeat)
    or "down" (daemon stopped). GPU models come from the daemon's snapshot when there is one."""
    pool = await core.store.read_pool()
    try:
        _, snap = await core.store.read_usage()
    except CanHazGpuError:
        snap = None  # a corrupt snapshot: the models are unknown, the rest still counts
    models = sorted({g.name for g in snap.gpus if g.name}) if snap else []
    await core.store.register(op, {
        "gpus": int(pool.get("count") or 0) if str(pool.get("count", "0")).isdigit() else 0,
        "provider": pool.get("provider", ""), "models": models, "version": version(),
        "machine": socket.gethostname()})


async def retire(core: Core, caller: Caller, host: str | None = None) -> str:
    """Take `host` (default: the core's) out of the registry (admin only; its daemon must
    be stopped). Its pool and history stay in Redis: `admin --gpus N` on it registers it
    again."""
    host = host or core.config.host_name
    core = host_core(core, host)
    require_admin(caller, core.config.admin_group, "retire a host")
    entries = await core.store.registry()
    if host not in entries:
        raise HostUnknown(f"host {host!r} is not registered: see 'canhazgpu hosts'")
    if daemon_state(entries[host], await core.store.time_ms()) == "up":
        raise HostServing(f"the daemon of host {host!r} is serving: stop it first "
                          "(a serving daemon registers its host again)")
    await core.store.register("retire", {})
    return host


def one_host(config) -> None:
    """A command that changes a pool works on one host: --host a,b is for the views."""
    if "," in config.host_name:
        raise InvalidRequest(f"invalid --host {config.host_name!r}: a list of hosts is "
                             "for status, queue and report; name one host here")


async def check_here(core: Core) -> None:
    """Refuse to reserve GPUs of a host registered from another machine: CUDA_VISIBLE_DEVICES,
    the job's PID and the caller's account only mean something on the machine that runs
    the job (docs/hosts.md). A host not registered, or registered from here, is ours."""
    one_host(core.config)
    entry = await core.store.registry_entry()
    machine = entry.get("machine") if entry else None
    if machine and machine != socket.gethostname():
        raise HostElsewhere(
            f"host {core.config.host_name!r} is served by machine {machine!r}: reservations "
            f"are made on the host that runs the job (ssh {machine} canhazgpu ...)")


# ---------------------------------------------------------------------- views
async def snapshot_usage(core: Core) -> Usage:
    """Another host's GPU usage: whatever its daemon stored last (however old), never a scan
    of this machine's GPUs; without a snapshot, no usage is known."""
    now_ms, snap = await core.store.read_usage()
    return snap if snap is not None else Usage(now_ms, (), "none")


def host_core(core: Core, host: str) -> Core:
    """The Core of `host` on `core`'s connections (core itself for its own host)."""
    if host == core.config.host_name:
        return core
    from .core import Core  # (imported here: a client of the daemon never needs it)
    return Core(replace(core.config, host=host), store=core.store.for_host(host))


async def _each(names: list[str], read) -> dict:
    """read(name) for every name, PARALLEL at a time; name -> result."""
    results: dict = {}
    limiter = anyio.CapacityLimiter(PARALLEL)

    async def one(name: str) -> None:
        async with limiter:
            results[name] = await read(name)

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)
    return results


async def host_names(core: Core, names: list[str] | None = None) -> list[str]:
    """The hosts a view spans: the given ones, else every registered host (sorted)."""
    return list(names) if names is not None else sorted(await core.store.registry())


async def views(core: Core, names: list[str] | None = None) -> tuple[int, list[HostView]]:
    """(Redis time, each host's view). The caller's own host is viewed as `status` views it;
    another host's usage is its daemon's last snapshot, whatever its age (this machine
    cannot see that host's GPUs), or unknown without one."""
    entries = await core.store.registry()
    names = sorted(entries) if names is None else list(names)
    reads = await core.store.read_views(names)  # one read per host, a pipeline per node
    # Redis's clock as the reads saw it (no round trip of its own), else asked
    nows = [read[0].now_ms for read in reads.values() if not isinstance(read, CanHazGpuError)]
    now = max(nows) if nows else await core.store.time_ms()
    found = []
    for name in names:  # each from what was read: no I/O left, one after the other
        entry = entries.get(name, {})
        hcore = host_core(core, name)
        try:
            view = await hcore.host_view(here=hcore is core, read=reads[name])
        except BackendUnavailable:
            raise  # Redis itself: one line for the whole command
        except CanHazGpuError as err:  # no pool there, corrupt state: this host only
            found.append(HostView(name, entry, daemon_state(entry, now), None, str(err)))
            continue
        found.append(HostView(name, entry, daemon_state(entry, now), view))
    return now, found


async def queues(core: Core, names: list[str] | None = None) -> list[tuple[str, int, tuple]]:
    """(host, Redis time, its waiters) for each host."""
    names = await host_names(core, names)

    reads = await core.store.read_views(names)  # one read per host, as views() reads them
    for name in names:
        if isinstance(reads[name], CanHazGpuError):
            raise reads[name]
    return [(n, reads[n][0].now_ms, reads[n][0].queue) for n in names]


async def report(core: Core, days: float, names: list[str] | None = None) -> dict:
    """GPU hours per user over all the hosts (the report document, plus "hosts")."""
    names = await host_names(core, names)
    found = await _each(names, lambda n: host_core(core, n).records(days))
    rows = [row for n in names for row in found[n][0]]
    now = max((found[n][2] for n in names), default=await core.store.time_ms())
    since = min((found[n][1] for n in names), default=now - int(days * 86400 * 1000))
    return {**summarize(rows, since, now, days), "hosts": names}


HOSTS_JSON_VERSION = 1


async def document(core: Core, names: list[str] | None = None) -> dict:
    """The hosts document: `canhazgpu hosts --json`, and the web's /api/v1/hosts."""
    now, found = await views(core, names)
    return {"version": HOSTS_JSON_VERSION, "time_ms": now,
            "hosts": [summary(hv, now) for hv in found]}


def summary(hv: HostView, now_ms: int) -> dict:
    """A host's line of `canhazgpu hosts` (docs/hosts.md)."""
    from .render import summary_counts
    entry = hv.entry
    seen = entry.get("last_seen_ms")
    return {
        "host": hv.host, "daemon": hv.daemon, "last_seen_ms": seen,
        "last_seen_s": round((now_ms - seen) / 1000, 1) if seen else None,
        "gpus": summary_counts(hv.view) if hv.view else None,
        "queue": len(hv.view.queue) if hv.view else None,
        "provider": (hv.view.provider if hv.view else None) or entry.get("provider"),
        "models": list(entry.get("models") or []), "version": entry.get("version"),
        "machine": entry.get("machine"), "error": hv.error or entry.get("error"),
    }
