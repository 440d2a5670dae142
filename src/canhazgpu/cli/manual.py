"""`canhazgpu help TOPIC`: the documentation, shipped inside the package (docs/*.md), so an
installed canhazgpu can show what its --help texts point at."""

from __future__ import annotations

import re

import asyncclick as click

from ..errors import InvalidRequest
from . import output
from .main import cli

# commands documented together with another one
ALIASES = {"release": "reserve", "config": "configuration", "doctor": "configuration",
           "systemd": "serve"}


def _docs():
    from importlib import resources  # here: most commands never read the docs
    return resources.files("canhazgpu") / "docs"


def topics() -> dict[str, str]:
    """Topic name -> one-line description: every docs/*.md page, in the order of the table
    in docs/README.md (which gives the descriptions), then the others."""
    table = dict(re.findall(r"^\| \[(\w+)\.md\]\(\w+\.md\) \| (.+?) \|$",
                            (_docs() / "README.md").read_text(encoding="utf-8"), re.MULTILINE))
    pages = sorted(p.name[:-3] for p in _docs().iterdir()
                   if p.name.endswith(".md") and p.name != "README.md")
    ordered = [n for n in table if n in pages] + [n for n in pages if n not in table]
    return {name: table.get(name, "") for name in ordered}


@cli.command("help", epilog="""\b
Examples:
  canhazgpu help                  # the list of topics
  canhazgpu help status           # the status document: table, line format, JSON schema
  canhazgpu help install          # pip, pipx, uv, systemd
""")
@click.argument("topic", required=False)
async def help_command(topic):
    """Read the documentation of a command or topic, shipped with canhazgpu."""
    import anyio
    known = topics()
    if topic is None:
        width = max(map(len, known))
        output.emit("Topics (canhazgpu help TOPIC):\n" + "\n".join(
            f"  {name:<{width}}  {what}" for name, what in known.items()))
        return 0
    name = topic.removesuffix(".md")
    name = name if name in known else ALIASES.get(name, name)
    if name not in known:
        raise InvalidRequest(f"no help topic {topic!r}: use one of {', '.join(known)}")
    text = (_docs() / f"{name}.md").read_text(encoding="utf-8")
    if output.is_tty():
        await anyio.to_thread.run_sync(click.echo_via_pager, text)
    else:
        output.emit(text.rstrip("\n"))
    return 0
