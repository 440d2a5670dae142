"""`canhazgpu web`: the team's live page, HTTP API and Prometheus metrics (docs/web.md)."""

from __future__ import annotations

import asyncclick as click

from .main import cli


@cli.command(epilog="""\b
Examples:
  canhazgpu web                         # this host, on http://127.0.0.1:8080/
  canhazgpu web --listen 0.0.0.0:8080   # every interface: the team's page
  canhazgpu web --hosts gpu01,gpu02     # hosts that share this Redis
  canhazgpu web --demo                  # fake GPUs and simulated users
  curl -s localhost:8080/api/v1/hosts/$(hostname -s)/status | jq .summary
Exit code: 0 after SIGTERM/SIGINT; 1 when the address cannot be bound;
2 for bad options.
""")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="ADDR",
              help="Address and port to serve on; 0.0.0.0:PORT for every interface.")
@click.option("--hosts", "host_names", multiple=True, metavar="H[,H...]",
              help="Show these hosts (repeat or comma-separate) instead of this one "
                   "(--host).")
@click.option("--demo", is_flag=True,
              help="Serve a demo: a private Redis, fake GPUs and simulated users.")
@click.option("--verbose", "-v", is_flag=True, help="Log debug details too.")
@click.pass_obj
async def web(state, listen, host_names, demo, verbose):
    """Serve a live, read-only web page of the GPUs, an HTTP API and /metrics."""
    import logging
    import sys

    from ..errors import InvalidRequest
    from ..web.hosts import parse_hosts
    from ..web.server import parse_listen
    from .lifetime import until_signalled

    names = parse_hosts(host_names)
    parse_listen(listen)  # a bad address is a usage error before anything starts
    if demo and names:
        raise InvalidRequest("--demo shows its own hosts: leave out --hosts")
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("redis", "uvicorn", "uvicorn.error", "canhazgpu.serve"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    await until_signalled(_serve, state.config, listen, names, demo)
    return 0


async def _serve(config, listen, names, demo) -> None:
    from contextlib import AsyncExitStack

    import anyio

    from ..web.server import serve_web
    from . import output

    async with AsyncExitStack() as stack:
        if demo:
            from ..web.demo import demo as run_demo
            config, names = await stack.enter_async_context(run_demo(config))
        async with anyio.create_task_group() as tg:
            host, port = await tg.start(serve_web, config, listen, names)
            shown = f"[{host}]" if ":" in host else host
            output.warn(f"serving http://{shown}:{port}/ for "
                        f"{', '.join(names) or config.host_name} (Ctrl+C to stop)")
