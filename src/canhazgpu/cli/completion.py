"""`canhazgpu completion`: the shell completion script, and what completes a command line."""

from __future__ import annotations

import os

import asyncclick as click
from asyncclick.shell_completion import CompletionItem, ShellComplete, get_completion_class

from . import output
from .main import COMPLETE_VAR, cli

SHELLS = ("bash", "zsh", "fish")


@cli.command(epilog="""\b
Examples:
  eval "$(canhazgpu completion bash)"       # this bash session (or add it to ~/.bashrc)
  canhazgpu completion bash > ~/.local/share/bash-completion/completions/canhazgpu
  canhazgpu completion zsh > "${fpath[1]}/_canhazgpu"
  canhazgpu completion fish > ~/.config/fish/completions/canhazgpu.fish
Details: canhazgpu help completion
""")
@click.argument("shell", type=click.Choice(SHELLS))
async def completion(shell):
    """Print the tab completion script for bash, zsh or fish."""
    complete = get_completion_class(shell)(cli, {}, "canhazgpu", COMPLETE_VAR)
    # the script itself, without bash's version check (it starts a bash to warn about
    # bash < 4.4, from 2016: a third of this command's time)
    script = ShellComplete.source(complete)
    output.emit(script.rstrip("\n"))


def files(incomplete: str) -> list[CompletionItem]:
    """Let the shell complete file names."""
    return [CompletionItem(incomplete, type="file")]


def command_line(ctx, param, incomplete: str) -> list[CompletionItem]:
    """The command of run/wait: a program from $PATH first, then its arguments (files)."""
    if ctx.params.get(param.name) or os.sep in incomplete:
        return files(incomplete)
    return [CompletionItem(name) for name in programs(incomplete)]


def programs(prefix: str) -> list[str]:
    """Executables on $PATH whose names start with prefix."""
    found = set()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        try:
            with os.scandir(folder or ".") as entries:
                for entry in entries:
                    if entry.name.startswith(prefix) and entry.name not in found and \
                            not entry.is_dir() and os.access(entry.path, os.X_OK):
                        found.add(entry.name)
        except OSError:
            continue
    return sorted(found)
