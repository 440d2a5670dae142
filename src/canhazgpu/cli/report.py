"""`canhazgpu report`: GPU hours per user."""

from __future__ import annotations

import asyncclick as click

from ..errors import InvalidRequest
from . import output
from .main import cli


@cli.command(epilog="""\b
Examples:
  canhazgpu report                 # the last 30 days
  canhazgpu report --days 7 --json
""")
@click.option("--days", default="30", metavar="N", help="How many days back (default 30).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
async def report(state, days, as_json):
    """GPU hours per user, with run/manual counts and shares, in-progress ones included."""
    try:
        n_days = float(days)
    except ValueError:
        n_days = -1
    if not 0 < n_days <= 3660:
        raise InvalidRequest(f"invalid --days {days!r}: use a number of days from 1 to 3660")
    data = await state.core.report(n_days)
    if as_json:
        output.emit_json(data)
        return
    span = f"{n_days:g} day" + ("" if n_days == 1 else "s")
    output.emit(f"GPU usage over the last {span}: {data['total_gpu_hours']:.2f} GPU hours")
    if not data["users"]:
        output.emit("No reservations in this period.")
        return
    width = max(4, *(len(u["user"]) for u in data["users"]))
    output.emit(f"{'USER':<{width}}  {'GPU HOURS':>9}  {'SHARE':>6}  {'RUN':>4}  {'MANUAL':>6}")
    for u in data["users"]:
        output.emit(f"{u['user']:<{width}}  {u['gpu_hours']:>9.2f}  {u['percent']:>5.1f}%  "
                    f"{u['run']:>4}  {u['manual']:>6}")
