"""`canhazgpu serve`: run the daemon of this host (canhazgpu help serve)."""

from __future__ import annotations

import asyncclick as click

from .main import cli


@cli.command(epilog="""\b
Examples:
  canhazgpu serve                          # against the configured Redis
  canhazgpu serve --embedded-redis         # with a private Redis in the state directory
  canhazgpu serve --embedded-redis --fake 8 &    # try it out: 8 idle fake GPUs
  canhazgpu serve --print-systemd-unit | sudo tee /etc/systemd/system/canhazgpu.service
Exit code: 0 after SIGTERM/SIGINT; 1 when Redis is unreachable at start or another daemon
already serves this host. More: canhazgpu help serve
""")
@click.option("--embedded-redis", is_flag=True,
              help="Start a private redis-server (AOF on) in the state directory and publish "
                   "its URL in STATE_DIR/redis.url, where clients on this host find it.")
@click.option("--fake", "fake", metavar="N",
              help="Try it out: create a pool of N idle fake GPUs when there is none.")
@click.option("--scan-interval", metavar="D",
              help="How often to scan the GPUs (default 1s; env CANHAZGPU_SCAN_INTERVAL).")
@click.option("--print-systemd-unit", "print_unit", is_flag=True,
              help="Print a systemd unit that runs this canhazgpu, and exit.")
@click.option("--web", "web", metavar="ADDR",
              help="Also serve the read-only web page, HTTP API and /metrics on ADDR "
                   "(e.g. 127.0.0.1:8080; canhazgpu help web).")
@click.option("--verbose", "-v", is_flag=True, help="Log debug details too.")
@click.pass_obj
async def serve(state, embedded_redis, fake, scan_interval, print_unit, web, verbose):
    """Run the daemon: GPU scans, instant expiry, crash reclaim, events (one per host)."""
    import logging
    import sys
    from functools import partial

    from ..config import load
    from ..daemon import LogLines
    from ..daemon import serve as run_daemon
    from ..request import parse_count
    from .lifetime import until_signalled
    if print_unit:
        from ..systemd import unit
        text, problem = unit()
        if problem:
            from . import output
            output.warn(problem)
        click.echo(text, nl=False)
        return 0
    count = parse_count(fake) if fake is not None else None
    config = load({**state.flags, "scan_interval": scan_interval})
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogLines("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    logging.getLogger("redis").setLevel(logging.WARNING)
    # one journal line per state change: no caller frame, thread or process looked up for
    # each (the logging HOWTO's "Optimization")
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    caller = state.local_caller()  # the daemon itself: never asks another daemon
    if embedded_redis:
        _check_one_redis(config)
        await _warn_if_clients_move(config)
        from dataclasses import replace  # its own private Redis: whoever runs it is its admin
        caller = replace(caller, is_admin=True)

    async def prepare(core) -> None:
        if count is not None:
            await _fake_pool(core, count, caller)

    if web is not None:
        from ..web.server import parse_listen
        parse_listen(web)  # a bad address is a usage error before anything starts
    await until_signalled(_serving, partial(run_daemon, prepare=prepare), config,
                          embedded_redis, state.flags, web)
    return 0


async def _serving(run_daemon, config, embedded: bool, flags: dict, web: str | None) -> None:
    """The daemon; once it serves, the web page if asked for, and a word on persistence (a
    daemon refused at start says only why)."""
    import logging

    import anyio
    async with anyio.create_task_group() as tg:
        await tg.start(run_daemon, config, embedded)
        if web is not None:
            from ..config import load
            from ..web.server import serve_web
            # loaded again: an embedded Redis has published its URL by now
            host, port = await tg.start(serve_web, load(flags), web)
            logging.getLogger("canhazgpu.serve").info("web page on http://%s:%s/", host, port)
        await _warn_unless_persistent(flags)


def _check_one_redis(config) -> None:
    """--embedded-redis with another configured redis_url would make the daemon and the
    clients use two different stores: refused."""
    from ..embedded import RedisServer
    from ..errors import InvalidRequest
    from ..urls import store_identity
    own = RedisServer(config.state_path).url
    if config.redis_url and store_identity(config.redis_url) != store_identity(own):
        raise InvalidRequest(
            f"--embedded-redis serves {own}, but redis_url is {config.redis.url} (set by "
            f"{config.redis.origin}), which clients would use instead: unset it, or drop "
            "--embedded-redis")


async def _warn_if_clients_move(config) -> None:
    """The first `serve --embedded-redis` of a host moves its clients from the default Redis
    to the daemon's (configuration.md, "Which Redis"): say so when a pool was there."""
    import logging

    from ..core import Core
    from ..errors import CanHazGpuError
    before = config.redis
    if before.published is not None or config.redis_url:
        return  # set up already, or the URL is configured (as this daemon's own)
    core = Core(config)
    try:
        pool = await core.pool()
    except CanHazGpuError:
        return  # nothing there, or no Redis at all
    finally:
        await core.aclose()
    logging.getLogger("canhazgpu.serve").warning(
        "host %s has a pool of %s GPUs in Redis at %s (%s), which clients used until now; "
        "from now on they use this daemon's Redis. To keep that one instead, stop this "
        "daemon, delete %s/redis.url and set redis_url", config.host_name, pool["count"],
        before.url, before.origin, config.state_path)


async def _warn_unless_persistent(flags: dict) -> None:
    """Say once, at start, when a restart of this Redis would lose reservations."""
    import logging

    from ..config import load
    from ..core import Core
    from ..errors import CanHazGpuError
    log = logging.getLogger("canhazgpu.serve")
    core = Core(load(flags))  # the daemon's Redis: with --embedded-redis, the published one
    try:
        found = (await core.store.server_info())["persistence"]
    except CanHazGpuError:
        return  # gone again already: the daemon's journal says so
    finally:
        await core.aclose()
    if found is None:
        log.info("cannot check Redis persistence (CONFIG GET refused): make sure it has "
                 "'appendonly yes'")
    elif found["appendonly"] != "yes":
        log.warning("Redis at %s has appendonly %s (save %r): if it restarts, reservations "
                    "made since its last snapshot are lost; set 'appendonly yes' in its "
                    "configuration (canhazgpu help serve)", core.store.url,
                    found["appendonly"] or "off", found["save"])
    elif found["appendfsync"] != "always":
        log.info("Redis AOF fsync is %s: a crash of the machine can lose the last second of "
                 "changes", found["appendfsync"])


async def _fake_pool(core, count: int, caller) -> None:
    """`--fake N`: a pool of N idle fake GPUs, unless the host has a pool already."""
    import logging

    from ..errors import CanHazGpuError, PoolNotInitialized
    log = logging.getLogger("canhazgpu.serve")
    try:
        pool = await core.pool()
    except PoolNotInitialized:
        result = await core.setup_pool(count, "fake", False, caller)
        log.info("created a pool of %d idle fake GPUs", result["new"])
        return
    if pool.get("provider") != "fake":
        raise CanHazGpuError(
            f"--fake {count}: host {core.config.host_name} has a pool of {pool['count']} GPUs "
            f"with provider {pool.get('provider')}: drop --fake, or change the pool with "
            f"'canhazgpu admin --gpus {count} --provider fake'")
    log.info("keeping this host's pool of %s fake GPUs", pool["count"])

