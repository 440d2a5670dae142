"""Identity from the kernel: a real process of uid 65534 (nobody), started with setpriv,
talks to a real daemon run by root. Whatever its requests say, it is nobody: its
reservations are nobody's, root's are not its to release, the pool is not its to change,
and the Redis behind the daemon is out of its reach."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import replace

import anyio
import pytest

from canhazgpu.api import protocol
from canhazgpu.core import Request
from eventtools import running_daemon
from otheruser import NOBODY as NOBODY_UID
from otheruser import nobody_runs as as_nobody
from otheruser import needs_root, open_dir  # noqa: F401 (fixture)

pytestmark = [pytest.mark.anyio, needs_root]
NOBODY = ["setpriv", "--reuid", str(NOBODY_UID), "--regid", str(NOBODY_UID), "--clear-groups"]

# One raw request, sent by nobody: prints the reply lines as one JSON list.
RAW = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.sendall(sys.argv[2].encode() + b"\\n")
data = b""
while chunk := sock.recv(65536):
    data += chunk
print(json.dumps([json.loads(line) for line in data.splitlines()]))
"""


@pytest.fixture
async def daemon(pool, config, open_dir):
    config = replace(config, api_socket=str(open_dir / "api.sock"))
    async with running_daemon(config):
        yield config


@pytest.fixture
def nobody_env(env, open_dir):
    (open_dir / "config.toml").write_text("")
    (open_dir / "config.toml").chmod(0o644)
    return {**env, "CANHAZGPU_CONFIG": str(open_dir / "config.toml"), "HOME": str(open_dir),
            "CANHAZGPU_API_SOCKET": str(open_dir / "api.sock"), "CANHAZGPU_CLIENT": "daemon"}


async def raw_as_nobody(env, op: str, args: dict) -> dict:
    """The last reply line to one request sent by nobody, bypassing our client."""
    doc = json.dumps({"v": protocol.VERSION, "op": op, "args": args})
    proc = await anyio.run_process([*NOBODY, sys.executable, "-c", RAW,
                                    env["CANHAZGPU_API_SOCKET"], doc], env=env)
    return json.loads(proc.stdout)[-1]


async def test_the_api_socket_is_open_to_every_user(daemon):
    assert stat.S_IMODE(os.stat(daemon.api_socket).st_mode) == 0o666


async def test_reservations_are_recorded_as_the_kernel_says(daemon, pool, nobody_env):
    hello = await raw_as_nobody(nobody_env, "hello", {})
    assert hello["ok"]["user"] == "nobody" and hello["ok"]["uid"] == 65534
    assert hello["ok"]["admin"] is False
    # who asks is not an argument: naming one is refused, whatever the operation
    for op in ("hello", "acquire"):
        forged = await raw_as_nobody(nobody_env, op, {
            "user": "root", "request": {"ids": [2], "duration_s": 60}})
        assert forged["error"]["type"] == "InvalidRequest" and "'user'" in \
            forged["error"]["message"], forged
    await as_nobody(nobody_env, "reserve", "--gpu-ids", "1", "--note", "mine", check=0)
    forged = await raw_as_nobody(nobody_env, "acquire", {
        "request": {"ids": [2], "duration_s": 60, "user": "root", "uid": 0, "pid": 1}})
    assert forged["ok"]["user"] == "nobody"
    holds = (await pool.store.read_state()).holds
    assert {(g, h.user, h.uid) for g, h in holds.items()} == \
        {(1, "nobody", 65534), (2, "nobody", 65534)}
    assert holds[2].pid != 1  # the connection's pid, not the one claimed
    code, out, _ = await as_nobody(nobody_env, "status", "--json", check=0)
    assert json.loads(out)["gpus"][1]["reservation"]["user"] == "nobody"
    await as_nobody(nobody_env, "release", check=0)
    assert (await pool.store.read_state()).holds == {}


async def test_nobody_cannot_release_roots_reservation(daemon, pool, nobody_env, me):
    res = await pool.allocate(Request(ids=(0,), duration_s=600), me)
    code, _, err = await as_nobody(nobody_env, "release", "--gpu-ids", "0")
    assert code == 1 and f"reserved by {me.user}" in err
    code, _, err = await as_nobody(nobody_env, "release", "--user", me.user, "--force")
    assert code == 1 and "--force is for root or the admin group only" in err
    for op, args in (("end", {"rid": res.rid}), ("heartbeat", {"rid": res.rid, "gpus": [0]})):
        reply = await raw_as_nobody(nobody_env, op, args)
        assert reply["error"]["type"] == "NotOwner", reply
    reply = await raw_as_nobody(nobody_env, "release", {"user": me.user, "force": True})
    assert reply["error"]["type"] == "NotOwner"
    holds = (await pool.store.read_state()).holds
    assert holds[0].rid == res.rid and holds[0].user == me.user


# Several requests over one kept connection, sent by nobody: prints the reply to each.
RAW_KEPT = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
lines = sock.makefile("rb")
out = []
for doc in json.loads(sys.argv[2]):
    sock.sendall(json.dumps({**doc, "v": 1, "keep": True}).encode() + b"\\n")
    out.append(json.loads(lines.readline()))
print(json.dumps(out))
"""


async def test_a_kept_connection_is_its_callers_for_every_request(daemon, pool, nobody_env,
                                                                   me):
    """Identity is the connection's, from the kernel, request after request: a kept
    connection gives nobody no more than one connection each."""
    await pool.allocate(Request(ids=(0,), duration_s=600), me)
    requests = [{"op": "hello"},
                {"op": "acquire", "args": {"request": {"ids": [1], "duration_s": 60}}},
                {"op": "release", "args": {"ids": [0]}},
                {"op": "release", "args": {"user": me.user, "force": True}},
                {"op": "hello"},
                {"op": "release", "args": {"ids": [1]}}]
    proc = await anyio.run_process([*NOBODY, sys.executable, "-c", RAW_KEPT,
                                    nobody_env["CANHAZGPU_API_SOCKET"], json.dumps(requests)],
                                   env=nobody_env)
    hello, took, roots, forced, again, mine = json.loads(proc.stdout)
    assert hello["ok"]["uid"] == again["ok"]["uid"] == NOBODY_UID and hello["keep"] is True
    assert took["ok"]["user"] == "nobody" and took["ok"]["gpus"] == [1]
    assert roots["error"]["type"] == "NotOwner" and roots["keep"] is True
    assert forced["error"]["type"] == "NotOwner"
    assert mine["ok"] == [1]
    holds = (await pool.store.read_state()).holds
    assert list(holds) == [0] and holds[0].user == me.user


async def test_nobody_cannot_take_over_roots_place_in_the_queue(daemon, pool, nobody_env, me):
    await pool.allocate(Request(count=8, duration_s=600), me)
    req = Request(count=1, duration_s=60)
    place = pool.new_reservation(req, me)
    await pool.enqueue(place, req)
    reply = await raw_as_nobody(nobody_env, "acquire", {
        "request": {"count": 1, "duration_s": 60}, "wait_s": 5, "resume": place.rid})
    assert reply["error"]["type"] == "NotOwner", reply
    assert [w.wid for w in (await pool.queue())[1]] == [place.rid]
    await pool.leave(place.rid, "cancelled")


async def test_nobody_cannot_change_the_pool(daemon, pool, nobody_env):
    code, _, err = await as_nobody(nobody_env, "admin", "--gpus", "4", "--force")
    assert code == 1 and "may change the pool; you are nobody" in err
    assert err.count("\n") == 1
    assert await pool.pool_size() == 8


async def test_nobody_runs_jobs_and_waits_through_the_api(daemon, pool, nobody_env):
    code, out, _ = await as_nobody(nobody_env, "run", "--gpus", "2", "--", "sh", "-c",
                                   "echo $CUDA_VISIBLE_DEVICES", check=0)
    assert out == "0,1\n"
    code, out, _ = await as_nobody(nobody_env, "wait", "--gpus", "1", "--short", check=0)
    assert out == "2\n"
    code, out, _ = await as_nobody(nobody_env, "queue", "--json", check=0)
    assert json.loads(out) == []
    code, out, _ = await as_nobody(nobody_env, "report", "--json", check=0)
    assert [u["user"] for u in json.loads(out)["users"]] == ["nobody"]


async def test_direct_redis_is_out_of_nobodys_reach(daemon, nobody_env):
    code, _, err = await as_nobody({**nobody_env, "CANHAZGPU_CLIENT": "direct"}, "status")
    assert code == 1 and err.startswith("Error: ") and err.count("\n") == 1
    assert "Traceback" not in err


async def test_admin_rights_come_from_the_kernels_groups(pool, config, open_dir, nobody_env):
    """admin_group by gid among the peer's supplementary groups (SO_PEERGROUPS): nobody
    with group 65534 (nogroup) among them is an admin; nobody whose only group is its
    primary 65534 is not."""
    config = replace(config, api_socket=str(open_dir / "api.sock"), admin_group="nogroup")
    doc = json.dumps({"v": protocol.VERSION, "op": "hello", "args": {}})
    async with running_daemon(config):
        for groups, admin in ((["--clear-groups"], False), (["--groups", "65534"], True)):
            who = ["setpriv", "--reuid", str(NOBODY_UID), "--regid", str(NOBODY_UID), *groups]
            proc = await anyio.run_process([*who, sys.executable, "-c", RAW,
                                            str(config.api_path), doc], env=nobody_env)
            hello = json.loads(proc.stdout)[-1]["ok"]
            assert (hello["uid"], hello["admin"]) == (NOBODY_UID, admin), groups


async def test_a_heartbeat_over_the_api_never_makes_a_hold(daemon, pool, nobody_env):
    """Over the socket a heartbeat only renews: an id of nobody's own invention on free
    GPUs gets them back as lost (no hold is made), and nobody's manual reservation is not
    renewed by heartbeats (it keeps its duration)."""
    made = await raw_as_nobody(nobody_env, "heartbeat", {"rid": "f" * 16, "gpus": [3, 4],
                                                         "kind": "run"})
    assert made["ok"] == [3, 4], made
    assert (await pool.store.read_state()).holds == {}
    await as_nobody(nobody_env, "reserve", "--gpu-ids", "5", "-d", "1h", check=0)
    [hold] = (await pool.store.read_state()).holds.values()
    renewed = await raw_as_nobody(nobody_env, "heartbeat", {"rid": hold.rid, "gpus": [5]})
    assert renewed["error"]["type"] == "InvalidRequest" and "manual" in \
        renewed["error"]["message"], renewed
