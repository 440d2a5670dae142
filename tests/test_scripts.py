"""The script interface is defined once (store.KEYS, store.ARGS): every script uses exactly
its declared values, only known keys, and no raw ARGV; every script runs."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from canhazgpu import store
from canhazgpu.store import ARGS, KEYS, lua_name, script_source

LUA = resources.files("canhazgpu") / "lua"


def body(name: str) -> str:
    return (LUA / f"{name}.lua").read_text()


def without_comments(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


def test_every_script_file_is_declared_and_every_declared_script_exists():
    files = {p.name[:-4] for p in LUA.iterdir()
             if p.name.endswith(".lua") and not p.name.startswith("_")}
    assert files == set(ARGS)


@pytest.mark.parametrize("name", sorted(ARGS))
def test_a_script_uses_exactly_its_declared_values(name):
    code = without_comments(body(name))
    used = set(re.findall(r"\bARG\.([a-z_]+)", code))
    assert used == set(ARGS[name]), f"{name}.lua uses {sorted(used)}, declared {ARGS[name]}"
    assert "ARGV" not in code, f"{name}.lua reads ARGV by position"


def test_the_library_and_scripts_name_only_declared_keys():
    known = {lua_name(k) for k in KEYS}
    for path in LUA.iterdir():
        if path.name.endswith(".lua"):
            used = set(re.findall(r"\bK_[A-Z_]+\b", without_comments(path.read_text())))
            assert used <= known, f"{path.name}: unknown {sorted(used - known)}"
    assert "ARGV" not in without_comments((LUA / "_lib.lua").read_text())


def test_the_generated_head_matches_the_python_tuples():
    src = script_source("allocate")
    assert f"local LEASE0 = {len(KEYS) + 1}" in src
    for n, key in enumerate(KEYS, 1):
        names, values = re.search(r"local (K_[A-Z_, ]+) = ([0-9, ]+)\n", src).groups()
        assert names.split(", ")[n - 1] == lua_name(key) and values.split(", ")[n - 1] == str(n)
    for n, arg in enumerate(ARGS["allocate"], 3):
        assert f"{arg} = ARGV[{n}]" in src


async def test_run_refuses_values_that_are_not_the_scripts_own(redis_url):
    s = store.Store(redis_url, "t")
    try:
        with pytest.raises(TypeError):
            await s.run("leave", 1, wid="x")  # reason missing
        with pytest.raises(TypeError):
            await s.run("leave", 1, wid="x", reason="r", extra=1)
    finally:
        await s.close()


pytestmark = pytest.mark.anyio


async def test_the_ended_set_is_trimmed_within_64_events(pool, me, rclient):
    """Trimming is done every 64 events, not on every change: an entry older than the
    day kept is gone after at most 64 events."""
    from canhazgpu.core import Request
    key = pool.store.key("ended")
    rclient.zadd(key, {"ancient": 1})  # ended in 1970
    for _ in range(32):  # 64 events: reserved, released
        res = await pool.allocate(Request(count=1, duration_s=60), me)
        await pool.release(me, ids=res.gpus)
    assert rclient.zscore(key, "ancient") is None
    assert rclient.zcard(key) == 32  # the day's releases are kept


async def test_a_hold_not_written_by_cjson_keeps_its_rid(pool, me, rclient):
    """Scripts find a hold's rid by a plain search for cjson's `"rid":"`; a hold written
    with spaces (by another writer) is read by the pattern, not taken for a lapsed one."""
    import json

    from canhazgpu.core import Request
    res = await pool.allocate(Request(ids=(2,), duration_s=600), me)
    key = pool.store.key("holds")
    rclient.hset(key, "2", json.dumps(json.loads(rclient.hget(key, "2"))))  # '": "'
    await pool.allocate(Request(ids=(3,), duration_s=600), me)  # a script that sweeps
    assert (await pool.store.read_state()).holds[2].rid == res.rid
    assert await pool.end(res.rid, me) == [2]
