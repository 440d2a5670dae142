"""`canhazgpu report`: GPU hours per user."""

from __future__ import annotations

import math

import asyncclick as click

from ..errors import InvalidRequest
from . import output
from .main import cli

MAX_DAYS = 3660


@cli.command(epilog="""\b
Examples:
  canhazgpu report                 # the last 30 days
  canhazgpu report --days 7 --json
  canhazgpu report --days 0.5      # the last 12 hours
""")
@click.option("--days", default="30", metavar="N",
              help=f"How many days back, fractions too (default 30, at most {MAX_DAYS}).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
async def report(state, days, as_json):
    """GPU hours per user, with run/manual counts and shares, in-progress ones included."""
    from ..render import render_report
    data = await state.core.report(parse_days(days))
    if as_json:
        output.emit_json(data)
    else:
        output.emit(render_report(data))


def parse_days(text: str) -> float:
    """A number of days above 0, up to MAX_DAYS: 7, 0.5 (12 hours), 1e2."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not 0 < days <= MAX_DAYS:  # false for nan too
        raise InvalidRequest(f"invalid --days {text!r}: use a number of days above 0 and up "
                             f"to {MAX_DAYS}, e.g. 7 or 0.5")
    return days
