"""Three hosts on one Redis, and on a 3-master Redis Cluster: the registry (admin, daemons
up and down, retire), `hosts`, and status/queue/report/events across hosts, through the
real CLI and in-process daemons."""

from __future__ import annotations

import json
import subprocess
from contextlib import AsyncExitStack
from dataclasses import replace

import anyio
import pytest

from canhazgpu import hosts
from canhazgpu.core import Core, Request
from canhazgpu.errors import CorruptState, NotOwner
from clustertools import cluster, patterns_subscribed  # noqa: F401 (the fixture)
from conftest import Cli, redis_client, wait_until
from eventtools import Lines, reap, running_daemon

pytestmark = pytest.mark.anyio
HOSTS = ("alpha", "beta", "gamma")


@pytest.fixture(params=["redis", pytest.param("cluster", marks=pytest.mark.slow)])
def env(request, env):
    """Every test twice: on the test Redis, and on the Redis Cluster (the hosts' keys in
    different slots, the registry in its own)."""
    if request.param == "redis":
        return env
    shared = request.getfixturevalue("cluster")
    shared.flushall()
    return {**env, "CANHAZGPU_REDIS_URL": shared.url}


def patterns(env, redis_url, request) -> int:
    if env["CANHAZGPU_REDIS_URL"] == redis_url:
        rc = redis_client(redis_url)
        try:
            return rc.pubsub_numpat()
        finally:
            rc.close()
    return patterns_subscribed(request.getfixturevalue("cluster"))


@pytest.fixture
async def three(cli, config):
    """alpha (2 GPUs), beta (3) and gamma (4), set up by `admin`; their cores."""
    for n, host in enumerate(HOSTS, 2):
        cli("admin", "--gpus", n, "--provider", "fake", "--host", host, check=0)
    cores = {h: Core(replace(config, host=h)) for h in HOSTS}
    yield cores
    for core in cores.values():
        await core.aclose()


def hosts_json(cli) -> dict:
    doc = json.loads(cli("hosts", "--json", check=0).stdout)
    return {h["host"]: h for h in doc["hosts"]}


async def daemons(stack: AsyncExitStack, config, *names):
    return {h: await stack.enter_async_context(running_daemon(replace(config, host=h)))
            for h in names}


async def test_hosts_lists_every_host_with_its_gpus_queue_and_daemon(three, cli, config, me):
    registered = hosts_json(cli)
    assert set(registered) == set(HOSTS)
    assert {h: r["daemon"] for h, r in registered.items()} == dict.fromkeys(HOSTS, "none")
    async with AsyncExitStack() as stack:
        await daemons(stack, config, "alpha", "beta")
        await three["beta"].allocate(Request(count=2), me)
        waiter = three["gamma"].new_reservation(Request(count=4), me)
        await three["gamma"].allocate(Request(count=1), me)
        await three["gamma"].enqueue(waiter, Request(count=4))
        rows = hosts_json(cli)
        assert {h: r["daemon"] for h, r in rows.items()} == {
            "alpha": "up", "beta": "up", "gamma": "none"}
        assert rows["beta"]["gpus"] == {"total": 3, "available": 1, "reserved": 2,
                                        "unreserved": 0, "error": 0}
        assert rows["gamma"]["gpus"]["total"] == 4 and rows["gamma"]["queue"] == 1
        assert rows["alpha"]["models"] and rows["alpha"]["last_seen_s"] < 5
        table = cli("hosts", check=0).stdout
        assert table.split("\n")[0].split() == ["HOST", "GPUS", "AVAIL", "RESERVED",
                                                "UNRESERVED", "QUEUE", "DAEMON", "LAST",
                                                "SEEN", "GPU", "TYPE"]
        assert [line.split()[0] for line in table.strip().split("\n")[1:]] == list(HOSTS)
    # stopped cleanly: shown down at once, never dropped
    rows = hosts_json(cli)
    assert {h: r["daemon"] for h, r in rows.items()} == {
        "alpha": "down", "beta": "down", "gamma": "none"}


def test_a_daemon_silent_too_long_is_shown_down():
    now = 1_000_000
    assert hosts.daemon_state({"daemon": "up", "last_seen_ms": now - 1000}, now) == "up"
    killed = {"daemon": "up", "last_seen_ms": now - hosts.STALE_MS - 1}
    assert hosts.daemon_state(killed, now) == "down"
    assert hosts.daemon_state({}, now) == "unknown"


async def test_status_across_hosts_has_each_hosts_own_document(three, cli, config, me):
    await three["beta"].allocate(Request(ids=(1,), note="sweep"), me)
    single = json.loads(cli("status", "--json", "--host", "beta", check=0).stdout)
    doc = json.loads(cli("status", "--all-hosts", "--json", check=0).stdout)
    assert [h["host"] for h in doc["hosts"]] == list(HOSTS)
    beta = doc["hosts"][1]
    assert set(beta) == set(single) | {"host", "daemon", "last_seen_ms"}
    assert beta["gpus"][1]["reservation"]["note"] == "sweep"
    assert [len(h["gpus"]) for h in doc["hosts"]] == [2, 3, 4]
    some = json.loads(cli("status", "--host", "gamma,alpha", "--json", check=0).stdout)
    assert [h["host"] for h in some["hosts"]] == ["gamma", "alpha"]
    text = cli("status", "--all-hosts", "--format", "lines", check=0).stdout
    assert "== beta (daemon none" in text and "GPU 1: IN USE by" in text
    plain = cli("status", "--format", "lines", check=None)  # testhost has no pool: unchanged
    assert plain.returncode == 1 and "admin --gpus N" in plain.stderr
    follow = cli("status", "--all-hosts", "--follow")
    assert follow.returncode == 2 and "--follow shows one host" in follow.stderr


async def test_queue_and_report_across_hosts(three, cli, me):
    await three["alpha"].allocate(Request(count=2), me)
    waiter = three["alpha"].new_reservation(Request(count=1), me)
    await three["alpha"].enqueue(waiter, Request(count=1))
    res = await three["gamma"].allocate(Request(count=3), me)
    await three["gamma"].release(me, ids=res.gpus)
    queues = json.loads(cli("queue", "--all-hosts", "--json", check=0).stdout)["hosts"]
    assert [(q["host"], [w["id"] for w in q["queue"]]) for q in queues] == [
        ("alpha", [waiter.rid]), ("beta", []), ("gamma", [])]
    report = json.loads(cli("report", "--all-hosts", "--json", check=0).stdout)
    assert report["hosts"] == list(HOSTS)
    (mine,) = report["users"]
    assert mine["user"] == me.user and mine["manual"] == 2  # one on alpha, one on gamma
    single = json.loads(cli("report", "--json", "--host", "gamma", check=0).stdout)
    assert single["users"][0]["manual"] == 1
    text = cli("report", "--all-hosts", check=0).stdout
    assert "Hosts: alpha, beta, gamma" in text


async def test_events_across_hosts_come_on_one_subscription(three, env, redis_url, me,
                                                            request):
    proc = await anyio.open_process(Cli.argv("events", "--all-hosts", "--json",
                                             "--count", "2"), env=env,
                                    stderr=subprocess.DEVNULL)
    try:
        await anyio.to_thread.run_sync(
            wait_until, lambda: patterns(env, redis_url, request) == 1)
        await three["alpha"].allocate(Request(count=1), me)
        await three["gamma"].allocate(Request(count=1), me)
        lines = Lines(proc.stdout)
        got = [json.loads(await lines.next()) for _ in range(2)]
        assert [(e["host"], e["type"]) for e in got] == [("alpha", "reserved"),
                                                          ("gamma", "reserved")]
        with anyio.fail_after(10):
            assert await proc.wait() == 0
    finally:
        await reap(proc)


async def test_retire_takes_a_stopped_host_off_every_view(three, cli, config, me):
    async with running_daemon(replace(config, host="alpha")):
        busy = cli("admin", "--retire", "--host", "alpha")
        assert busy.returncode == 1 and "daemon of host 'alpha' is serving" in busy.stderr
    with pytest.raises(NotOwner):
        await hosts.retire(three["alpha"], replace(me, is_admin=False))
    done = cli("admin", "--retire", "--host", "alpha", check=0)
    assert "Retired host alpha" in done.stdout
    assert set(hosts_json(cli)) == {"beta", "gamma"}
    doc = json.loads(cli("status", "--all-hosts", "--json", check=0).stdout)
    assert [h["host"] for h in doc["hosts"]] == ["beta", "gamma"]
    again = cli("admin", "--retire", "--host", "alpha")
    assert again.returncode == 1 and "not registered" in again.stderr
    bad = cli("admin", "--retire", "--gpus", "2")
    assert bad.returncode == 2
    cli("admin", "--gpus", "2", "--host", "alpha", check=0)  # set up again: listed again
    assert set(hosts_json(cli)) == set(HOSTS)


async def test_reserving_a_host_served_by_another_machine_is_refused(three, cli):
    # gamma as if registered by its own machine: its GPUs are not ours to hand out
    await three["gamma"].store.register("admin", {"gpus": 4, "machine": "gpu-box-9"})
    refused = cli("reserve", "--gpus", "1", "--host", "gamma")
    assert refused.returncode == 2
    assert "served by machine 'gpu-box-9'" in refused.stderr
    assert "ssh gpu-box-9" in refused.stderr
    run = cli("run", "--gpus", "1", "--host", "gamma", "--", "true")
    assert run.returncode == 2
    listed = cli("admin", "--gpus", "2", "--host", "alpha,beta")  # no pool named "alpha,beta"
    assert listed.returncode == 2 and "a list of hosts is for" in listed.stderr
    cli("reserve", "--gpus", "1", "--host", "beta", check=0)  # registered from here


async def test_one_read_of_a_host_gives_what_read_state_and_read_usage_give(three, me):
    """store.read_view (view.lua, one round trip) decodes into the same State and Usage as
    the single-host reads: holds, a release, a waiter, a corrupt entry, the snapshot."""
    core = three["gamma"]
    await core.allocate(Request(ids=(0, 1), duration_s=600, note="mine"), me)
    await core.release(me, ids=(1,))
    req = Request(ids=(0,), duration_s=600)  # waits for mine
    await core.enqueue(core.new_reservation(req, me), req)
    await core.publish_usage(await core.scan(source="daemon"), [])
    await core.store.redis.hset(core.store.key("released"), "3", "garbage")

    async def both():
        state, snap = await core.store.read_view()
        old = await core.store.read_state()
        assert replace(state, now_ms=0) == replace(old, now_ms=0)
        assert abs(state.now_ms - old.now_ms) < 5000
        return state, snap
    state, snap = await both()
    _, usage = await core.store.read_usage()
    assert set(state.holds) == {0} and 1 in state.released and 3 in state.corrupt
    assert len(state.queue) == 1 and snap == usage and snap.source == "daemon"
    assert (await core.host_view(here=False)).gpus[0].hold.note == "mine"

    await core.store.redis.hset(core.store.key("snapshot"), "doc", "{not json")
    state, snap = await both()  # the state still reads; the snapshot is its error
    assert "snapshot" in str(snap) and set(state.holds) == {0}
    _, found = await hosts.views(three["alpha"], ["gamma", "beta"])
    assert "snapshot" in found[0].error and found[1].view is not None

    await core.store.redis.hset(core.store.key("pool"), "count", "abc")
    with pytest.raises(CorruptState, match="pool"):
        await core.store.read_view()
    with pytest.raises(CorruptState, match="pool"):
        await core.store.read_state()
    _, found = await hosts.views(three["alpha"], ["gamma", "beta"])
    assert "canhazgpu:{gamma}:pool" in found[0].error and found[1].view is not None
