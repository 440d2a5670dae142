"""`canhazgpu notify add|list|remove|test`: your own notification rules (docs/notify.md)."""

from __future__ import annotations

import asyncclick as click

from . import output
from .main import Group, cli


@cli.group(cls=Group, epilog="""\b
Examples:
  canhazgpu notify add terminal                       # a line on your terminals
  canhazgpu notify add webhook https://hooks.example/gpu --events granted,idle_warning
  canhazgpu notify add apprise 'ntfy://ntfy.sh/my-gpu-topic'
  canhazgpu notify list
  canhazgpu notify test                               # one test message per rule
  canhazgpu notify remove 3fa2c1
More: canhazgpu help notify
""")
async def notify():
    """Be told when your request is granted, your reservation is idle or expires, someone
    uses your GPU, or you use one without a reservation."""


@notify.command()
@click.argument("channel", type=click.Choice(["terminal", "webhook", "apprise"]))
@click.argument("url", required=False, default="")
@click.option("--events", metavar="TYPES",
              help="Event types, comma-separated, or '*' for all of yours (default: granted, "
                   "expiring, idle_warning, released, foreign_use, unreserved_detected, "
                   "job_ended).")
@click.option("--all-users", "everyone", is_flag=True,
              help="Root or the admin group: events about every user, not only you.")
@click.option("--json", "as_json", is_flag=True, help="Print your rules as JSON.")
@click.pass_obj
async def add(state, channel, url, events, everyone, as_json):
    """Add a rule: CHANNEL terminal, webhook URL or apprise URL."""
    rules = await state.core.notify(state.caller(), "add", channel=channel, url=url,
                                    events=events.split(",") if events else None,
                                    everyone=everyone)
    _show(rules, as_json, f"Added rule {rules[-1]['id']}." if rules else "")


@notify.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print your rules as JSON.")
@click.pass_obj
async def list_(state, as_json):
    """Show your notification rules."""
    _show(await state.core.notify(state.caller(), "list"), as_json)


@notify.command()
@click.argument("rule_id", metavar="ID", required=False)
@click.option("--all", "everything", is_flag=True, help="Remove all your rules.")
@click.pass_obj
async def remove(state, rule_id, everything):
    """Remove one of your rules (its ID from 'notify list'), or --all."""
    if bool(rule_id) == everything:
        raise click.UsageError("name one rule ID, or pass --all")
    left = await state.core.notify(state.caller(), "remove", rule_id="*" if everything
                                   else rule_id)
    output.emit(f"Removed. {len(left)} rule{'' if len(left) == 1 else 's'} left.")


@notify.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_obj
async def test(state, as_json):
    """Send a test message through each of your rules; one line per result."""
    from ..errors import CanHazGpuError
    results = await state.core.notify(state.caller(), "test")
    if as_json:
        output.emit_json(results)
    elif not results:
        output.emit("You have no notification rules: add one with 'canhazgpu notify add "
                    "terminal' (see 'canhazgpu notify --help')")
    for r in results if not as_json else ():
        output.emit(f"{r['id']} {r['target']}: " + ("sent" if r["ok"] else
                                                     f"FAILED: {r['error']}"))
    failed = sum(not r["ok"] for r in results)
    if failed:
        raise CanHazGpuError(f"{failed} of {len(results)} notification channels failed")


def _show(rules: list[dict], as_json: bool, head: str = "") -> None:
    if as_json:
        output.emit_json(rules)
        return
    lines = [head] if head else []
    if not rules:
        lines.append("No notification rules: add one with 'canhazgpu notify add terminal'")
    for r in rules:
        target = r["channel"] + (f" {r['url']}" if r.get("url") else "")
        who = "  (all users)" if r.get("everyone") else ""
        lines.append(f"{r['id']}  {target}  events: {','.join(r['events'])}{who}")
    output.emit("\n".join(lines))
