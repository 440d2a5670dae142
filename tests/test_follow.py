"""`status --follow`: JSON Lines in a pipe, a table redrawn in place on a terminal, a clean
end on Ctrl+C. (Redis going away under a follower: test_daemon.py.)"""

from __future__ import annotations

import json
import signal

import pytest

from canhazgpu.core import Request
from eventtools import Lines, reap, rest, stop

pytestmark = pytest.mark.anyio


async def test_in_a_pipe_each_change_is_one_json_document(pool, cli, me):
    proc = await cli.open("status", "--follow")
    try:
        out = Lines(proc.stdout)
        first = json.loads(await out.next())  # written once subscribed: nothing is missed
        assert first["event"] is None and first["summary"]["available"] == 8
        res = await pool.allocate(Request(ids=(3,)), me)
        doc = json.loads(await out.next())
        assert doc["event"]["type"] == "reserved" and doc["event"]["rid"] == res.rid
        assert doc["gpus"][3]["status"] == "reserved" and doc["version"] == 1
        await pool.release(me, ids=(3,))
        doc = json.loads(await out.next())
        assert doc["event"]["type"] == "released" and doc["gpus"][3]["status"] == "available"
        assert await stop(proc, signal.SIGINT) == 0  # Ctrl+C is a normal end
        assert await rest(proc.stderr) == ""
    finally:
        await reap(proc)


async def test_on_a_terminal_the_table_is_redrawn_in_place(pool, cli, me):
    term = cli.terminal("status", "--follow", rows=40, cols=160)
    try:
        first = await term.until(lambda t: "Ctrl+C to stop" in t and t.count("available") >= 8)
        assert "\033[J" not in first and "GPU" in first and "STATUS" in first
        await pool.allocate(Request(ids=(5,)), me)
        text = await term.until(lambda t: t[len(first):].count("\n") >= first.count("\n"))
        drawn = text[len(first):]
        rows = first.count("\n")
        assert drawn.startswith(f"\033[{rows}F\033[J")  # up over the last drawing, clear
        assert f"reserved: GPU 5 reserved by {me.user}" in drawn.splitlines()[0]
        assert drawn.splitlines()[8].split()[:3] == ["5", "reserved", me.user]
        term.send(b"\x03")  # Ctrl+C is a normal end
        assert "Traceback" not in await term.until(lambda t: False)  # to the end
        assert await term.wait() == 0
    finally:
        term.close()


def test_without_redis_follow_fails_with_one_line(cli, tmp_path):
    out = cli("status", "--follow", extra_env={
        "CANHAZGPU_REDIS_URL": f"unix://{tmp_path}/none.sock"})
    assert out.returncode == 1 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "cannot reach Redis" in out.stderr
