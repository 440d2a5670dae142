"""Direct mode's reads without an event loop (quickread.py over resp.py) answer as the
async path over redis-py does: each command run both ways against the same real Redis,
stdout, stderr and exit code compared (the clock masked: Redis's time moves between the
two runs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from canhazgpu.embedded import RedisServer
from clustertools import cluster  # noqa: F401 (the fixture)
from conftest import HOST, wait_until
from test_cluster import hosts_on_every_master

# The CLI in a child; "loop" runs it as it ran before quickread.py (asyncio, redis-py).
# Its last line on stderr says whether it imported redis-py.
BOTH = """
import sys
from canhazgpu.cli import main as m
if sys.argv[1] == "loop":
    m.loopless = lambda args: False
exit_now = m.exit_now
def leave(code):
    print("\\nredis-py:", "redis" in sys.modules, file=sys.stderr)
    exit_now(code)
m.exit_now = leave
sys.argv = ["canhazgpu", *sys.argv[2:]]
m.main()
"""
CLOCK = re.compile(r"\d+h \d+m \d+s|\d+(\.\d+)?[smhd] ago|\d+s\b")
VIEWS = [["status"], ["status", "--json"], ["status", "--summary"], ["status", "--format", "table"],
         ["hosts"], ["hosts", "--json"], ["status", "--all-hosts"],
         ["status", "--all-hosts", "--json"], ["queue"], ["queue", "--json"],
         ["queue", "--all-hosts"]]


def run(env: dict, way: str, *args: str) -> tuple[int, str, str]:
    code, out, err, _ = ran(env, way, *args)
    return code, masked(out), masked(err)


def ran(env: dict, way: str, *args: str) -> tuple[int, str, str, bool]:
    """(exit code, stdout, stderr, whether it used redis-py)."""
    proc = subprocess.run([sys.executable, "-c", BOTH, way, *args], capture_output=True,
                          text=True, env={**env, "CANHAZGPU_CLIENT": "direct"}, timeout=60)
    err, _, used = proc.stderr.rpartition("\nredis-py: ")
    assert used.strip() in ("True", "False"), proc.stderr
    return proc.returncode, proc.stdout, err, used.strip() == "True"


def masked(text: str) -> str:
    """The text with the clock's readings masked: JSON times and durations, and the
    durations of the text views."""
    try:
        doc = json.loads(text)
    except ValueError:
        return CLOCK.sub("T", text)
    return json.dumps(_without_clock(doc), sort_keys=True)  # (the order is compared apart)


def _without_clock(doc):
    if isinstance(doc, dict):
        return {k: None if k.endswith(("_ms", "_s")) and isinstance(v, (int, float))
                else _without_clock(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_without_clock(v) for v in doc]
    return doc


def same_both_ways(env: dict, *args: str) -> tuple[int, str, str]:
    quick, loop = run(env, "quick", *args), run(env, "loop", *args)
    assert quick == loop, args
    return quick


@pytest.fixture
def busy(cli, fake_gpus, rclient):
    """A pool of 4: GPU 0 reserved, GPU 2 used without a reservation, a waiter queued for
    GPU 0, and another host on the same Redis."""
    cli("admin", "--gpus", 4, check=0)
    cli("admin", "--gpus", 2, extra_env={"CANHAZGPU_HOST": "other"}, check=0)
    cli("reserve", "--gpu-ids", "0", "--duration", "1h", "--note", "ours", check=0)
    fake_gpus.write([{"index": 2, "name": "Fake H100", "processes": [
        {"pid": 4242, "name": "python3", "user": "bob", "used_memory_mb": 2048,
         "cmdline": ["python3", "serve.py", "--model", "meta-llama/Llama-3-8B"]}]}], count=4)
    waiter = cli.popen("wait", "--gpu-ids", "0", "--quiet", "--note", "next", "--", "true")
    wait_until(lambda: json.loads(cli("queue", "--json", check=0).stdout))
    yield cli
    waiter.kill()
    waiter.wait()


@pytest.mark.parametrize("args", VIEWS, ids=" ".join)
def test_every_view_reads_alike_without_an_event_loop(busy, env, args):
    code, out, err = same_both_ways(env, *args)
    assert code == 0 and out and not err
    assert ran(env, "quick", *args)[3] is False  # read without redis-py


def test_the_text_views_are_byte_identical_where_the_clock_does_not_show(cli, env, fake_gpus):
    cli("admin", "--gpus", 3, check=0)
    fake_gpus.write([{"index": 1, "processes": [{"pid": 7, "user": "bob",
                                                 "used_memory_mb": 4096}]}], count=3)
    for args in (["status"], ["status", "--summary"], ["queue"], ["queue", "--json"]):
        quick, loop = ran(env, "quick", *args), ran(env, "loop", *args)
        assert quick[:3] == loop[:3] and quick[0] == 0 and not quick[3] and loop[3]
    assert "WITHOUT RESERVATION" in ran(env, "quick", "status")[1]


def test_a_corrupt_queue_entry_reads_alike(busy, env, rclient):
    key = f"canhazgpu:{{{HOST}}}"
    deadline = int(rclient.time()[0]) * 1000 + 3_600_000
    rclient.zadd(f"{key}:q:order", {"broken": 1})
    rclient.zadd(f"{key}:q:deadlines", {"broken": deadline})
    rclient.hset(f"{key}:q:waiters", "broken", "{not json")
    for args in (["queue"], ["queue", "--json"], ["status", "--all-hosts", "--json"],
                 ["hosts"], ["status"]):
        code, out, _ = same_both_ways(env, *args)
        assert code == 0
    assert "corrupt" in run(env, "quick", "queue")[1]


@pytest.mark.parametrize("count", ["abc", "-1", "2.5", ""])
def test_a_corrupt_pool_count_reads_alike(busy, env, rclient, count):
    rclient.hset(f"canhazgpu:{{{HOST}}}:pool", "count", count)
    for args in (["status"], ["status", "--json"], ["queue"], ["hosts"], ["hosts", "--json"],
                 ["status", "--all-hosts"], ["submit", "--gpus", "1", "--", "true"]):
        same_both_ways(env, *args)


def test_an_unreachable_redis_is_the_same_one_line_and_exit_code(env, tmp_path):
    env = {**env, "CANHAZGPU_REDIS_URL": f"unix://{tmp_path}/none.sock"}
    for args in (["status"], ["hosts"], ["queue"], ["status", "--all-hosts", "--json"]):
        code, out, err = same_both_ways(env, *args)
        assert code == 1 and not out and err.startswith("Error: cannot reach Redis at ")
        assert err.count("\n") == 1
    env = {**env, "CANHAZGPU_REDIS_URL": "redis://127.0.0.1:1/0"}
    assert same_both_ways(env, "status")[0] == 1


def test_a_hung_redis_is_the_same_one_line(env, tmp_path):
    """A stopped Redis accepts connections and never answers: after FIRST_REPLY_S the
    blocking read leaves it to redis-py, whose words are the same as ever."""
    import signal
    with RedisServer(tmp_path / "hung") as server:
        server.proc.send_signal(signal.SIGSTOP)
        try:
            code, out, err = same_both_ways({**env, "CANHAZGPU_REDIS_URL": server.url},
                                            "status")
        finally:
            server.proc.send_signal(signal.SIGCONT)
    assert code == 1 and not out and "does not answer" in err


def test_a_password_protected_redis(cli, env, tmp_path):
    with RedisServer(tmp_path / "auth", password="s3 cr/et") as server:
        env = {**env, "CANHAZGPU_REDIS_URL": server.url}
        cli("admin", "--gpus", 2, extra_env=env, check=0)
        for args in (["status"], ["status", "--json"], ["hosts"], ["queue"]):
            code, out, err = same_both_ways(env, *args)
            assert code == 0 and out and not err
            assert ran(env, "quick", *args)[3] is False
        for url in (server.url.replace("s3%20cr%2Fet", "wrong"),
                    server.url.replace(":s3%20cr%2Fet@", "")):
            code, _, err = same_both_ways({**env, "CANHAZGPU_REDIS_URL": url}, "status")
            assert code == 1 and ("password" in err or "credentials" in err), err


def test_a_database_in_the_url(cli, env, redis_server):
    url = f"{redis_server.url}?db=3"
    cli("admin", "--gpus", 2, extra_env={"CANHAZGPU_REDIS_URL": url}, check=0)
    code, out, _ = same_both_ways({**env, "CANHAZGPU_REDIS_URL": url}, "status", "--json")
    assert code == 0 and json.loads(out)["summary"]["total"] == 2
    code, _, err = run(env, "quick", "status")  # database 0: no pool there
    assert code == 1 and "no GPU pool" in err


@pytest.mark.slow
def test_on_a_cluster_each_host_is_read_at_its_node(cluster, env, cli):
    """Hosts whose slots three different masters serve, and the registry on its own
    slot: the views read alike, without redis-py; key_slot agrees with the cluster's."""
    from canhazgpu.resp import key_slot
    cluster.flushall()
    env = {**env, "CANHAZGPU_REDIS_URL": cluster.url}
    node = cluster.nodes[0].client()
    for key in ("canhazgpu:hosts", "canhazgpu:{gpu7}:pool", "a{}b", "{x}", "plain"):
        assert key_slot(key) == node.cluster("keyslot", key), key
    hosts = hosts_on_every_master(cluster)
    for host in hosts:
        cli("admin", "--gpus", 2, extra_env={**env, "CANHAZGPU_HOST": host}, check=0)
    env = {**env, "CANHAZGPU_HOST": hosts[0]}
    cli("reserve", "--gpus", 1, extra_env=env, check=0)
    for args in (["status", "--json"], ["hosts"], ["status", "--all-hosts", "--json"],
                 ["queue", "--all-hosts"]):
        code, out, err = same_both_ways(env, *args)
        assert code == 0 and out and not err
        assert ran(env, "quick", *args)[3] is False
    assert len(json.loads(run(env, "quick", "status", "--all-hosts", "--json")[1])["hosts"]) == 3


@pytest.mark.parametrize("url", [
    "redis://localhost:6379/0", "redis://h.example:7000/5", "redis://:pw@h/2",
    "redis://alice:p%40ss@h:1234", "redis://h:1/3?db=4", "redis://h", "redis://h/",
    "unix:///tmp/r.sock", "unix://:s3%20cr%2Fet@/tmp/r.sock?db=2",
    "unix://bob:pw@/var/run/redis.sock"])
def test_urls_are_read_as_redis_py_reads_them(url):
    from redis.connection import parse_url

    from canhazgpu.resp import endpoint
    family, where, auth, db = endpoint(url)
    theirs = parse_url(url)
    assert db == theirs.get("db", 0)
    assert auth == tuple(x for x in (theirs.get("username"), theirs.get("password")) if x)
    assert where == (theirs["path"] if family else (theirs.get("host", "localhost"),
                                                   theirs.get("port", 6379)))


@pytest.mark.parametrize("url", ["rediss://h:6379/0", "redis://h/0?socket_timeout=1",
                                 "redis://user@h/0", "redis://h/x", "redis://[::1]:6379"])
def test_other_urls_are_left_to_redis_py(url):
    from canhazgpu.errors import NeedsEventLoop
    from canhazgpu.resp import endpoint
    with pytest.raises(NeedsEventLoop):
        endpoint(url)
