"""The Python API (docs/python.md) against the test's Redis: in this process (direct mode),
and in child programs, through a daemon or not (SIGKILL, Ctrl+C while queued, FIFO)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import anyio
import pytest

import canhazgpu
from canhazgpu import pyapi
from canhazgpu.core import Request
from conftest import ROOT
from eventtools import Lines, Recorder, reap, running_daemon

pytestmark = pytest.mark.anyio

SLACK = float(os.environ.get("CANHAZGPU_TEST_SLACK", "1"))


@pytest.fixture
def api(env, monkeypatch):
    """This process's environment as the test's (the API reads it like the CLI does)."""
    for key in [k for k in os.environ if k.startswith("CANHAZGPU_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("CANHAZGPU_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "before")
    return env


async def holds(core) -> dict[int, object]:
    return (await core.store.read_state()).holds


async def test_a_with_block_holds_gpus_sets_the_env_and_releases(pool, api):
    with canhazgpu.gpus(2, note="training") as g:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == g.cuda_visible_devices
        assert len(g.ids) == 2 and g.cuda_visible_devices == ",".join(map(str, g.ids))
        held = await holds(pool)
        assert set(held) == set(g.ids)
        assert {(h.kind, h.pid, h.note, h.rid) for h in held.values()} == \
            {("python", os.getpid(), f"{pyapi._labelled('')}: training", g.rid)}
        doc = canhazgpu.status()  # the `status --json` document
        shown = [x["reservation"] for x in doc["gpus"] if x["reservation"]]
        assert [r["type"] for r in shown] == ["python", "python"]
    assert await holds(pool) == {}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "before"
    assert g.released and "released" in repr(g)


async def test_an_exception_or_ctrl_c_in_the_block_releases(pool, api):
    with pytest.raises(ValueError):
        with canhazgpu.gpus(1):
            raise ValueError("boom")
    assert await holds(pool) == {}
    with pytest.raises(KeyboardInterrupt):
        with canhazgpu.gpus(3):
            assert len(await holds(pool)) == 3
            raise KeyboardInterrupt
    assert await holds(pool) == {}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "before"


async def test_nested_blocks_get_their_own_gpus_and_env(pool, api):
    with canhazgpu.gpus(2) as outer:
        with canhazgpu.gpus(1) as inner:
            assert not set(inner.ids) & set(outer.ids)
            assert os.environ["CUDA_VISIBLE_DEVICES"] == inner.cuda_visible_devices
            assert len(await holds(pool)) == 3
        assert os.environ["CUDA_VISIBLE_DEVICES"] == outer.cuda_visible_devices
        assert set(await holds(pool)) == set(outer.ids)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "before"


async def test_async_with(pool, api):
    async with canhazgpu.gpus(gpu_ids=[5, 6]) as g:
        assert g.ids == (5, 6)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,6"
        assert set(await holds(pool)) == {5, 6}
    assert await holds(pool) == {}
    async with canhazgpu.gpus(1) as g:
        g.release()  # early, inside the block
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "before"
    assert await holds(pool) == {}
    with pytest.raises(canhazgpu.NotEnoughGpus):
        async with canhazgpu.gpus(8):
            async with canhazgpu.gpus(1):
                pass
    assert await holds(pool) == {}


async def test_errors_are_the_cli_errors(pool, api, me):
    await pool.allocate(Request(ids=(0, 1, 2, 3, 4, 5, 6), duration_s=600), me)
    with pytest.raises(canhazgpu.NotEnoughGpus, match="Requested: 2, Available: 1"):
        canhazgpu.reserve(2)
    with pytest.raises(canhazgpu.GpusUnavailable):
        canhazgpu.reserve(gpu_ids=[0])
    with pytest.raises(canhazgpu.InvalidRequest, match="invalid GPU count 9"):
        canhazgpu.reserve(9)
    with pytest.raises(canhazgpu.InvalidRequest, match="invalid wait"):
        canhazgpu.reserve(1, wait="soon")
    with pytest.raises(canhazgpu.WaitTimedOut):
        canhazgpu.reserve(2, wait=0.5)
    assert (await pool.queue())[1] == ()  # the place was given back
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "before"


async def test_reserve_and_release(pool, api):
    res = canhazgpu.reserve(1, note="notebook")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == res.cuda_visible_devices
    assert set(await holds(pool)) == set(res.ids)
    res.release()
    res.release()  # idempotent
    assert await holds(pool) == {}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "before"


async def test_min_free_memory_picks_roomy_gpus(pool, api, fake_gpus):
    fake_gpus.write([{"index": i, "name": "Fake", "memory_total_mb": 80000,
                      "memory_used_mb": 70000 if i != 3 else 100, "processes": []}
                     for i in range(8)])
    with canhazgpu.gpus(1, min_free_memory_mb=20000) as g:
        assert g.ids == (3,)
    with pytest.raises(canhazgpu.NotEnoughGpus):
        canhazgpu.reserve(2, min_free_memory_mb=20000)


async def test_importing_torch_first_warns_once(pool, api, monkeypatch):
    from canhazgpu import pyapi
    monkeypatch.setattr(pyapi, "_warned_frameworks", False)
    monkeypatch.setitem(sys.modules, "torch", object())
    with pytest.warns(RuntimeWarning, match="torch was imported before"):
        with canhazgpu.gpus(1):
            pass
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with canhazgpu.gpus(1):
            pass


def test_the_cli_does_not_load_the_api():
    code = "import sys, canhazgpu.cli.main; print('canhazgpu.pyapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------- child programs
HOLDER = """
import sys, canhazgpu
wait = None if sys.argv[2] == "-" else sys.argv[2]
with canhazgpu.gpus(int(sys.argv[1]), wait=wait) as g:
    print("got", g.rid, g.cuda_visible_devices, flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


async def holder(env, count: int, wait: str = "-", daemon: bool = True):
    return await anyio.open_process(
        [sys.executable, "-c", HOLDER, str(count), wait],
        env={**env, "CANHAZGPU_CLIENT": "daemon" if daemon else "direct"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("daemon", [True, False], ids=["daemon", "direct"])
async def test_sigkill_inside_the_block_frees_the_gpus(pool, config, env, daemon):
    """Through the daemon: reclaimed within a second (it watches the program's pid).
    Direct with a daemon on the host: the same watcher. Its lease is the last resort."""
    async with running_daemon(config), Recorder(pool.store).running() as rec:
        proc = await holder(env, 2, daemon=daemon)
        try:
            got = await Lines(proc.stdout).next(timeout=30)
            rid = got.split()[1]
            state = await pool.store.read_state()
            assert {(h.pid, h.kind) for h in state.holds.values()} == {(proc.pid, "python")}
            killed = time.monotonic()
            proc.kill()
            ended = await rec.until(lambda e: e.type == "reclaimed" and e.rid == rid,
                                    timeout=3 * SLACK)
            took = time.monotonic() - killed
        finally:
            await reap(proc)
    assert len(ended.gpus) == 2 and await holds(pool) == {}
    print(f"python SIGKILL -> GPUs back: {took * 1000:.1f} ms")
    assert took <= 1.0 * SLACK


async def test_sigkill_without_a_daemon_frees_them_after_one_lease(pool, env):
    lease_env = {**env, "CANHAZGPU_RUN_LEASE": "1s", "CANHAZGPU_HEARTBEAT_INTERVAL": "0.2s"}
    proc = await holder(lease_env, 2, daemon=False)
    try:
        await Lines(proc.stdout).next(timeout=30)
        assert len(await holds(pool)) == 2
        proc.kill()
    finally:
        await reap(proc)
    with anyio.fail_after(5 * SLACK):
        while await holds(pool):  # a lapsed lease is over for every reader at once
            await anyio.sleep(0.05)


async def test_ctrl_c_while_queued_leaves_the_queue(pool, config, env, me):
    await pool.allocate(Request(count=8, duration_s=600), me)
    async with running_daemon(config), Recorder(pool.store).running() as rec:
        proc = await holder(env, 1, wait="5m")
        try:
            queued = await rec.until(lambda e: e.type == "queued", timeout=30)
            proc.send_signal(signal.SIGINT)
            left = await rec.until(lambda e: e.type == "left", timeout=5)
            with anyio.fail_after(10):
                code = await proc.wait()
            err = (await proc.stderr.receive()).decode()
        finally:
            await reap(proc)
    assert left.rid == queued.rid and (await pool.queue())[1] == ()
    assert code != 0 and "KeyboardInterrupt" in err


async def test_two_programs_queue_first_come_first_served(pool, config, env, me):
    mine = await pool.allocate(Request(count=8, duration_s=600), me)
    async with running_daemon(config), Recorder(pool.store).running() as rec:
        first = await holder(env, 8, wait="1m")
        second = None
        try:
            await rec.until(lambda e: e.type == "queued", timeout=30)
            second = await holder(env, 8, wait="1m")
            await rec.until(lambda e: e.type == "queued", timeout=30)
            await pool.end(mine.rid, me)
            assert (await Lines(first.stdout).next(timeout=10)).startswith("got ")
            assert len((await pool.queue())[1]) == 1  # the second still waits
            await first.stdin.send(b"\n")
            assert (await Lines(second.stdout).next(timeout=10)).startswith("got ")
            await second.stdin.send(b"\n")
            with anyio.fail_after(10):
                assert await second.wait() == 0
        finally:
            await reap(first, *([second] if second else []))
    assert await holds(pool) == {}


# ---------------------------------------------------------------------- the tour
def tour_blocks(text: str, lang: str = "python") -> list[str]:
    """The code blocks of a page in `lang`, in order."""
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


async def test_the_tour_runs_as_pasted(pool, env):
    """docs/python.md's tour, every python block in order in one program."""
    code = "\n".join(tour_blocks((ROOT / "docs" / "python.md").read_text()))
    assert "canhazgpu.gpus(" in code
    with anyio.fail_after(60):
        out = await anyio.run_process([sys.executable, "-c", code], env=env, check=False)
    assert out.returncode == 0, out.stderr.decode()
    assert await holds(pool) == {}


@pytest.mark.parametrize("daemon", [True, False], ids=["daemon", "direct"])
async def test_a_reservation_moves_to_another_process_of_its_user(pool, config, api, daemon,
                                                                  monkeypatch):
    """What a Jupyter kernel's reservation does: owned by the kernel's process once it runs
    (event `owner`), so the daemon reclaims it when that process dies, not when we do."""
    monkeypatch.setenv("CANHAZGPU_CLIENT", "daemon" if daemon else "direct")
    async with running_daemon(config), Recorder(pool.store).running() as rec:
        kernel = await anyio.open_process(["sleep", "60"])
        try:
            async with canhazgpu.gpus(2) as g:
                await g._lease.move_to(kernel.pid)
                moved = await rec.until(lambda e: e.type == "owner", timeout=5)
                assert moved.rid == g.rid and moved.data["pid"] == kernel.pid
                assert {h.pid for h in (await holds(pool)).values()} == {kernel.pid}
                await g._lease.move_to(os.getpid())  # and back: the kernel may end now
                await rec.until(lambda e: e.type == "owner", timeout=5)
                await g._lease.move_to(kernel.pid)
                kernel.kill()
                ended = await rec.until(lambda e: e.type == "reclaimed", timeout=3 * SLACK)
                assert ended.rid == g.rid and await holds(pool) == {}
        finally:
            await reap(kernel)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as nobody")
async def test_a_reservation_moves_only_to_its_own_users_process(pool, config, api,
                                                                 monkeypatch):
    monkeypatch.setenv("CANHAZGPU_CLIENT", "daemon")
    async with running_daemon(config):
        theirs = await anyio.open_process(["setpriv", "--reuid", "65534", "--regid", "65534",
                                           "--clear-groups", "sleep", "60"])
        try:
            async with canhazgpu.gpus(1) as g:
                with pytest.raises(canhazgpu.NotOwner, match=f"process {theirs.pid} is not"):
                    await g._lease.move_to(theirs.pid)
                assert {h.pid for h in (await holds(pool)).values()} == {os.getpid()}
        finally:
            await reap(theirs)


FORKER = """
import os, sys, canhazgpu
with canhazgpu.gpus(1) as g:
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # through atexit: must neither hang nor release the parent's GPUs
    os.waitpid(pid, 0)
    print(len(canhazgpu.status()["gpus"][g.ids[0]]["reservation"] or {}) > 0, flush=True)
"""


async def test_a_forked_child_leaves_the_parents_gpus_alone(pool, env):
    with anyio.fail_after(30):
        out = await anyio.run_process([sys.executable, "-c", FORKER], env=env, check=False)
    assert (out.returncode, out.stdout.decode().strip()) == (0, "True"), out.stderr.decode()
    assert await holds(pool) == {}
