"""Notifications (docs/notify.md) with real receivers this test starts: an HTTP server for
webhooks and Apprise json://, aiosmtpd for Apprise mailto://, ptys for users' terminals."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace

import anyio
import pytest

from canhazgpu.api.client import RemoteCore
from canhazgpu.api.doors import Local
from canhazgpu.config import load
from canhazgpu.core import Request
from canhazgpu.errors import InvalidRequest, NotOwner
from canhazgpu.identity import Caller
from canhazgpu.notify.rules import parse_admin_rules, subjects
from eventtools import running_daemon
from otheruser import NOBODY
from receivers import Terminal, free_port, http_receiver, smtp_receiver

pytestmark = pytest.mark.anyio


def on(gpu: int, *users: str) -> dict:
    return {"index": gpu, "memory_used_mb": 3000 * len(users),
            "processes": [{"pid": 5000 + 10 * gpu + n, "name": "python3", "user": u,
                           "used_memory_mb": 3000} for n, u in enumerate(users)]}


def with_rules(config, *tables, **settings):
    return replace(config, notify=parse_admin_rules(list(tables), "the test"), **settings)


# ---------------------------------------------------------------------- rules
@pytest.mark.parametrize("table, message", [
    ({"channel": "pager"}, r"invalid notify channel 'pager' .*: use one of terminal, webhook"),
    ({"channel": "webhook", "url": "ftp://x"}, r"invalid webhook url 'ftp://x'"),
    ({"channel": "apprise", "url": "nope"}, r"invalid apprise url 'nope'"),
    ({"channel": "terminal", "events": ["granted", "boom"]}, r"unknown event type 'boom'"),
    ({"channel": "terminal", "user": ["bob"]}, r"unknown key 'user' in \[\[notify\]\] table 1"),
    ({"channel": "terminal", "users": "alice, and"}, None),
])
def test_admin_rules_are_validated_once(table, message):
    if message is None:  # names exactly, never split by a sed
        assert parse_admin_rules([table], "f")[0].users == ("alice", "and")
        return
    with pytest.raises(InvalidRequest, match=message):
        parse_admin_rules([table], "f")


def test_config_file_tables(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('notify_repeat = "2h"\n[[notify]]\nchannel = "terminal"\n'
                    'events = ["unreserved_detected"]\n')
    config = load(env={"CANHAZGPU_CONFIG": str(path)})
    assert config.notify[0].events == ("unreserved_detected",) and config.notify_repeat == "2h"


def test_who_an_event_is_about():
    assert subjects({"type": "unreserved_detected", "users": ["alice", "bob", "charlie"]}) \
        == ["alice", "bob", "charlie"]
    assert subjects({"type": "released", "user": "bob"}) == []  # bob did it himself
    assert subjects({"type": "released", "user": "bob", "reason": "idle"}) == ["bob"]
    assert subjects({"type": "granted", "user": "bob", "complete": False}) == []


# ---------------------------------------------------------------------- notify add|list|test
@pytest.mark.parametrize("mode", ["direct", "daemon"])
async def test_notify_commands_and_test_results(cli, pool, config, mode):
    with http_receiver() as (url, inbox):
        async with running_daemon(config) if mode == "daemon" else _nothing():
            run = lambda *a: cli.run("--client", mode, "notify", *a)  # noqa: E731
            assert (await run("add", "webhook", f"{url}/hook")).returncode == 0
            await run("add", "apprise", f"json://127.0.0.1:{url.rsplit(':', 1)[1]}/apprise")
            await run("add", "webhook", f"http://127.0.0.1:{free_port()}/down",
                      "--events", "granted")
            listed = await run("list")
            assert listed.stdout.count("\n") == 3 and "events: granted\n" in listed.stdout
            result = await run("test")
            got = await inbox.until(lambda items: len(items) >= 2)
    lines = result.stdout.splitlines()
    assert result.returncode == 1 and len(lines) == 3
    assert lines[0].endswith(f"webhook {url}/hook: sent") and lines[1].endswith(": sent")
    assert "FAILED: webhook" in lines[2] and "1 of 3 notification channels failed" in result.stderr
    by_path = dict(got)
    assert by_path["/hook"]["event"]["type"] == "test"
    assert "test message" in by_path["/apprise"]["message"]
    rule_id = lines[2].split()[0]
    assert (await cli.run("notify", "remove", rule_id)).stdout.startswith("Removed. 2 rules")
    bad = await cli.run("notify", "add", "webhook", "gopher://x")
    assert bad.returncode == 2 and "invalid webhook url" in bad.stderr


class _nothing:
    async def __aenter__(self):
        return None

    async def __aexit__(self, *exc):
        return False


# ---------------------------------------------------------------------- the daemon delivers
async def test_the_documents_scene_names_each_user_once(pool, config, fake_gpus):
    """The seeds' cron scripts as one config block: bob on GPU 2; then alice, bob and
    charlie on GPU 1, each told once, the admin's webhook naming them exactly."""
    with http_receiver() as (url, hooks), smtp_receiver() as (port, mails):
        settings = with_rules(
            config,
            {"channel": "webhook", "url": f"{url}/admin", "events": ["unreserved_detected"]},
            {"channel": "apprise", "events": ["unreserved_detected"],
             "url": f"mailto://127.0.0.1:{port}?from=gpu@example.com&to={{user}}@example.com"},
            scan_interval="0.2s")
        async with running_daemon(settings) as daemon:
            fake_gpus.write([on(2, "bob")])
            t0 = time.monotonic()
            await mails.until(lambda m: len(m) == 1)
            await hooks.until(lambda h: len(h) == 1)
            fake_gpus.write([on(2, "bob"), on(1, "alice", "bob", "charlie")])
            await mails.until(lambda m: len(m) == 4)
            for _ in range(3):  # more scans of the same scene: nobody is told again
                await daemon.scanner.scan_once()
            await hooks.until(lambda h: len(h) == 2)
            assert daemon.notifier.in_flight == 0
    assert time.monotonic() - t0 < 5
    to = sorted(rcpt[0] for rcpt, _ in mails.snapshot())
    assert to == ["alice@example.com", "bob@example.com", "bob@example.com",
                  "charlie@example.com"]
    assert all("without a reservation" in text for _, text in mails.snapshot())
    docs = [body for _, body in hooks.snapshot()]
    assert [d["event"]["users"] for d in docs] == [["bob"], ["alice", "bob", "charlie"]]
    assert "by alice, bob, charlie" in docs[1]["text"]


@pytest.mark.skipif(os.getuid() != 0, reason="gives a pty to another uid: needs root")
async def test_terminal_lines_reach_only_their_users_ttys(pool, config, fake_gpus, me):
    mine, theirs = Terminal(), Terminal(uid=NOBODY)
    nobody = Caller("nobody", NOBODY, 0, 0.0, False)
    try:
        settings = with_rules(config, {"channel": "terminal",
                                       "events": ["unreserved_detected"]},
                              notify_expiry="2s")
        async with running_daemon(settings) as daemon:
            daemon.notifier.ttys = [mine.path, theirs.path]
            # each user's own rule, for all of their events
            await Local(pool, None).notify(me, "add", channel="terminal", url="", events=["*"])
            await Local(pool, None).notify(nobody, "add", channel="terminal", url="", events=["*"])
            fake_gpus.write([on(0, me.user), on(3, "nobody")])
            await mine.until(f"{me.user}: you are using GPU 0 without a reservation")
            await theirs.until("nobody: you are using GPU 3 without a reservation")
            await pool.allocate(Request(ids=(5,), duration_s=3), me)
            await mine.until(f"GPU 5 ({me.user}, manual) expires in")
            await mine.until("EOF", timeout=1)
    finally:
        mine.close()
        theirs.close()
    assert "GPU 3" not in mine.text and "GPU 0" not in theirs.text
    assert "expires" not in theirs.text  # root's event: never on nobody's terminal


async def test_a_down_or_slow_receiver_delays_nothing(pool, config, fake_gpus):
    hang = threading.Event()
    with http_receiver(delay=hang) as (slow, _), http_receiver() as (good, inbox):
        settings = with_rules(
            config, *({"channel": "webhook", "url": u, "events": ["unreserved_detected"]}
                      for u in (f"{slow}/slow", f"http://127.0.0.1:{free_port()}/down",
                                f"{good}/good")))
        async with running_daemon(settings) as daemon:
            remote = RemoteCore(settings, str(settings.api_path))
            fake_gpus.write([on(gpu, "bob") for gpu in range(2, 8)])  # six events at once
            start = time.monotonic()
            await inbox.until(lambda items: len(items) == 6, timeout=3)
            delivered = time.monotonic() - start
            start = time.monotonic()
            view = await remote.view()  # the daemon answers while two receivers fail
            answered = time.monotonic() - start
            assert daemon.notifier.in_flight == 12  # the slow ones, the down one's retries
            await remote.aclose()
    assert delivered < 2 and answered < 1 and view.gpus[4].unreserved


async def test_unreserved_use_that_goes_on_is_told_again_once_per_repeat(pool, config,
                                                                         fake_gpus):
    with http_receiver() as (url, hooks):
        settings = with_rules(config, {"channel": "webhook", "url": url,
                                       "events": ["unreserved_detected"]},
                              notify_repeat="1s")
        async with running_daemon(settings):
            fake_gpus.write([on(2, "bob")])
            first = time.monotonic()
            await hooks.until(lambda h: len(h) == 1)
            await hooks.until(lambda h: len(h) == 2, timeout=4)
            again = time.monotonic() - first
            fake_gpus.write([])
            await hooks.until(lambda h: len(h) == 2)
    assert 0.9 <= again < 3


async def test_rate_limit_per_recipient(pool):
    from canhazgpu.notify.service import RATE, Notifier
    notifier = Notifier(pool)
    rule = parse_admin_rules([{"channel": "terminal"}], "t")[0]
    doc = {"type": "granted", "user": "bob", "complete": True}
    assert all(notifier.allowed(rule, "bob", doc, 100.0) for _ in range(RATE))
    assert not notifier.allowed(rule, "bob", doc, 100.0)
    assert notifier.allowed(rule, "alice", doc, 100.0)  # another recipient: its own budget
    assert notifier.allowed(rule, "bob", doc, 103.1)  # refilled: 20 a minute


async def test_the_notifier_is_woken_only_for_events_that_may_matter(pool, config, me):
    """The hub asks Notifier.wants before waking it: a reservation coming and going is
    no one's news; unreserved use is followed; a type a rule names (an admin's, or a
    user's once read) is let through."""
    from canhazgpu.events import Event, Resync
    from canhazgpu.notify.service import Notifier

    def event(kind: str, **data) -> Event:
        return Event(kind, 1, 0, "h", rid="r", user=me.user,
                     data={"type": kind, "user": me.user, **data})
    notifier = Notifier(pool)
    await notifier.user_rules()  # read: none yet
    assert not notifier.wants(event("reserved")) and not notifier.wants(event("released"))
    assert not notifier.wants(event("granted", complete=True))
    assert not notifier.wants(Resync(reconnected=True))
    assert notifier.wants(event("unreserved_detected", users=["bob"]))
    await Local(pool, None).notify(me, "add", channel="webhook", url="http://h/x",
                                   events=["granted"])
    notifier._rules = (-100.0, notifier._rules[1])  # due to be read again: lets news through
    assert notifier.wants(event("granted", complete=True))
    await notifier.user_rules()
    assert notifier.wants(event("granted", complete=True))
    assert not notifier.wants(event("expired"))
    from canhazgpu.core import Core
    admin = Notifier(Core(with_rules(config, {"channel": "terminal", "events": ["reserved"]}),
                          pool.store))
    assert admin.wants(event("reserved")) and not admin.wants(event("released"))


async def test_the_holder_hears_of_grant_idle_warning_and_idle_release(pool, config, me):
    with http_receiver() as (url, hooks):
        settings = replace(config, idle_warn_after="1s", idle_release_after="2s")
        async with running_daemon(settings):
            await Local(pool, None).notify(me, "add", channel="webhook", url=url, events=None)
            held = await pool.allocate(Request(count=8, kind="run"), me)
            waiter = pool.new_reservation(Request(count=1), me)
            await pool.enqueue(waiter, Request(count=1))
            await pool.end(held.rid, me)  # the run ends: the queued request is granted
            got = await hooks.until(lambda h: len(h) >= 3, timeout=8)
    kinds = [(b["event"]["type"], b["event"].get("reason")) for _, b in got]
    assert kinds[:3] == [("granted", None), ("idle_warning", None), ("released", "idle")]
    assert all(b["user"] == me.user for _, b in got)
    assert "idle too long" in got[2][1]["text"]


async def test_an_admins_own_rule_for_all_users(pool, config, fake_gpus, me):
    admin = replace(me, is_admin=True)
    with http_receiver() as (url, hooks):
        async with running_daemon(config):
            await Local(pool, None).notify(admin, "add", channel="webhook", url=url,
                                           events=["unreserved_detected"], everyone=True)
            fake_gpus.write([on(2, "bob")])
            (_, body), = await hooks.until()
    assert body["user"] is None and body["event"]["users"] == ["bob"]
    with pytest.raises(NotOwner, match="--all-users is for root or the admin group"):
        await Local(pool, None).notify(replace(me, is_admin=False), "add", channel="terminal",
                                       url="", events=None, everyone=True)


async def test_a_user_who_joins_unreserved_use_is_told_too(pool, config, fake_gpus):
    with smtp_receiver() as (port, mails):
        settings = with_rules(config, {
            "channel": "apprise", "events": ["unreserved_detected"],
            "url": f"mailto://127.0.0.1:{port}?from=gpu@example.com&to={{user}}@example.com"})
        async with running_daemon(settings) as daemon:
            fake_gpus.write([on(2, "bob")])
            await mails.until(lambda m: len(m) == 1)
            fake_gpus.write([on(2, "bob", "dave")])  # no new unreserved_detected: it goes on
            await mails.until(lambda m: len(m) == 2)
            for _ in range(3):
                await daemon.scanner.scan_once()
    assert sorted(rcpt[0] for rcpt, _ in mails.snapshot()) == ["bob@example.com",
                                                               "dave@example.com"]
