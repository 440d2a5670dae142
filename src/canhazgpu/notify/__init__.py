"""Notifications (docs/notify.md): rules (admin `[[notify]]` tables and each user's own,
stored per uid), channels (terminal, webhook, apprise) and the daemon's notifier.

The operations behind `canhazgpu notify add|list|remove|test`, for one caller: the core
(direct mode) and the daemon's API (daemon mode) both call these.
"""

from __future__ import annotations

import json

import anyio

from ..errors import CorruptState, InvalidRequest, NotOwner
from .rules import Rule, new_user_rule, user_rules

__all__ = ["add", "listed", "remove", "test"]


async def add(core, caller, channel: str, url: str, events, everyone: bool = False
              ) -> list[dict]:
    """Add one of the caller's own rules; returns their rules. `everyone`: root or the
    admin group only, the rule gets events about every user (unreserved use above all)."""
    if everyone and not caller.is_admin:
        raise NotOwner("--all-users is for root or the admin group only: without it your "
                       "rules get the events about you")
    rule = new_user_rule(channel, url or "", events, everyone)
    status, data = await core.store.change_notify("add", caller.uid, caller.user,
                                                  json.dumps(rule))
    if status == "FULL":
        raise InvalidRequest(f"you have {data} notification rules already, the most there can "
                             "be: remove one first ('canhazgpu notify remove ID')")
    return _rules(status, data)


async def remove(core, caller, rule_id: str) -> list[dict]:
    """Remove one of the caller's rules by id ('*': all); returns the rules left."""
    status, data = await core.store.change_notify("remove", caller.uid, caller.user,
                                                  str(rule_id)[:40])
    if status == "NOTFOUND":
        raise InvalidRequest(f"no notification rule {rule_id!r} of yours: see 'canhazgpu "
                             "notify list'")
    return _rules(status, data)


async def listed(core, caller) -> list[dict]:
    entry = (await core.store.notify_rules(caller.uid)).get(caller.uid)
    return [r.to_json() for r in user_rules(caller.uid, entry)] if entry else []


async def test(core, caller) -> list[dict]:
    """Send a test message through each of the caller's rules, all at once (a slow
    receiver delays no other); one result per rule, in order."""
    from .service import Delivery, Notifier, message, sample_event
    entry = (await core.store.notify_rules(caller.uid)).get(caller.uid)
    rules: list[Rule] = user_rules(caller.uid, entry) if entry else []
    notifier = Notifier(core)
    doc = sample_event(caller.user, core.config.host_name)
    results: list[dict] = [{} for _ in rules]

    async def one(n: int, rule: Rule) -> None:
        d = Delivery(rule, doc, caller.user, f"canhazgpu on {core.config.host_name}",
                     message(doc, caller.user), caller.uid)
        error = await notifier.attempt(d)
        results[n] = {"id": rule.id, "channel": rule.channel, "target": rule.target(),
                      "ok": error is None, "error": error}

    async with anyio.create_task_group() as tg:
        for n, rule in enumerate(rules):
            tg.start_soon(one, n, rule)
    return results


def _rules(status: str, data: str) -> list[dict]:
    if status != "OK":
        raise CorruptState(f"unexpected reply {status!r} from Redis script notify")
    return json.loads(data)
