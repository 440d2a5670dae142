"""`canhazgpu events`: the host's raw event stream, for scripts (docs/events.md)."""

from __future__ import annotations

import asyncclick as click

from ..errors import InvalidRequest
from .main import cli


def parse_types(values: tuple[str, ...]) -> frozenset[str]:
    from ..events import TYPES
    types = frozenset(t.strip() for v in values for t in v.split(",") if t.strip())
    for t in sorted(types):
        if t not in TYPES:
            raise InvalidRequest(f"invalid event type {t!r}: use one of {', '.join(TYPES)}")
    return types


@cli.command(epilog="""\b
Examples:
  canhazgpu events                                  # every change on this host, as it happens
  canhazgpu events --json | jq -c 'select(.user == "alice")'
  canhazgpu events --type unreserved_detected,gpu_error
  canhazgpu events --type expired --count 1         # wait for the next expiry, then exit
  canhazgpu events --since 41 --json                # what came after event 41, then live
Event types and fields: canhazgpu help events
""")
@click.option("--json", "-j", "as_json", is_flag=True,
              help="One JSON document per event (JSON Lines), as published.")
@click.option("--type", "types", multiple=True, metavar="T",
              help="Only these types (repeat, or comma-separate).")
@click.option("--count", metavar="N", type=str, help="Exit after N events.")
@click.option("--since", metavar="SEQ", type=str,
              help="First replay the kept events after sequence number SEQ (0: all kept), "
                   "then go on live.")
@click.pass_obj
async def events(state, as_json, types, count, since):
    """Print the host's events as they happen: reservations, queue, GPU usage."""
    wanted = parse_types(types)
    limit = None
    if count is not None:
        if not count.isdigit() or int(count) < 1:
            raise InvalidRequest(f"invalid --count {count!r}: use a whole number from 1")
        limit = int(count)
    if since is not None and not since.isdigit():
        raise InvalidRequest(f"invalid --since {since!r}: use an event sequence number (0 or more)")
    from .lifetime import until_signalled
    from .stream import EventPrinter
    await until_signalled(EventPrinter(state, wanted, as_json, limit,
                                       None if since is None else int(since)).run)
    return 0
