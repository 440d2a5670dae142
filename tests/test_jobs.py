"""Detached jobs (docs/jobs.md): submit, the per-user agent, runners, jobs/logs/cancel,
and what survives an agent SIGKILLed mid-sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import anyio
import pytest

from canhazgpu.config import load
from canhazgpu.jobs.files import CAP, ENDED, JobDir, job_document, jobs_root
from canhazgpu.request import Request
from conftest import HOST
from otheruser import as_nobody, needs_root, open_dir  # noqa: F401 (fixture)

pytestmark = pytest.mark.anyio
DEADLINE_S = 60.0


class Jobs:
    """The test's job directory, its agent, and waits with deadlines on the job files."""

    def __init__(self, env: dict) -> None:
        self.env = env
        self.config = load(env=env)
        self.dir = JobDir(jobs_root(self.config))

    def add(self, argv, count: int = 1, **kw) -> int:
        """Submit in-process, as `submit` does (a sweep of CLI starts would be slow)."""
        doc = job_document(argv, Request(count=count, kind="job"), user="me",
                           uid=os.getuid(), host=HOST, env=self.env, **kw)
        return self.dir.create(doc).id

    def start_agent(self) -> None:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        try:
            self.dir.ensure_agent(self.config)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def doc(self, job_id: int) -> dict:
        return self.dir.load(job_id).doc

    async def until(self, predicate, what: str, timeout: float = DEADLINE_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = predicate()
            if got:
                return got
            await anyio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; {await self.describe()}")

    async def describe(self) -> str:
        """What the job files, Redis and the agent's log say (for a failure's message)."""
        from canhazgpu.core import Core
        jobs = self.dir.all()
        of = {j.doc.get("rid"): j.id for j in jobs}
        core = Core(self.config)
        try:
            state = await core.store.read_state()
        finally:
            await core.aclose()
        holds = [(h.gpu, of.get(h.rid, h.rid), h.waiting) for h in state.holds.values()]
        queue = [(of.get(w.wid, w.wid), w.granted) for w in state.queue]
        try:
            log = (self.dir.root / "agent.log").read_text()[-2000:]
        except OSError:
            log = ""
        return (f"jobs {' '.join(f'{j.id}:{j.state}' for j in jobs)}; holds {holds}; "
                f"queue {queue}; agent log: {log}")

    async def ended(self, *ids: int, timeout: float = DEADLINE_S) -> list[dict]:
        await self.until(lambda: all(self.doc(i).get("state") in ENDED for i in ids),
                         f"jobs {ids} to end", timeout)
        return [self.doc(i) for i in ids]

    def kill_all(self) -> None:
        """The agent, and every running job: SIGTERM to its runner, which stops the
        command's process group and gives the GPUs back (SIGKILL if it takes too long)."""
        pid = self.dir.agent_pid()
        if pid:
            _kill(pid)
        live = [j for j in self.dir.all() if j.runner_alive() and j.doc.get("runner_pid")]
        for job in live:
            _kill(int(job.doc["runner_pid"]), signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(j.runner_alive() for j in live) and time.monotonic() < deadline:
            time.sleep(0.05)  # (teardown: waiting on the runners' locks, with a deadline)
        for job in live:
            if job.runner_alive():
                _kill(-int(job.doc["runner_pid"]))


def _kill(pid: int, signum: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass


@pytest.fixture
async def jobs(env, core, fake_gpus):
    fake_gpus.write(count=4)
    await core.setup_pool(4, "fake", force=False)
    j = Jobs({**env, "CANHAZGPU_CLIENT": "direct"})
    yield j
    j.kill_all()


def lines_of(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# ---------------------------------------------------------------- the whole path
async def test_submit_runs_as_submitted(jobs, cli, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "out.txt"
    script = f'echo "$PWD $FOO $CUDA_VISIBLE_DEVICES $(umask)" > {out}; echo hello; echo err >&2'
    proc = await anyio.run_process(
        [*cli.argv("submit", "--gpus", "2", "--name", "first", "--", "sh", "-c", script)],
        env={**jobs.env, "FOO": "bar"}, cwd=work, check=False)
    assert proc.returncode == 0, proc.stderr
    job_id = int(proc.stdout.decode().strip())
    (doc,) = await jobs.ended(job_id)
    assert doc["state"] == "done" and doc["exit_code"] == 0, doc
    pwd, foo, gpus, umask = out.read_text().split()
    mine = os.umask(0)
    os.umask(mine)
    assert (pwd, foo, umask) == (str(work), "bar", f"{mine:04o}")
    assert len(gpus.split(",")) == 2
    logs = cli("logs", job_id, check=0)
    assert logs.stdout.split() == ["hello", "err"]
    listed = json.loads(cli("jobs", "--json", check=0).stdout)
    assert [(r["id"], r["name"], r["state"], r["exit_code"]) for r in listed] == \
        [(job_id, "first", "done", 0)]
    kinds = [e["type"] for e in await _events(jobs)]
    assert kinds.count("job_submitted") == kinds.count("job_started") == \
        kinds.count("job_ended") == 1


async def _events(jobs) -> list[dict]:
    from canhazgpu.core import Core
    core = Core(jobs.config)
    try:
        return await core.store.events_since(0)
    finally:
        await core.aclose()


async def test_running_job_in_status_then_cancel(jobs, cli, tmp_path):
    started = tmp_path / "started"
    long_id = jobs.add(["sh", "-c", f"touch {started}; exec sleep 60"], count=4, name="big")
    queued_id = jobs.add(["true"], count=1)
    jobs.start_agent()
    await jobs.until(started.exists, "the job to start")
    status = cli("status", "--format", "lines", check=0).stdout
    assert status.count("(job big, last heartbeat") == 4, status
    queue = json.loads(cli("queue", "--json", check=0).stdout)
    assert [r["type"] for r in queue] == ["job"]

    out = cli("cancel", queued_id, check=0).stdout
    assert f"job {queued_id} cancelled" in out
    assert json.loads(cli("queue", "--json", check=0).stdout) == []

    out = cli("cancel", long_id, check=0).stdout
    assert f"job {long_id} cancelled (exit 143)" in out
    status = cli("status", "--format", "lines", check=0).stdout
    assert status.count("AVAILABLE") == 4, status
    again = cli("cancel", long_id, check=0).stdout
    assert "already cancelled" in again


# ---------------------------------------------------------------- the sweep
async def test_sweep_runs_every_job_once_in_fifo_order(jobs, core, caller, tmp_path):
    """60 jobs on 4 GPUs, and another user's `wait` queued between the 30th and the 31st:
    every job runs once, and the one queue grants in arrival order (bob's turn included)."""
    order = tmp_path / "order"
    first = [jobs.add(["sh", "-c", f"echo {n} >> {order}"]) for n in range(1, 31)]
    jobs.start_agent()
    await jobs.until(lambda: all(jobs.doc(i).get("rid") for i in first), "30 jobs queued")
    bob = caller("bob")

    async def bobs_wait():
        res = await core.acquire(Request(count=1, kind="run"), bob, float("inf"),
                                 signals=False)
        await core.end(res.rid, bob)

    async with anyio.create_task_group() as tg:
        tg.start_soon(bobs_wait)
        await _queued_for(core, "bob")
        rest = [jobs.add(["sh", "-c", f"echo {n} >> {order}"]) for n in range(31, 61)]
        jobs.dir.wake_agent()
        docs = await jobs.ended(*first, *rest)
    assert all(d["state"] == "done" for d in docs)
    assert sorted(map(int, lines_of(order))) == first + rest  # each exactly once
    job_of = {d["rid"]: d["id"] for d in docs}
    granted = [job_of.get(e["rid"], e["user"]) for e in await _events(jobs)
               if e["type"] == "granted" and e.get("complete")]
    assert granted == [*first, "bob", *rest], "the queue granted out of arrival order"


async def _queued_for(core, user: str) -> None:
    with anyio.fail_after(DEADLINE_S):
        while True:
            _, waiters = await core.queue()
            if any(w.user == user for w in waiters):
                return
            holds = (await core.store.read_state()).holds.values()
            if any(h.user == user for h in holds):
                return  # granted already
            await anyio.sleep(0.02)


async def test_agent_killed_mid_sweep_loses_nothing_runs_nothing_twice(jobs, tmp_path):
    order = tmp_path / "order"
    ids = [jobs.add(["sh", "-c", f"sleep 0.2; echo {n} >> {order}"]) for n in range(1, 31)]
    jobs.start_agent()
    for done in (5, 15):
        await jobs.until(lambda d=done: len(lines_of(order)) >= d, f"{done} jobs done")
        pid = jobs.dir.agent_pid()
        assert pid
        os.kill(pid, signal.SIGKILL)
        await jobs.until(lambda: jobs.dir.agent_pid() is None, "the agent gone")
        jobs.start_agent()  # what the next submit or `canhazgpu jobs` does
    docs = await jobs.ended(*ids)
    assert [d["state"] for d in docs] == ["done"] * 30, [
        (d["id"], d["state"], d.get("exit_code"), d.get("reason")) for d in docs
        if d["state"] != "done"] + [await jobs.describe()]
    assert sorted(map(int, lines_of(order))) == ids


# ---------------------------------------------------------------- dependencies
async def test_after_chain_and_failed_dependency(jobs, cli, tmp_path):
    order = tmp_path / "order"
    first = jobs.add(["sh", "-c", f"sleep 0.3; echo first >> {order}"])
    second = int(cli("submit", "--after", first, "--", "sh", "-c",
                     f"echo second >> {order}", check=0).stdout)
    bad = int(cli("submit", "--", "sh", "-c", "exit 3", check=0).stdout)
    blocked = int(cli("submit", "--after", f"{second},{bad}", "--", "sh", "-c",
                      f"echo never >> {order}", check=0).stdout)
    docs = await jobs.ended(first, second, bad, blocked)
    assert [d["state"] for d in docs] == ["done", "done", "failed", "cancelled"]
    assert docs[2]["exit_code"] == 3
    assert docs[3]["reason"] == f"dependency {bad} failed (exit 3)"
    assert lines_of(order) == ["first", "second"]


async def test_bad_submissions(jobs, cli):
    assert "submit needs a command" in cli("submit", "--gpus", "1", check=2).stderr
    assert "no job 99" in cli("submit", "--after", "99", "--", "true", check=1).stderr
    assert "control character" in cli("submit", "--name", "a\x1bb", "--", "true",
                                      check=2).stderr
    assert "invalid GPU count" in cli("submit", "--gpus", "5", "--", "true", check=2).stderr
    assert "no job 7" in cli("logs", "7", check=1).stderr
    assert "invalid job id" in cli("cancel", "x", check=2).stderr
    assert jobs.dir.ids() == []


# ---------------------------------------------------------------- logs
async def test_logs_of_a_job_printing_10mb_are_capped(jobs, cli):
    code = ("import sys\nfor i in range(100000): sys.stdout.write(f'{i:09d}' + 'x' * 90 + '\\n')")
    job_id = jobs.add([sys.executable, "-c", code])
    jobs.start_agent()
    (doc,) = await jobs.ended(job_id)
    assert doc["state"] == "done", doc
    kept = sum(p.stat().st_size for p in jobs.dir.load(job_id).path.glob("output.log*"))
    assert CAP // 2 <= kept <= CAP
    out = cli("logs", job_id, check=0)
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("000099999x") and len(out.stdout) == kept
    assert all(len(x) == 99 for x in lines[1:])
    assert "earlier output was dropped" in out.stderr


async def test_logs_follow_until_the_job_ends(jobs, cli):
    job_id = jobs.add(["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.2; done"])
    jobs.start_agent()
    await jobs.until(lambda: jobs.doc(job_id).get("state") == "running", "the job running")
    out = await cli.run("logs", job_id, "-f", check=0)
    assert out.stdout.split() == ["line1", "line2", "line3"]


# ---------------------------------------------------------------- privacy
@needs_root
async def test_another_user_cannot_read_or_cancel_a_job(jobs, open_dir, tmp_path):
    state = open_dir / tmp_path.name
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    ours = Jobs({**jobs.env, "CANHAZGPU_STATE_DIR": str(state)})
    started = tmp_path / "started"
    try:
        job_id = ours.add(["sh", "-c", f"echo secret; touch {started}; exec sleep 60"])
        ours.start_agent()
        await ours.until(started.exists, "the job to start")
        (open_dir / "config.toml").write_text("")
        (open_dir / "config.toml").chmod(0o644)
        env = {**ours.env, "CANHAZGPU_CONFIG": str(open_dir / "config.toml"),
               "HOME": str(open_dir)}
        for args in (("logs", job_id), ("cancel", job_id), ("jobs",)):
            proc = as_nobody(*args, env=env)
            assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
            assert "private to their owner" in proc.stderr and "secret" not in proc.stdout
        assert ours.doc(job_id)["state"] == "running"
    finally:
        ours.kill_all()


# ---------------------------------------------------------------- limits and reboots
async def test_timeout_stops_a_job(jobs, cli):
    job_id = int(cli("submit", "--timeout", "1s", "--", "sleep", "60", check=0).stdout)
    (doc,) = await jobs.ended(job_id)
    assert (doc["state"], doc["exit_code"]) == ("failed", 143)
    assert "time limit reached" in cli("logs", job_id, check=0).stdout


async def test_after_a_reboot_jobs_restarts_the_agent_and_the_jobs_queue_again(
        jobs, cli, core, caller, tmp_path):
    hold = await core.allocate(Request(count=4, kind="manual", duration_s=600), caller())
    order = tmp_path / "order"
    ids = [jobs.add(["sh", "-c", f"echo {n} >> {order}"]) for n in (1, 2, 3)]
    jobs.start_agent()
    await jobs.until(lambda: all(jobs.doc(i).get("rid") for i in ids), "the jobs queued")
    os.kill(jobs.dir.agent_pid(), signal.SIGKILL)  # the machine goes down...
    await jobs.until(lambda: jobs.dir.agent_pid() is None, "the agent gone")
    for i in ids:  # ...for longer than the queue lease: the places are gone
        await core.leave(jobs.doc(i)["rid"], "expired")
    listed = cli("jobs", check=0)
    assert "started your job agent" in listed.stderr
    await core.end(hold.rid, caller())
    docs = await jobs.ended(*ids)
    assert [d["state"] for d in docs] == ["done"] * 3
    assert sorted(lines_of(order)) == ["1", "2", "3"]
    job_of = {d["rid"]: d["id"] for d in docs}  # queued again in submission order
    assert [job_of[e["rid"]] for e in await _events(jobs) if e["type"] == "granted"
            and e["rid"] in job_of] == ids


async def test_a_sweep_survives_a_redis_restart(env, tmp_path):
    """Redis (persistent, like the daemon's embedded one) stopped and started mid-sweep:
    every job still runs, once."""
    from canhazgpu.core import Core
    from canhazgpu.embedded import RedisServer
    server = RedisServer(tmp_path / "redis", persist=True).start()
    j = Jobs({**env, "CANHAZGPU_REDIS_URL": server.url, "CANHAZGPU_CLIENT": "direct"})
    core = Core(j.config)
    try:
        await core.setup_pool(4, "fake", force=False)
        order = tmp_path / "order"
        ids = [j.add(["sh", "-c", f"sleep 0.2; echo {n} >> {order}"]) for n in range(1, 21)]
        j.start_agent()
        await j.until(lambda: len(lines_of(order)) >= 4, "4 jobs done")
        server.stop()
        server = RedisServer(tmp_path / "redis", persist=True).start()
        docs = await j.ended(*ids)
        assert [d["state"] for d in docs] == ["done"] * 20, [d.get("reason") for d in docs]
        assert sorted(map(int, lines_of(order))) == ids
    finally:
        j.kill_all()
        await core.aclose()
        server.stop()


async def test_completion_offers_job_ids(jobs, cli):
    done = jobs.add(["true"])
    jobs.dir.load(done).ended("done", "", 0)
    queued = jobs.add(["true"], name="sweep")

    def complete(words: str, cword: int) -> list[str]:
        out = cli(extra_env={"_CANHAZGPU_COMPLETE": "bash_complete", "COMP_WORDS": words,
                             "COMP_CWORD": str(cword)}, check=0).stdout
        return [line.split(",", 1)[1] for line in out.splitlines()]

    assert complete("canhazgpu logs ", 2) == [str(done), str(queued)]
    assert complete("canhazgpu cancel ", 2) == [str(queued)]  # only what can be cancelled
    assert "submit" in complete("canhazgpu su", 1)


# ---------------------------------------------------------------- beside a daemon
async def test_jobs_beside_a_running_daemon(jobs, cli, tmp_path):
    """A daemon serves the host (the CLI goes through its API): submit checks the request
    through it, the job is queued and run as in direct mode, and status shows it."""
    from canhazgpu.api.client import answering
    daemon = cli.popen("serve", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await jobs.until(lambda: answering(jobs.config) is not None, "the daemon")
    through = {"CANHAZGPU_CLIENT": "daemon"}
    started = tmp_path / "started"
    try:
        job_id = int(cli("submit", "--gpus", "3", "--name", "viaapi", "--", "sh", "-c",
                         f"touch {started}; exec sleep 60", extra_env=through,
                         check=0).stdout)
        await jobs.until(started.exists, "the job to start")
        status = cli("status", "--format", "lines", extra_env=through, check=0).stdout
        assert status.count("(job viaapi, last heartbeat") == 3, status
        assert "cancelled (exit 143)" in cli("cancel", job_id, extra_env=through,
                                             check=0).stdout
        await jobs.until(lambda: "job viaapi" not in cli("status", "--format", "lines",
                                                         extra_env=through).stdout,
                         "the GPUs given back")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


async def test_cancel_as_the_job_starts(jobs, cli, tmp_path):
    """A cancel that lands while the runner is still starting the command stops it too."""
    done = tmp_path / "done"
    job_id = jobs.add(["sh", "-c", f"sleep 30; touch {done}"])
    jobs.start_agent()
    await jobs.until(lambda: jobs.doc(job_id).get("state") == "running", "the job running",
                     timeout=DEADLINE_S)
    out = (await cli.run("cancel", job_id, check=0)).stdout
    assert f"job {job_id} cancelled" in out
    assert not done.exists()
