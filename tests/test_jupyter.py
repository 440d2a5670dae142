"""The Jupyter kernel provisioner (docs/jupyter.md): a real jupyter_client KernelManager
starts a real ipykernel through canhazgpu-provisioner against the test's Redis and daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from jupyter_client.manager import AsyncKernelManager  # noqa: E402

from canhazgpu.core import Request  # noqa: E402
from canhazgpu.errors import NotEnoughGpus, WaitTimedOut  # noqa: E402
from conftest import ROOT  # noqa: E402
from eventtools import Recorder, running_daemon  # noqa: E402
from test_pyapi import tour_blocks  # noqa: E402

pytestmark = pytest.mark.anyio

SLACK = float(os.environ.get("CANHAZGPU_TEST_SLACK", "1"))


@pytest.fixture
def jupyter_env(env, tmp_path, monkeypatch):
    """Jupyter's and canhazgpu's settings, for this process and the CLI: kernelspecs in a
    temporary data directory."""
    jenv = {**env, "JUPYTER_DATA_DIR": str(tmp_path / "jupyter"),
            "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
            "JUPYTER_PLATFORM_DIRS": "1"}
    for key in [k for k in os.environ if k.startswith("CANHAZGPU_")]:
        monkeypatch.delenv(key)
    for key, value in jenv.items():
        if key.startswith(("CANHAZGPU_", "JUPYTER_")):
            monkeypatch.setenv(key, value)
    return jenv


def install(cli, jupyter_env, *args) -> str:
    out = cli("kernelspec", "install", *args, extra_env=jupyter_env, check=0)
    return out.stdout.split()[2]


async def run_code(km, code: str) -> str:
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        out: list[str] = []
        await kc.execute_interactive(
            code, timeout=60,
            output_hook=lambda m: out.append(m["content"].get("text", ""))
            if m["msg_type"] == "stream" else None)
        return "".join(out).strip()
    finally:
        kc.stop_channels()


async def kernel_holds(core) -> dict[int, object]:
    return {g: h for g, h in (await core.store.read_state()).holds.items() if h.kind == "kernel"}


def test_kernelspec_install_and_list(cli, jupyter_env):
    name = install(cli, jupyter_env, "--gpus", "2", "--wait", "10m", "--note", "team a")
    assert name == "python3-2gpu"
    spec = json.loads((Path(jupyter_env["JUPYTER_DATA_DIR"]) / "kernels" / name
                       / "kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (2 GPUs, canhazgpu)"
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "canhazgpu-provisioner",
        "config": {"gpus": 2, "wait": "10m", "note": "team a"}}
    listed = json.loads(cli("kernelspec", "list", "--json", extra_env=jupyter_env,
                            check=0).stdout)
    assert [(r["name"], r["gpus"], r["wait"]) for r in listed] == [(name, 2, "10m")]
    text = cli("kernelspec", "list", extra_env=jupyter_env, check=0).stdout
    assert text.splitlines()[0].split()[:3] == ["NAME", "GPUS", "WAIT"] and name in text
    bad = cli("kernelspec", "install", "--from", "nope", extra_env=jupyter_env, check=2)
    assert bad.stderr.startswith("Error: no kernelspec named 'nope'")
    bad = cli("kernelspec", "install", "--gpus", "0", extra_env=jupyter_env, check=2)
    assert "invalid GPU count" in bad.stderr


@pytest.mark.slow
async def test_a_kernel_holds_its_gpus_for_its_life(pool, config, cli, jupyter_env):
    """Through the daemon: the kernel sees its GPUs, status shows the hold, a restart keeps
    the GPUs, a SIGKILL of the kernel frees them within a second, shutdown frees them."""
    name = install(cli, jupyter_env, "--gpus", "2")
    async with running_daemon(config), Recorder(pool.store).running() as rec:
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel()
        try:
            held = km.provisioner.reservation
            assert held is not None and len(held.ids) == 2
            assert await run_code(km, "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])") \
                == held.cuda_visible_devices
            holds = await kernel_holds(pool)
            assert set(holds) == set(held.ids)
            assert all(km.kernel_id in h.note and h.rid == held.rid for h in holds.values())
            # the kernel's process owns it: the daemon watches the kernel
            assert {h.pid for h in holds.values()} == {km.provisioner.pid}
            shown = json.loads((await cli.run("status", "--json", check=0)).stdout)
            assert {g["reservation"]["type"] for g in shown["gpus"] if g["reservation"]} \
                == {"kernel"}
            info = await km.provisioner.get_provisioner_info()
            assert info["canhazgpu"] == {"rid": held.rid, "gpus": list(held.ids)}

            for now in (True, False):  # killed, or asked to shut down: the same GPUs
                await km.restart_kernel(now=now)
                assert km.provisioner.reservation is held
                assert await run_code(km, "import os; print(os.environ["
                                          "'CUDA_VISIBLE_DEVICES'])") == held.cuda_visible_devices
                holds = await kernel_holds(pool)
                assert {(h.gpu, h.rid, h.pid) for h in holds.values()} == \
                    {(i, held.rid, km.provisioner.pid) for i in held.ids}  # the new kernel

            killed = time.monotonic()
            os.kill(km.provisioner.pid, 9)
            ended = await rec.until(lambda e: e.type in ("reclaimed", "released")
                                    and e.rid == held.rid, timeout=3 * SLACK)
            took = time.monotonic() - killed
            assert sorted(ended.gpus) == sorted(held.ids)
            assert km.provisioner.reservation is None
        finally:
            await km.shutdown_kernel(now=True)
        print(f"kernel SIGKILL -> GPUs back: {took * 1000:.1f} ms")
        assert took <= 1.0 * SLACK

        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel()
        try:
            assert await run_code(km, "print('ready')") == "ready"
            assert len(await kernel_holds(pool)) == 2
        finally:
            await km.shutdown_kernel()
        assert await kernel_holds(pool) == {}


@pytest.mark.slow
async def test_a_kernel_start_queues_until_gpus_come_back(pool, caller, cli, jupyter_env):
    """Direct mode: with the pool full the start waits in the queue and begins once the
    other user releases; a wait that runs out fails with the CLI's one-line reason."""
    bob = caller("bob")
    theirs = await pool.allocate(Request(count=8, duration_s=600), bob)
    short = install(cli, jupyter_env, "--gpus", "1", "--name", "nowait")
    km = AsyncKernelManager(kernel_name=short)
    with pytest.raises(NotEnoughGpus, match="Requested: 1, Available: 0"):
        await km.start_kernel()

    brief = install(cli, jupyter_env, "--gpus", "1", "--wait", "1s", "--name", "brief")
    km = AsyncKernelManager(kernel_name=brief)
    with pytest.raises(WaitTimedOut, match="gave up waiting after 1s; left the queue"):
        await km.start_kernel()
    assert (await pool.queue())[1] == ()

    patient = install(cli, jupyter_env, "--gpus", "1", "--wait", "1m", "--name", "patient")
    km = AsyncKernelManager(kernel_name=patient)
    async with anyio.create_task_group() as tg:
        tg.start_soon(km.start_kernel)
        with anyio.fail_after(30):
            while not (await pool.queue())[1]:
                await anyio.sleep(0.05)  # the start is queued
        await pool.end(theirs.rid, bob)
    try:
        held = km.provisioner.reservation
        assert held is not None
        assert await run_code(km, "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])") \
            == held.cuda_visible_devices
    finally:
        await km.shutdown_kernel(now=True)
    assert await kernel_holds(pool) == {}


@pytest.mark.slow
async def test_the_tour_runs_as_pasted(pool, jupyter_env):
    """docs/jupyter.md's tour: its shell block, then its python block."""
    page = (ROOT / "docs" / "jupyter.md").read_text()
    shell, code = "set -e\n" + "".join(tour_blocks(page, "sh")), "".join(tour_blocks(page))
    env = {**jupyter_env, "PATH": f"{Path(sys.executable).parent}:{jupyter_env['PATH']}"}
    with anyio.fail_after(60):
        out = await anyio.run_process(["bash", "-c", shell], env=env, check=False)
        assert out.returncode == 0, out.stderr.decode()
        assert "gpu-tour" in out.stdout.decode()
        out = await anyio.run_process([sys.executable, "-c", code], env=env, check=False)
    assert out.returncode == 0, out.stderr.decode()
    assert await kernel_holds(pool) == {}


async def test_provisioner_info_carries_the_reservation(pool, cli, jupyter_env):
    """A server that takes over a running kernel (load_provisioner_info) holds its
    reservation from then on: renewed at once, released at the kernel's shutdown."""
    from jupyter_client.provisioning import KernelProvisionerFactory
    name = install(cli, jupyter_env, "--gpus", "2")
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    try:
        held = km.provisioner.reservation
        info = await km.provisioner.get_provisioner_info()
        other = AsyncKernelManager(kernel_name=name)
        taker = KernelProvisionerFactory.instance().create_provisioner_instance(
            km.kernel_id, other.kernel_spec, parent=other)
        await taker.load_provisioner_info(info)
        adopted = taker.reservation
        assert adopted is not held and (adopted.rid, adopted.ids) == (held.rid, held.ids)
        holds = await kernel_holds(pool)
        assert {(h.rid, h.pid) for h in holds.values()} == {(held.rid, km.provisioner.pid)}
        await taker.cleanup(restart=False)  # its shutdown: the GPUs are back
        assert await kernel_holds(pool) == {}
    finally:
        await km.shutdown_kernel(now=True)


def test_kernelspec_without_jupyter_is_one_line(env):
    """The core package does not need Jupyter: the command says which extra brings it."""
    code = ("import sys; sys.modules['jupyter_client'] = None; sys.argv = ['canhazgpu', "
            "'kernelspec', 'list']; from canhazgpu.cli.main import main; main()")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr == "Error: kernelspec needs Jupyter (jupyter_client is missing): pip " \
                         "install 'canhazgpu[jupyter]'\n"
