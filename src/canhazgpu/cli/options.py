"""Options shared by reserve, run and wait, and turning them into a core Request."""

from __future__ import annotations

import asyncclick as click

from ..errors import InvalidRequest
from ..timefmt import parse_duration


def gpu_selection(func):
    func = click.option("--note", default="", metavar="TEXT",
                        help="Free text shown in status and the queue.")(func)
    func = click.option("--gpu-ids", metavar="IDS",
                        help="Specific GPUs, comma-separated, e.g. 1,3 (all or nothing).")(func)
    func = click.option("--gpus", "count", metavar="N",
                        help="How many GPUs (least recently used first). Default 1.")(func)
    return func


async def build_request(state, count, gpu_ids, kind, duration_s, note):
    """Validate the selection against the pool and return (Request, pool size)."""
    from ..request import Request, parse_count, parse_ids
    if count is not None and gpu_ids is not None:
        raise InvalidRequest("use either --gpus N or --gpu-ids IDS, not both")
    size = await state.core.pool_size()
    if gpu_ids is not None:
        req = Request(ids=parse_ids(gpu_ids, size), kind=kind, duration_s=duration_s, note=note)
    else:
        req = Request(count=parse_count(1 if count is None else count, size), kind=kind,
                      duration_s=duration_s, note=note)
    return req, size


def duration(text: str | None, what: str, default: str) -> float:
    return parse_duration(text if text is not None else default, what=what)
