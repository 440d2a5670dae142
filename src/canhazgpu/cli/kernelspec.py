"""`canhazgpu kernelspec install|list`: Jupyter kernels that hold their GPUs for exactly
their life (docs/jupyter.md). Needs the `jupyter` extra."""

from __future__ import annotations

import asyncclick as click

from ..errors import CanHazGpuError
from . import output
from .main import Command, cli


def _jupyter():
    try:
        from .. import jupyter
    except ImportError as err:
        missing = (err.name or "jupyter_client").split(".")[0]
        raise CanHazGpuError(f"kernelspec needs Jupyter ({missing} is missing): "
                             "pip install 'canhazgpu[jupyter]'") from None
    return jupyter


class Subcommands(click.Group):
    command_class = Command  # each with the global options


@cli.group(cls=Subcommands, epilog="""\b
Examples:
  canhazgpu kernelspec install --gpus 2            # "Python 3 (ipykernel) (2 GPUs, canhazgpu)"
  canhazgpu kernelspec install --gpus 1 --wait 10m --name py-1gpu
  canhazgpu kernelspec list
""")
def kernelspec():
    """Jupyter kernels on GPUs reserved for exactly the kernel's life."""


@kernelspec.command(epilog="""\b
The kernel reserves its GPUs when it starts (queueing up to --wait), keeps them across
restarts, and gives them back when it is shut down, culled or dies.
""")
@click.option("--gpus", "-g", "count", default=1, show_default=True, metavar="N",
              help="GPUs the kernel gets.")
@click.option("--from", "source", default="python3", show_default=True, metavar="NAME",
              help="The installed kernelspec to clone.")
@click.option("--name", metavar="NAME", help="Name of the new kernelspec "
                                            "(default: FROM-Ngpu).")
@click.option("--wait", "-w", "wait_text", default="", metavar="D",
              help="Queue up to D (e.g. 10m) when GPUs are short (default: fail at once).")
@click.option("--note", default="", help="A note shown by canhazgpu status.")
@click.option("--user", "where", flag_value="user", default=True,
              help="Install for this user (the default).")
@click.option("--sys-prefix", "where", flag_value="sys-prefix",
              help="Install into this Python environment (sys.prefix).")
async def install(count, source, name, wait_text, note, where):
    """Write a kernelspec cloned from an installed one, with canhazgpu's provisioner."""
    import sys
    jupyter = _jupyter()
    name, path = jupyter.install_spec(count, source, name, user=where == "user",
                                      prefix=sys.prefix if where == "sys-prefix" else None,
                                      wait=wait_text, note=note)
    output.emit(f"Installed kernelspec {name} in {path}")


@kernelspec.command("list")
@click.option("--all", "every", is_flag=True, help="Every kernelspec, not only canhazgpu's.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
async def list_(every, as_json):
    """Show the kernelspecs that reserve GPUs with canhazgpu."""
    rows = _jupyter().list_specs(every)
    if as_json:
        output.emit_json(rows)
        return
    if not rows:
        output.emit("No canhazgpu kernelspecs: canhazgpu kernelspec install --gpus N")
        return
    from ..render.tables import Column, table
    columns = (Column("NAME", shrink=3, least=12), Column("GPUS", right=True),
               Column("WAIT"), Column("DISPLAY NAME", shrink=2, least=20),
               Column("PATH", drop=1))
    cells = [[r["name"], "-" if r["gpus"] is None else str(r["gpus"]), r["wait"] or "-",
              r["display_name"], r["path"]] for r in rows]
    output.emit(table(columns, cells, output.width()))
