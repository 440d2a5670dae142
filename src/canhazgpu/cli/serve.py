"""`canhazgpu serve`: run the daemon of this host (docs/serve.md)."""

from __future__ import annotations

import asyncclick as click

from .main import cli


@cli.command(epilog="""\b
Examples:
  canhazgpu serve                          # against CANHAZGPU_REDIS_URL
  canhazgpu serve --embedded-redis         # with a private Redis in the state directory
  canhazgpu serve --scan-interval 2s -v
  systemctl enable --now canhazgpu         # as a service (scripts/canhazgpu.service)
Exit code: 0 after SIGTERM/SIGINT; 1 when Redis is unreachable at start or another daemon
already serves this host.
""")
@click.option("--embedded-redis", is_flag=True,
              help="Start a private redis-server (AOF on) in the state directory and write "
                   "its URL to STATE_DIR/redis.url, where clients on this host find it.")
@click.option("--scan-interval", metavar="D",
              help="How often to scan the GPUs (default 1s; env CANHAZGPU_SCAN_INTERVAL).")
@click.option("--verbose", "-v", is_flag=True, help="Log debug details too.")
@click.pass_obj
async def serve(state, embedded_redis, scan_interval, verbose):
    """Run the daemon: GPU scans, instant expiry, crash reclaim, events (one per host)."""
    import logging
    import sys

    from ..config import load
    from ..daemon import serve as run_daemon
    from .lifetime import until_signalled
    config = load({**state.flags, "scan_interval": scan_interval})
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("redis").setLevel(logging.WARNING)
    await until_signalled(run_daemon, config, embedded_redis)
    return 0
