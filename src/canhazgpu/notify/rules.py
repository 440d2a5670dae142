"""Notification rules: the admin's `[[notify]]` tables and each user's own, validated once,
and who an event is about. Pure functions, no I/O.

A rule says through which channel (`terminal`, `webhook`, `apprise`) which event types go.
An admin rule covers the events of the users it lists (all users without a list, and then
also events about no one); a user's own rule covers only events about that user.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from ..errors import InvalidRequest
from ..events import TYPES
from ..urls import redacted

CHANNELS = ("terminal", "webhook", "apprise")
# event types a rule may name: the host's events, the jobs' (when that feature publishes
# them) and the test message of `canhazgpu notify test`
EVENTS = tuple(dict.fromkeys((*TYPES, "job_ended", "test")))
# what a user's rule delivers when it names no events: news about their own reservations
DEFAULT_EVENTS = ("granted", "expiring", "idle_warning", "released", "foreign_use",
                  "unreserved_detected", "job_ended")
MAX_URL = 2000
_USER = re.compile(r"^[A-Za-z0-9._@-]{1,64}$|^\*$")


@dataclass(frozen=True)
class Rule:
    channel: str
    url: str = ""
    events: tuple[str, ...] = ("*",)
    users: tuple[str, ...] = ()  # admin rules: whose events (none: everyone's)
    id: str = ""  # user rules: how `notify remove` names it
    owner: str = ""  # user rules: the user whose events these are
    uid: int = -1
    everyone: bool = False  # an admin's own rule for everyone's events (`--all-users`)

    def wants(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events

    def target(self) -> str:
        """How results and logs name where it goes (never a URL's password)."""
        return self.channel if self.channel == "terminal" else \
            f"{self.channel} {redacted(self.url) if '://' in self.url else self.url}"

    def shown(self) -> dict:
        """An admin rule as `canhazgpu config` shows it (no URL password)."""
        doc = {"channel": self.channel, "events": list(self.events)}
        if self.url:
            doc["url"] = redacted(self.url)
        return {**doc, "users": list(self.users)} if self.users else doc

    def to_json(self) -> dict:
        doc = {"id": self.id, "channel": self.channel, "events": list(self.events)}
        if self.url:
            doc["url"] = self.url
        if self.everyone:
            doc["everyone"] = True
        return doc


def _strings(value, what: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value) if v]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"invalid {what} {value!r} in {where}: use a list of names")
    return tuple(value)


def check_events(events, where: str) -> tuple[str, ...]:
    found = _strings(events, "events", where) or ("*",)
    unknown = [e for e in found if e != "*" and e not in EVENTS]
    if unknown:
        raise InvalidRequest(f"unknown event type {unknown[0]!r} in {where}: use \"*\" or "
                             f"some of {', '.join(EVENTS)}")
    return found


def check_rule(channel, url, events, where: str) -> tuple[str, str, tuple[str, ...]]:
    """(channel, url, events) validated: one line naming the bad value and the fix."""
    if channel not in CHANNELS:
        raise InvalidRequest(f"invalid notify channel {channel!r} in {where}: use one of "
                             f"{', '.join(CHANNELS)}")
    url = "" if url is None else url
    if not isinstance(url, str) or len(url) > MAX_URL or any(ord(c) < 32 for c in url):
        raise InvalidRequest(f"invalid notify url in {where}: a URL of up to {MAX_URL} "
                             "characters on one line")
    if channel == "terminal" and url:
        raise InvalidRequest(f"the terminal channel takes no url (in {where}): leave it out")
    if channel == "webhook" and not re.match(r"^https?://[^/\s]+", url):
        raise InvalidRequest(f"invalid webhook url {redacted(url)!r} in {where}: use "
                             "http://HOST/PATH or https://HOST/PATH")
    if channel == "apprise" and "://" not in url:
        raise InvalidRequest(f"invalid apprise url {url[:80]!r} in {where}: use an Apprise URL "
                             "such as ntfy://topic, mailto://user:pass@host, slack://...")
    return channel, url, check_events(events, where)


def parse_admin_rules(value, origin: str) -> tuple[Rule, ...]:
    """The `[[notify]]` tables of a config file (or $CANHAZGPU_NOTIFY as a JSON list)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidRequest(f"invalid notify in {origin}: a JSON list of tables like "
                                 '[{"channel": "terminal"}]') from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise InvalidRequest(f"invalid notify in {origin}: use [[notify]] tables")
    rules = []
    for n, table in enumerate(value, 1):
        where = f"[[notify]] table {n} of {origin}"
        if isinstance(table, Rule):
            rules.append(table)
            continue
        if not isinstance(table, dict):
            raise InvalidRequest(f"invalid {where}: a table with channel, url, events, users")
        extra = set(table) - {"channel", "url", "events", "users"}
        if extra:
            raise InvalidRequest(f"unknown key {sorted(extra)[0]!r} in {where}: use channel, "
                                 "url, events, users")
        channel, url, events = check_rule(table.get("channel"), table.get("url"),
                                          table.get("events", ["*"]), where)
        users = _strings(table.get("users", []), "users", where)
        bad = [u for u in users if not _USER.match(u)]
        if bad:
            raise InvalidRequest(f"invalid user {bad[0]!r} in {where}: use account names")
        rules.append(Rule(channel, url, events, () if "*" in users else users))
    return tuple(rules)


def new_user_rule(channel: str, url: str, events, everyone: bool = False) -> dict:
    """A user's rule as stored (notify.lua), from `canhazgpu notify add`."""
    channel, url, events = check_rule(channel, url, events or DEFAULT_EVENTS,
                                      "canhazgpu notify add")
    return Rule(channel, url, events, id=secrets.token_hex(3), everyone=everyone).to_json()


def user_rules(uid: int, entry: dict) -> list[Rule]:
    """A user's stored rules (store.notify_rules), skipping any that no longer validate."""
    found = []
    for doc in entry.get("rules", []):
        try:
            channel, url, events = check_rule(doc.get("channel"), doc.get("url"),
                                              doc.get("events") or ["*"], "stored rule")
        except InvalidRequest:
            continue
        found.append(Rule(channel, url, events, id=str(doc.get("id", "")),
                          owner=entry["user"], uid=uid, everyone=doc.get("everyone") is True))
    return found


def subjects(doc: dict) -> list[str]:
    """The users an event is news for: a reservation's owner when something happened to it
    that they did not do themselves, the users of unreserved GPUs. [] for the rest."""
    kind = doc.get("type")
    if kind == "granted" and not doc.get("complete"):
        return []  # still waiting for the rest
    if kind == "unreserved_detected":
        return [u for u in doc.get("users") or [doc.get("user")] if u and u != "unknown"]
    if kind in ("granted", "idle_warning", "expiring", "foreign_use", "expired", "reclaimed",
                "forced", "job_ended", "test") or (kind == "released" and doc.get("reason")):
        return [doc["user"]] if doc.get("user") else []
    return []
