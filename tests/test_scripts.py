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
