"""`canhazgpu config` (alias `doctor`): the effective settings, where each came from, and
whether Redis, the pool, the daemon and the GPU provider answer."""

from __future__ import annotations

import json
import os
from copy import copy

import anyio
import asyncclick as click

from ..errors import CanHazGpuError
from . import output
from .main import cli

CHECKS = ("redis", "pool", "daemon", "provider")


@cli.command("config", epilog="""\b
Examples:
  canhazgpu config                 # settings with their sources, then the checks
  canhazgpu doctor                 # the same
  canhazgpu doctor --wait 10s      # until every check passes (after starting serve)
  canhazgpu config --json | jq -r '.settings.redis_url.value'
Exit code: 0 when every check passes, 1 when one fails. More: canhazgpu help configuration
""")
@click.option("--wait", "wait_for", metavar="D",
              help="Retry the checks for up to D (e.g. 10s) until they all pass.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")
@click.pass_obj
async def config_command(state, wait_for, as_json):
    """Show the effective settings and where each came from; check Redis, pool, daemon, GPUs."""
    from ..config import load
    from ..timefmt import parse_duration
    deadline = anyio.current_time() + (parse_duration(wait_for, what="--wait")
                                       if wait_for else 0)
    while True:
        config = load(state.flags)  # each time: the daemon may publish its URL meanwhile
        checks = await run_checks(config)
        passed = all(c["status"] == "ok" for c in checks.values())
        if passed or anyio.current_time() >= deadline:
            break
        await anyio.sleep(0.1)  # Redis, the daemon or the pool are still coming up
    report = describe(state.flags, config, checks)
    if as_json:
        output.emit_json(report)
    else:
        output.emit(render(report))
    return 0 if not any(c["status"] == "fail" for c in checks.values()) else 1


doctor_command = copy(config_command)  # the same command, described by what it checks
doctor_command.name = "doctor"
doctor_command.help = ("Check that Redis, the pool, the daemon and the GPU provider answer; "
                       "the effective settings and their sources first.")
cli.add_command(doctor_command)


def _check(status: str, detail: str) -> dict:
    return {"status": status, "detail": detail}


async def run_checks(config) -> dict:
    """Each check: ok, warn (works, but see the detail), fail, or skip (needs another)."""
    from ..core import Core
    checks = dict.fromkeys(CHECKS, _check("skip", "needs Redis"))
    if config.client != "direct":
        from ..api.client import find_daemon
        path, _ = await anyio.to_thread.run_sync(find_daemon, config)
        if path is not None:  # what this user's commands use: the daemon, not Redis
            await _through_daemon(config, path, checks)
            return checks
    try:
        core = Core(config)
    except CanHazGpuError as err:
        checks["redis"] = _check("fail", str(err))
        return checks
    try:
        await _redis(core, checks)
        if checks["redis"]["status"] != "fail":
            await _pool_and_daemon(core, checks)
        await _provider(core, config, checks)
    finally:
        await core.aclose()
    return checks


async def _redis(core, checks: dict) -> None:
    try:
        info = await core.store.server_info()
    except CanHazGpuError as err:
        checks["redis"] = _check("fail", str(err))
        return
    found = info["persistence"]
    detail = f"Redis {info['version']} at {core.store.url}"
    if found is None:
        checks["redis"] = _check("warn", f"{detail}; CONFIG refused: cannot check that it "
                                         "persists (it needs appendonly yes)")
    elif found["appendonly"] != "yes":
        checks["redis"] = _check("warn", f"{detail}; appendonly {found['appendonly']}: a "
                                         "restart loses reservations (canhazgpu help serve)")
    else:
        checks["redis"] = _check("ok", f"{detail}, appendonly yes, appendfsync "
                                       f"{found['appendfsync']}")


async def _through_daemon(config, path: str, checks: dict) -> None:
    from ..api.client import RemoteCore
    remote = RemoteCore(config, path)
    try:
        hello = await remote.hello()
        checks["daemon"] = _check("ok", f"PID {hello.get('pid')} on {hello.get('machine')}, "
                                        f"answers at {path} for host {hello['host']} as "
                                        f"{hello['user']} (uid {hello['uid']})")
        checks["redis"] = _check("fail", str(hello["trouble"])) if hello.get("trouble") else \
            _check("ok", f"behind the daemon ({hello.get('redis', '?')}): this user's "
                         "commands need no Redis of their own")
    except CanHazGpuError as err:
        checks["daemon"] = _check("fail", str(err))
        return
    try:
        checks["pool"] = _check("ok", f"{await remote.pool_size()} GPUs")
    except CanHazGpuError as err:
        checks["pool"] = _check("fail", str(err))
    try:
        view = await remote.view()
        unreadable = [g.gpu for g in view.gpus if g.usage is not None and g.usage.error]
        detail = f"{view.provider}: {len(view.gpus)} GPUs, scanned by the daemon"
        checks["provider"] = _check("warn" if unreadable else "ok", detail + (
            f", unreadable: GPU {','.join(map(str, unreadable))}" if unreadable else ""))
    except CanHazGpuError as err:
        checks["provider"] = _check("fail", str(err))


async def _pool_and_daemon(core, checks: dict) -> None:
    from ..timefmt import coarse
    try:
        pool = await core.pool()
        checks["pool"] = _check("ok", f"{pool['count']} GPUs, provider {pool.get('provider')}")
    except CanHazGpuError as err:
        checks["pool"] = _check("fail", str(err))
    try:
        holder = await core.store.daemon_holder()
        now_ms = (await core.store.read_state(queue=False)).now_ms if holder else 0
    except CanHazGpuError as err:
        checks["daemon"] = _check("fail", str(err))
        return
    if holder is None:
        checks["daemon"] = _check("warn", "none serves this host: commands work, but "
                                          "'canhazgpu serve' adds instant expiry, crash "
                                          "reclaim and events")
        return
    try:
        doc = json.loads(holder)
        detail = (f"PID {doc['pid']} on {doc['machine']}, up "
                  f"{coarse((now_ms - int(doc['since_ms'])) / 1000)}")
    except (ValueError, KeyError, TypeError):
        detail = f"lock held ({holder[:60]!r})"
    checks["daemon"] = _check("ok", detail)


async def _provider(core, config, checks: dict) -> None:
    if checks["pool"]["status"] != "ok" and not config.provider:
        checks["provider"] = _check("skip", "needs the pool (its provider)")
        return
    try:
        provider = await core.provider()
        gpus = await provider.scan()
    except CanHazGpuError as err:
        checks["provider"] = _check("fail", str(err))
        return
    unreadable = [g.index for g in gpus if g.error]
    status = "warn" if unreadable else "ok"
    extra = f", unreadable: GPU {','.join(map(str, unreadable))}" if unreadable else ""
    checks["provider"] = _check(status, f"{provider.name}: {len(gpus)} GPUs read{extra}")


def describe(flags: dict, config, checks: dict) -> dict:
    """The JSON document: version, command, config files, settings with origins, checks."""
    from importlib import metadata

    from ..config import KEYS, config_files
    from ..systemd import command
    try:
        version = metadata.version("canhazgpu")
    except metadata.PackageNotFoundError:
        version = "unknown"
    paths, chosen_by = config_files(flags)
    settings = {key: {"value": getattr(config, key), "from": config.origin(key)}
                for key in KEYS}
    settings["notify"]["value"] = [r.shown() for r in config.notify]  # URLs redacted
    try:
        redis = config.redis
        settings["redis_url"] = {"value": redis.url, "from": redis.origin}
    except CanHazGpuError as err:  # an unreadable or corrupt published URL file
        settings["redis_url"] = {"value": "", "from": str(err)}
    if not config.host:
        settings["host"] = {"value": config.host_name, "from": "default: the short host name"}
    if not config.state_dir:
        settings["state_dir"] = {"value": str(config.state_path), "from": "default"}
    return {"version": version, "command": " ".join(command()),
            "config_files": [{"path": p, "chosen_by": chosen_by,
                              "exists": os.path.isfile(p)} for p in paths],
            "settings": settings, "checks": checks}


def render(report: dict) -> str:
    """Settings as TOML lines (paste them into a config file), each with its origin."""
    files = ", ".join(f"{f['path']}{'' if f['exists'] else ' (none)'}"
                      for f in report["config_files"])
    lines = [f"# canhazgpu {report['version']}: {report['command']}",
             f"# config files: {files}"]
    pairs = [(f"{key} = {json.dumps(s['value'])}", s["from"])
             for key, s in report["settings"].items()]
    width = min(44, max(len(p) for p, _ in pairs))
    lines += [f"{p:<{width}}  # {origin}" for p, origin in pairs]
    lines.append("# checks")
    lines += [f"{name:<9} {c['status']:<5} {c['detail']}" for name, c in report["checks"].items()]
    return "\n".join(lines)
