"""Options shared by reserve, run and wait, and turning them into a core Request."""

from __future__ import annotations

import asyncclick as click

from ..errors import InvalidRequest
from ..timefmt import parse_duration

# run and wait: the first word that is not one of our options starts the command, and
# everything from there on is the command's (as with sudo, env and nohup), `--` or not
COMMAND_LINE = {"allow_interspersed_args": False}


def once(default=None):
    """The callback of an option that may be given once: `--gpus 2 --gpus 3` is a usage
    error, not 3 (the option is declared multiple=True to see every use)."""
    def check(ctx, param, values):
        if len(values) > 1:
            shown = " ".join(f"{param.opts[0]} {v}" for v in values)
            raise click.UsageError(f"{shown}: give {param.opts[0]} once", ctx)
        return values[0] if values else default
    return check


def gpu_selection(func):
    func = click.option("--note", "-n", metavar="TEXT", multiple=True, callback=once(""),
                        help="Free text shown in status and the queue.")(func)
    func = click.option("--gpu-ids", "-G", metavar="IDS", multiple=True, callback=once(),
                        help="Specific GPUs, comma-separated, e.g. 1,3 (all or nothing).")(func)
    func = click.option("--gpus", "-g", "count", metavar="N", multiple=True, callback=once(),
                        help="How many GPUs (least recently used first). Default 1.")(func)
    return func


def command_line(func):
    """The command to run: from the first word that is not an option of ours to the end."""
    from .completion import command_line as complete
    return click.argument("command", nargs=-1, type=click.UNPROCESSED,
                          shell_complete=complete)(func)


async def build_request(state, count, gpu_ids, kind, duration_s, note, claim_own=False):
    """Validate the selection against the pool and return the Request."""
    from ..request import Request, parse_count, parse_ids
    ids = parse_ids(gpu_ids) if gpu_ids is not None else None
    if ids is not None and count is not None and parse_count(count) != len(ids):
        raise InvalidRequest(f"--gpus {count} and --gpu-ids {gpu_ids} disagree: give one of "
                             f"them, or --gpus {len(ids)} with these ids")
    size = await state.core.pool_size()
    chosen = {"ids": parse_ids(gpu_ids, size)} if ids is not None else \
        {"count": parse_count(1 if count is None else count, size)}
    return Request(**chosen, kind=kind, duration_s=duration_s, note=note, claim_own=claim_own)


def duration(text: str | None, what: str, default: str) -> float:
    return parse_duration(text if text is not None else default, what=what)
