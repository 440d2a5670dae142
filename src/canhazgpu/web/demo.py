"""`canhazgpu web --demo`: the documents' scenes on fake GPUs, with simulated activity.

A private redis-server in a temporary directory, two hosts of fake GPUs (each with its own
daemon, so usage changes are events), the scenes of the documents staged on them, and a
task that keeps reserving, releasing, queueing and using GPUs without a reservation through
the core, as a team would. Everything goes when the command ends.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio

from ..config import Config
from ..core import Core
from ..daemon import Daemon
from ..embedded import RedisServer
from ..errors import CanHazGpuError
from ..identity import Caller, process_start
from ..request import Request

USERS = ("alice", "bob", "charlie", "dana", "erin")
H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_total_mb": 81559}


def _proc(pid: int, name: str, user: str, mb: int, *cmdline: str) -> dict:
    return {"pid": pid, "name": name, "user": user, "used_memory_mb": mb,
            "cmdline": list(cmdline)}


# The documents' scenes (seeds/000): "Mixed Usage Patterns" on gpu01, "Container-Based" and
# "Multi-GPU Unreserved Usage" on gpu02. Reservations are made at start (see _stage).
SCENES = {
    "gpu01": {"count": 8, "gpus": [
        {"index": 0, **H100, "processes": [_proc(
            31337, "python3", "bob", 8452, "python", "-m", "vllm.entrypoints.openai.api_server",
            "--model", "microsoft/DialoGPT-large")]},
        {"index": 1, **H100, "processes": [_proc(
            22222, "jupyter", "alice", 1069, "vllm", "serve", "teknium/OpenHermes-2.5-Mistral-7B")]},
        {"index": 2, **H100, "memory_used_mb": 45},
    ]},
    "gpu02": {"count": 6, "gpus": [
        {"index": 1, **H100, "memory_used_mb": 3072, "processes": [
            _proc(33333, "dockerd", "root", 1024, "dockerd"),
            _proc(44444, "python3", "alice", 1024, "python3", "serve.py", "--model-id",
                  "codellama/CodeLlama-7b-Instruct-hf"),
            _proc(44445, "python3", "alice", 1024, "python3", "worker.py")]},
        {"index": 4, **H100, "error": "GPU is lost"},
    ]},
}


async def _quietly(func, *args) -> None:
    """Run one simulated user's action; a failure (GPUs short, Redis away) ends only it."""
    try:
        await func(*args)
    except CanHazGpuError:
        pass


def _caller(user: str) -> Caller:
    pid = os.getpid()
    return Caller(user=user, uid=1000 + USERS.index(user), pid=pid, pid_start=process_start(pid),
                  is_admin=False)


class Host:
    """One demo host: its fake GPU file, its core, and the activity on it."""

    def __init__(self, config: Config, name: str, directory: Path) -> None:
        self.name = name
        self.file = directory / f"{name}.json"
        self.scene = json.loads(json.dumps(SCENES[name]))
        self.config = replace(config, host=name, provider="fake", fake_gpus=str(self.file))
        self.core = Core(self.config)
        self.rng = random.Random(name)

    async def write(self) -> None:
        tmp = anyio.Path(f"{self.file}.tmp")
        await tmp.write_text(json.dumps(self.scene))
        await tmp.replace(self.file)  # the scanner never reads half a file

    async def stage(self, tg) -> None:
        scene, self.scene = self.scene, {"count": self.scene["count"], "gpus": []}
        await self.write()  # idle GPUs first: a GPU in use cannot be reserved
        await self.core.setup_pool(scene["count"], "fake", force=True)
        if self.name == "gpu01":  # bob's run on GPU 0, charlie's notebook on GPU 3
            started = anyio.Event()
            tg.start_soon(_quietly, self.hold_run, "bob", (0,), None, 1, started)
            await started.wait()
            await self.core.allocate(Request(ids=(3,), duration_s=8 * 3600, note="notebook"),
                                     _caller("charlie"))
        self.scene = scene
        await self.write()

    async def hold_run(self, user: str, ids: tuple[int, ...] | None, seconds: float | None,
                       count: int = 1, started: anyio.Event | None = None) -> None:
        """A `run` of `user` for `seconds` (None: for ever), heart-beating as `run` does."""
        req = Request(ids=ids, count=None if ids else count, kind="run")
        try:
            res = await self.core.allocate(req, _caller(user))
        finally:
            if started is not None:
                started.set()
        with anyio.move_on_after(seconds if seconds is not None else float("inf")):
            while True:
                await anyio.sleep(self.config.seconds("heartbeat_interval"))
                await self.core.heartbeat(res)
        await self.core.end(res.rid, _caller(user))

    async def queue_for(self, user: str, count: int, hold_s: float) -> None:
        """`wait --gpus N`: queue, keep the place, hold the grant for a while, give it back."""
        req = Request(count=count, kind="manual", duration_s=hold_s)
        res = self.core.new_reservation(req, _caller(user))
        status = await self.core.enqueue(res, req)
        with anyio.move_on_after(120) as patience:
            while not status.done:
                await anyio.sleep(self.config.seconds("queue_lease") / 3)
                status = await self.core.queue_heartbeat(res.rid)
                if status is None:
                    return
        if patience.cancelled_caught:
            await self.core.leave(res.rid, "timeout")
            return
        # granted on the queue's short lease: now the reservation's own duration (as `wait`)
        await self.core.heartbeat(replace(res, gpus=tuple(sorted(status.gpus))))

    async def toggle_unreserved(self) -> None:
        """Someone starts (or stops) using a free GPU without a reservation."""
        spare = [g for g in self.scene["gpus"] if g.get("demo")]
        if spare:
            self.scene["gpus"].remove(spare[0])
        else:
            busy = {g["index"] for g in self.scene["gpus"]}
            free = [i for i in range(self.scene["count"]) if i not in busy]
            if not free:
                return
            user = self.rng.choice(USERS)
            self.scene["gpus"].append({"index": self.rng.choice(free), **H100, "demo": True,
                                       "processes": [_proc(50000 + self.rng.randrange(9999),
                                                           "python3", user, 2048, "python3",
                                                           "train.py")]})
        await self.write()

    async def activity(self, tg) -> None:
        """Something happens every few seconds."""
        while True:
            await anyio.sleep(self.rng.uniform(2, 6))
            roll, user = self.rng.random(), self.rng.choice(USERS)
            try:
                if roll < 0.35:
                    await self.core.allocate(Request(count=1, duration_s=self.rng.uniform(15, 60),
                                                     note=self.rng.choice(("", "debugging"))),
                                             _caller(user))
                elif roll < 0.6:
                    tg.start_soon(_quietly, self.hold_run, user, None,
                                  self.rng.uniform(10, 40), self.rng.choice((1, 2)))
                elif roll < 0.75:
                    tg.start_soon(_quietly, self.queue_for, user, self.scene["count"] // 2,
                                  self.rng.uniform(5, 15))
                else:
                    await self.toggle_unreserved()
            except CanHazGpuError:
                pass  # short of GPUs: that is part of the show


@asynccontextmanager
async def demo(config: Config):
    """Yield (config, host names) of a running demo; stop everything on exit."""
    with tempfile.TemporaryDirectory(prefix="canhazgpu-web-demo-") as tmp:
        directory = Path(tmp)
        server = RedisServer(directory / "redis")
        await anyio.to_thread.run_sync(server.start)
        try:
            base = replace(config, redis_url=server.url, scan_interval="0.5s",
                           state_dir=str(directory / "state"))
            async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
                hosts = [Host(base, name, directory) for name in SCENES]
                for host in hosts:
                    stack.push_async_callback(host.core.aclose)
                    await host.stage(tg)
                    daemon = Daemon(host.config)
                    stack.push_async_callback(daemon.core.aclose)
                    await tg.start(daemon.run)
                    tg.start_soon(host.activity, tg)
                yield base, tuple(h.name for h in hosts)
                tg.cancel_scope.cancel()
        finally:
            # shielded: after SIGTERM this runs in a cancelled scope, where an unshielded
            # await would be cancelled before the server is stopped (left running)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.stop)
