"""`canhazgpu admin`: create or resize the pool (root or the admin group)."""

from __future__ import annotations

import asyncclick as click

from . import output
from .main import cli


@cli.command(epilog="""\b
Examples:
  canhazgpu admin --gpus 8              # a pool of 8 GPUs
  canhazgpu admin                       # as many GPUs as the provider finds
  canhazgpu admin --gpus 4 --force      # shrink, ending live reservations
  canhazgpu admin --retire --host gpu7  # gpu7 is gone: off 'canhazgpu hosts'
  canhazgpu admin --gpus 4 --provider fake   # 4 idle fake GPUs, to try things out
Changing the pool needs root or the admin group (admin_group). More: canhazgpu help admin
""")
@click.option("--gpus", "count", metavar="N", help="Pool size (default: GPUs the provider sees).")
@click.option("--provider", type=click.Choice(["nvidia", "amd", "fake"]),
              help="Where GPU usage is read from (default: auto-detect).")
@click.option("--force", is_flag=True, help="Resize even when reservations are live (ends them).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--retire", is_flag=True,
              help="Take this host (or --host NAME) off the host registry; admin only, its "
                   "daemon stopped (canhazgpu help hosts).")
@click.pass_obj
async def admin(state, count, provider, force, as_json, retire):
    """Initialise or resize the GPU pool of this host (root or the admin group)."""
    from .. import hosts
    from ..request import parse_count
    hosts.one_host(state.config)  # (no core yet: --retire may go through a daemon)
    if retire:
        if count is not None or provider or force:
            raise click.UsageError("--retire takes no --gpus, --provider or --force")
        host = await state.hosts.retire(state.local_caller(), state.config.host_name)
        if as_json:
            output.emit_json({"retired": host})
        else:
            output.emit(f"Retired host {host}: it is no longer listed by 'canhazgpu hosts'")
        return
    if count is not None:
        count = parse_count(count)
    result = await state.core.setup_pool(count, provider, force, state.caller())
    if not state.remote:  # a daemon registers its host itself
        await hosts.register(state.core, "admin")
    if as_json:
        output.emit_json(result)
    elif result["changed"]:
        output.emit(f"Initialized {result['new']} GPUs (0 to {result['new'] - 1}) "
                    f"with provider {result['provider']}")
    else:
        output.emit(f"Pool unchanged: {result['new']} GPUs with provider {result['provider']}")
