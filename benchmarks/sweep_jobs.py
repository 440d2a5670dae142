"""The issue-19 sweep under faults: N detached jobs (default 300) on 4 fake GPUs, each
appending its id to a file; the agent SIGKILLed twice and Redis (persistent, like the
daemon's embedded one) restarted once while it runs. Checks that every job ran exactly once
and that the queue granted them in submission order, and prints how long it took.

Run: .venv/bin/python benchmarks/sweep_jobs.py [N]   (its own private Redis)
Exit code 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import anyio

from _common import machine
from canhazgpu.config import load
from canhazgpu.core import Core, Request
from canhazgpu.embedded import RedisServer
from canhazgpu.identity import current
from canhazgpu.jobs.files import ENDED, JobDir, job_document, jobs_root


async def until(predicate, what: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await anyio.sleep(0.05)


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def main(n: int) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="canhazgpu-sweep-"))
    (tmp / "gpus.json").write_text(json.dumps({"count": 4, "gpus": []}))
    (tmp / "config.toml").write_text("")
    server = RedisServer(tmp / "redis", persist=True).start()
    os.environ.update({
        "CANHAZGPU_REDIS_URL": server.url, "CANHAZGPU_HOST": "sweep",
        "CANHAZGPU_PROVIDER": "fake", "CANHAZGPU_FAKE_GPUS": str(tmp / "gpus.json"),
        "CANHAZGPU_CONFIG": str(tmp / "config.toml"), "CANHAZGPU_STATE_DIR": str(tmp / "state"),
        "CANHAZGPU_CLIENT": "direct"})
    config = load()
    core = Core(config)
    await core.setup_pool(4, "fake", force=False)
    me = current()
    jobs = JobDir(jobs_root(config))
    order = tmp / "order"
    t0 = time.perf_counter()
    ids = [jobs.create(job_document(["sh", "-c", f"echo {i} >> {order}"],
                                    Request(count=1, kind="job"), user=me.user, uid=me.uid,
                                    host=config.host_name)).id for i in range(1, n + 1)]
    jobs.ensure_agent(config)
    faults = []
    for share, fault in ((0.25, "agent"), (0.5, "redis"), (0.75, "agent")):
        await until(lambda s=share: len(lines(order)) >= s * n, f"{share:.0%} done")
        if fault == "agent":
            os.kill(jobs.agent_pid(), signal.SIGKILL)
            await until(lambda: jobs.agent_pid() is None, "the agent gone")
            jobs.ensure_agent(config)
        else:
            server.stop()
            server = RedisServer(tmp / "redis", persist=True).start()
        faults.append(f"{fault} at {len(lines(order))}")
    await until(lambda: all(j.state in ENDED for j in jobs.all()), "every job to end")
    took = time.perf_counter() - t0
    docs = [j.doc for j in jobs.all()]
    ran = sorted(map(int, lines(order)))
    job_of = {d["rid"]: d["id"] for d in docs}
    granted = [job_of[e["rid"]] for e in await core.store.events_since(0, limit=100000)
               if e["type"] == "granted" and e.get("complete") and e["rid"] in job_of]
    ok = ran == ids and all(d["state"] == "done" for d in docs)
    fifo = granted == ids
    print(f"{n} jobs on 4 GPUs, faults: {', '.join(faults)}: {took:.1f}s; every job ran "
          f"exactly once: {ok}; granted in submission order: {fifo}"
          + ("" if fifo else " (a Redis restart loses the events of its last moment: "
             f"{len(granted)} grants seen)"))
    print(f"machine: {machine()}, load {os.getloadavg()[0]:.1f}")
    agent = jobs.agent_pid()
    if agent:
        os.kill(agent, signal.SIGKILL)
    await core.aclose()
    server.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 300))
