"""Per-user limits of the daemon, tried by another uid (issue 15): nobody's flood of
waiters and event subscriptions stops at its limits with one line naming them, while
root's commands go on; closing the connections gives every place back."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from contextlib import suppress
from dataclasses import replace

import anyio
import pytest

from canhazgpu.api.client import RemoteCore
from canhazgpu.core import Request
from eventtools import Lines, Recorder, reap, running_daemon, stop
from otheruser import NOBODY as NOBODY_UID
from otheruser import nobody_runs as as_nobody
from otheruser import needs_root, open_dir  # noqa: F401 (fixture)

pytestmark = [pytest.mark.anyio, needs_root]
NOBODY = ["setpriv", "--reuid", str(NOBODY_UID), "--regid", str(NOBODY_UID), "--clear-groups"]

# As nobody: open WAITERS queued requests, then EVENTS subscriptions, then KEPT idle
# connections (a short request that keeps its connection), each until refused; print what
# happened as one JSON line, and hold everything open until stdin closes.
FLOOD = """
import json, socket, sys
path, waiters, events = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kept = int(sys.argv[4]) if len(sys.argv) > 4 else 0
def request(op, args, keep):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    doc = {"v": 1, "op": op, "args": args, **({"keep": True} if keep else {})}
    sock.sendall(json.dumps(doc).encode() + b"\\n")
    data = b""
    while True:
        data += sock.recv(65536)
        for line in data.splitlines():
            doc = json.loads(line)
            if "error" in doc or "enqueued" in doc or doc.get("event", 1) is None \\
                    or "keep" in doc:
                return sock, doc
held, out = [], {}
for op, n, args, keep in (("acquire", waiters, {"request": {"count": 1, "duration_s": 60},
                                                "wait_s": "inf"}, False),
                          ("events", events, {}, False), ("pool_size", kept, {}, True)):
    if not n:
        continue
    for i in range(n):
        sock, doc = request(op, args, keep)
        held.append(sock)
        if "error" in doc:
            out[op] = {"ok": i, "error": doc["error"]}
            break
    else:
        out[op] = {"ok": n}
print(json.dumps(out), flush=True)
sys.stdin.read()
"""


async def test_one_users_flood_stops_at_its_limits(pool, config, env, open_dir, me):
    config = replace(config, api_socket=str(open_dir / "api.sock"), user_waiters=20,
                     user_connections=50)
    await pool.allocate(Request(count=8, duration_s=600), me)
    async with running_daemon(config), Recorder(pool.store).running() as rec:
        async with await anyio.open_process(
                [*NOBODY, sys.executable, "-c", FLOOD, config.api_socket, "25", "60"],
                env=env) as flood:
            with anyio.fail_after(60):
                line = await flood.stdout.receive()
            out = json.loads(line)
            # 20 places in the queue, then one line naming the limit and the use
            assert out["acquire"]["ok"] == 20, out
            err = out["acquire"]["error"]
            assert err["type"] == "LimitReached" and err["exit_code"] == 1
            assert "uid 65534 has 20, the limit is 20" in err["message"]
            assert "user_waiters" in err["message"]
            # connections: the 20 waiters, then 30 subscriptions (a refused request ends)
            assert out["events"]["ok"] == 30 and "user_connections" in \
                out["events"]["error"]["message"], out
            # root goes on meanwhile
            remote = RemoteCore(config, config.api_socket)
            with anyio.fail_after(10):
                assert len((await remote.view()).gpus) == 8
                assert len((await remote.queue())[1]) == 20
            await flood.stdin.aclose()
            await flood.wait()
            for _ in range(20):  # every place given back with its connection
                await rec.until(lambda e: e.type == "left", timeout=20)
        assert not (await pool.queue())[1]


async def test_kept_connections_count_against_the_users_limit(pool, config, env, open_dir):
    """Idle kept connections are connections: nobody's stop at user_connections with the
    line naming it, root's commands answer meanwhile, and hanging up frees them."""
    config = replace(config, api_socket=str(open_dir / "api.sock"), user_connections=30)
    async with running_daemon(config) as daemon:
        async with await anyio.open_process(
                [*NOBODY, sys.executable, "-c", FLOOD, config.api_socket, "0", "0", "40"],
                env=env) as flood:
            with anyio.fail_after(60):
                out = json.loads(await flood.stdout.receive())
            assert out["pool_size"]["ok"] == 30, out
            err = out["pool_size"]["error"]
            assert err["type"] == "LimitReached" and "user_connections" in err["message"]
            assert "uid 65534 has 30, the limit is 30" in err["message"]
            remote = RemoteCore(config, config.api_socket)
            with anyio.fail_after(10):
                assert await remote.pool_size() == 8
            await remote.aclose()
            await flood.stdin.aclose()
            await flood.wait()
        with anyio.fail_after(10):
            while daemon.api.connections.open:  # every connection ended with its client
                await anyio.sleep(0.01)  # a count in the daemon's memory: nothing to wait on


async def test_the_quick_start_is_private_and_nobody_works_through_the_daemon(
        cli, env, open_dir):
    """The README's quick start as root: the state directory is 0700 whatever the umask,
    nobody cannot reach its Redis, and nobody's doctor, status and reserve work through the
    daemon without being told to loosen anything."""
    state = open_dir / "quick"
    own = {k: v for k, v in env.items() if k not in ("CANHAZGPU_REDIS_URL",
                                                     "CANHAZGPU_FAKE_GPUS")}
    own.update(CANHAZGPU_STATE_DIR=str(state), CANHAZGPU_API_SOCKET=str(open_dir / "q.sock"))
    (open_dir / "config.toml").write_text("")
    (open_dir / "config.toml").chmod(0o644)
    own["CANHAZGPU_CONFIG"] = str(open_dir / "config.toml")
    daemon = await anyio.open_process([*cli.argv("serve", "--embedded-redis", "--fake", "8")],
                                      env=own)
    try:
        lines = Lines(daemon.stderr)
        await lines.until(lambda line: "serving host" in line, timeout=30)
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        nobody = {**own, "HOME": str(open_dir)}
        code, out, err = await as_nobody(nobody, "doctor")
        assert code == 0, (out, err)
        assert "behind the daemon" in out and "permission" not in (out + err).lower()
        await as_nobody(nobody, "reserve", "--gpus", "1", check=0)
        code, out, _ = await as_nobody(nobody, "status", "--json", check=0)
        assert [g["reservation"]["user"] for g in json.loads(out)["gpus"]
                if g.get("reservation")] == ["nobody"]
        code, _, err = await as_nobody({**nobody, "CANHAZGPU_CLIENT": "direct"}, "status")
        assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
        assert "chmod" not in err and "permissions" not in err
    finally:
        await stop(daemon)
        await reap(daemon)



async def test_thousands_from_one_uid_and_another_uid_still_answers(pool, config, env,
                                                                      open_dir, me):
    """Within the default limits: nobody holds 1,000 queued requests, 1,000 event
    subscriptions and 1,000 idle kept connections open at once; root's status, queue and release answer meanwhile, the
    daemon keeps its bounded Redis pool, and hanging up gives every place back."""
    config = replace(config, api_socket=str(open_dir / "api.sock"))
    await pool.allocate(Request(count=8, duration_s=600), me)
    # a recorder that keeps all 1,000 `left` events: one dropped would leave the wait
    # below without its wake-up
    async with running_daemon(config) as daemon, \
            Recorder(pool.store, buffer=5000).running() as rec:
        async with await anyio.open_process(
                [*NOBODY, sys.executable, "-c", FLOOD, config.api_socket, "1000", "1000",
                 "1000"], env=env) as flood:
            with anyio.fail_after(120):
                out = json.loads(await flood.stdout.receive())
            assert out == {"acquire": {"ok": 1000}, "events": {"ok": 1000},
                           "pool_size": {"ok": 1000}}, out
            assert daemon.api.connections.open[NOBODY_UID] == 3000
            remote = RemoteCore(config, config.api_socket)
            with anyio.fail_after(10):
                assert len((await remote.view()).gpus) == 8
                assert len((await remote.queue())[1]) == 1000
            assert daemon.core.store.redis.connection_pool.max_connections <= 32
            await flood.stdin.aclose()
            await flood.wait()
            # every place given back with its connection: woken by the `left` events (the
            # queue itself decides)
            with anyio.fail_after(60):
                while (await pool.queue())[1]:
                    await rec.until(lambda e: e.type == "left", timeout=60)


async def test_a_full_disk_is_named_to_users_and_nothing_is_lost(cli, env, open_dir):
    """The embedded Redis's AOF on a disk that fills up: users read that Redis cannot write
    its AOF for lack of space (not "cannot reach Redis"), doctor says so, redis-server's own
    line is in the daemon's log, and once space is freed the reservations are all there."""
    disk = open_dir / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    own = {k: v for k, v in env.items() if k not in ("CANHAZGPU_REDIS_URL",
                                                     "CANHAZGPU_FAKE_GPUS")}
    own.update(CANHAZGPU_STATE_DIR=str(disk / "state"),
               CANHAZGPU_API_SOCKET=str(open_dir / "full.sock"), CANHAZGPU_CLIENT="daemon")
    daemon = await anyio.open_process([*cli.argv("serve", "--embedded-redis", "--fake", "8")],
                                      env=own)
    filler = disk / "filler"

    async def run(*args):
        proc = await anyio.run_process(cli.argv(*args), env=own, check=False)
        return subprocess.CompletedProcess(args, proc.returncode, proc.stdout.decode(),
                                           proc.stderr.decode())
    try:
        lines = Lines(daemon.stderr)
        await lines.until(lambda line: "serving host" in line, timeout=30)
        first = await run("reserve", "--gpus", "1", "--json")
        assert first.returncode == 0, first.stderr
        first_id = json.loads(first.stdout)["id"]
        with open(filler, "wb") as out:  # every byte the disk has left
            with suppress(OSError):
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
        kept = [first_id]  # what was said to be done stays done
        for _ in range(50):  # the AOF's last page may still take a few writes
            proc = await run("reserve", "--gpus", "1", "--json")
            if proc.returncode != 0:
                break
            rid = json.loads(proc.stdout)["id"]
            if (await run("release", "--gpu-ids", str(json.loads(proc.stdout)["gpus"][0]))
                    ).returncode != 0:
                kept.append(rid)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert "cannot write its AOF: no space left" in proc.stderr
        assert "nothing is lost" in proc.stderr and "Traceback" not in proc.stderr
        doctor = await run("doctor")
        assert "no space left" in doctor.stdout, doctor.stdout
        # redis-server's own line, then ours naming the cause, in the daemon's log
        await lines.until(lambda line: "writing to the AOF file" in line, timeout=30)
        await lines.until(lambda line: "exited" in line and "no space left" in line)
        filler.unlink()  # space again: the daemon's restarts bring Redis back, as it was
        with anyio.fail_after(60):
            while (await run("status", "--json")).returncode != 0:
                await lines.until(lambda line: "redis-server" in line, timeout=60)
        doc = json.loads((await run("status", "--json")).stdout)
        assert sorted(g["reservation"]["id"] for g in doc["gpus"] if g.get("reservation")) \
            == sorted(kept)  # nothing lost
    finally:
        await stop(daemon)
        await reap(daemon)
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
