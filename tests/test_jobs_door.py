"""Detached jobs through the daemon (issue 19 in daemon mode): on the secured host of
docs/security.md (the daemon's embedded Redis private to it), another uid submits jobs,
lists them, reads their logs and cancels them; the jobs run as that uid, and their events
are published by the daemon for that uid only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import time

import anyio
import pytest

from canhazgpu.api.client import RemoteCore
from canhazgpu.config import load
from canhazgpu.jobs.files import JobDir
from eventtools import Lines, reap, stop
from otheruser import NOBODY
from otheruser import needs_root, open_dir  # noqa: F401 (fixture)

pytestmark = [pytest.mark.anyio, needs_root]
DEADLINE_S = 60.0
AS_NOBODY = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]


@pytest.fixture(scope="module")
def nobody_python(open_dir) -> str:
    """A Python that nobody's own processes can start (the agent starts runners with its
    sys.executable): ours, or, where ours lies under a directory nobody may not search (a
    pyenv under /root, which only the first exec by setpriv gets through), a venv of the
    system's Python of the same version that reads our packages."""
    probe = subprocess.run([*AS_NOBODY, sys.executable, "-c",
                            "import subprocess, sys; subprocess.run([sys.executable, '-c', ''])"],
                           capture_output=True, timeout=60)
    if probe.returncode == 0:
        return sys.executable
    system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}",
                          path="/usr/bin:/usr/local/bin")
    if system is None:
        pytest.skip(f"uid {NOBODY}'s processes cannot start {sys.executable}")
    venv = open_dir / "venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    ours = site.getsitepackages()[0]
    (next(venv.glob("lib/python*/site-packages")) / "ours.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n")
    return str(venv / "bin" / "python")


async def run_as_nobody(python: str, env: dict, *args: str, check: int | None = None):
    """`canhazgpu ARGS` as uid 65534: (code, out, err)."""
    proc = await anyio.run_process([*AS_NOBODY, python, "-m", "canhazgpu", *args], env=env,
                                   check=False)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    if check is not None:
        assert proc.returncode == check, (args, proc.returncode, out, err)
    return proc.returncode, out, err


async def until(predicate, what: str, timeout: float = DEADLINE_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await predicate()
        if got:
            return got
        await anyio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(pid, signum=signal.SIGKILL) -> None:
    try:
        os.kill(pid, signum)
    except (OSError, TypeError):
        pass


class Secured:
    """A host as docs/security.md sets it up: `serve --embedded-redis` as root (its Redis
    private to it), and nobody, with a home of its own, who reaches the pool through the
    daemon's API only."""

    def __init__(self, python: str, serve: list[str], own: dict, home, nobody: dict,
                 jobs: JobDir) -> None:
        self.python, self.serve, self.own, self.home, self.env, self.jobs = \
            python, serve, own, home, nobody, jobs
        root = load(env=own)
        self.remote = RemoteCore(root, str(root.api_path))
        self.daemon = None

    async def start(self) -> None:
        self.daemon = await anyio.open_process(self.serve, env=self.own)
        await Lines(self.daemon.stderr).until(lambda line: "serving host" in line, timeout=30)

    async def stop(self) -> None:
        if self.daemon is not None:
            await stop(self.daemon)
            await reap(self.daemon)
            self.daemon = None

    async def run(self, *args: str, check: int | None = 0, **extra):
        return await run_as_nobody(self.python, {**self.env, **extra}, *args, check=check)

    async def jobs_doc(self) -> dict:
        _, text, _ = await self.run("jobs", "--all", "--json")
        return {row["id"]: row for row in json.loads(text)}

    async def submit(self, *args: str) -> int:
        return int((await self.run("submit", *args))[1])


@pytest.fixture
async def secured(cli, env, open_dir, nobody_python, tmp_path):
    state = open_dir / f"state-{tmp_path.name}"
    own = {k: v for k, v in env.items() if k not in ("CANHAZGPU_REDIS_URL",
                                                     "CANHAZGPU_FAKE_GPUS")}
    own.update(CANHAZGPU_STATE_DIR=str(state),
               CANHAZGPU_API_SOCKET=str(open_dir / f"{tmp_path.name}.sock"))
    (open_dir / "jobs.toml").write_text("")
    (open_dir / "jobs.toml").chmod(0o644)
    own["CANHAZGPU_CONFIG"] = str(open_dir / "jobs.toml")
    home = open_dir / f"home-{tmp_path.name}"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    nobody = {k: v for k, v in own.items() if k != "CANHAZGPU_STATE_DIR"}
    nobody.update(HOME=str(home), CANHAZGPU_CLIENT="auto")
    jobs = JobDir(home / ".local/state/canhazgpu/jobs" / env["CANHAZGPU_HOST"])
    host = Secured(nobody_python, cli.argv("serve", "--embedded-redis", "--fake", "2"), own,
                   home, nobody, jobs)
    try:
        await host.start()
        yield host
    finally:
        _kill(jobs.agent_pid())
        for job in jobs.all():
            if job.runner_alive():
                _kill(int(job.doc.get("runner_pid", 0)), signal.SIGTERM)
        await until(_no_runner(jobs), "nobody's runners to stop", 20)
        await host.stop()


def _no_runner(jobs: JobDir):
    async def check():
        return not any(job.runner_alive() for job in jobs.all())
    return check


async def test_another_uid_submits_lists_reads_and_cancels_through_the_daemon(secured):
    remote, out = secured.remote, secured.home / "ran.txt"
    # nobody cannot reach the daemon's Redis: only its API
    code, _, err = await secured.run("status", check=None, CANHAZGPU_CLIENT="direct")
    assert code == 1 and "Traceback" not in err
    jobs = secured.jobs_doc

    # three jobs of nobody's: each appends its uid and its id; they run as nobody
    ids = [await secured.submit("--gpus", "1", "--name", f"j{n}", "--", "sh", "-c",
                                f"echo $(id -u) {n} $CUDA_VISIBLE_DEVICES >> {out}; "
                                f"echo hello {n}") for n in range(3)]

    async def all_done():
        found = await jobs()
        return all(found[i]["state"] == "done" for i in ids) and found
    found = await until(all_done, "nobody's three jobs to end")
    assert [found[i]["exit_code"] for i in ids] == [0, 0, 0]
    rows = [line.split() for line in out.read_text().splitlines()]
    assert sorted(r[1] for r in rows) == ["0", "1", "2"]
    assert {r[0] for r in rows} == {str(NOBODY)}
    assert "through the daemon" in (secured.jobs.root / "agent.log").read_text()
    _, text, _ = await secured.run("logs", str(ids[1]))
    assert text == "hello 1\n"

    # the daemon published their steps, for nobody's uid
    events = [e for e in await remote.store.events_since(0) if e["type"].startswith("job_")]
    assert {(e["type"], e["job"]) for e in events} >= \
        {(t, i) for t in ("job_submitted", "job_started", "job_ended") for i in ids}
    assert {(e["uid"], e["user"]) for e in events} == {(NOBODY, "nobody")}

    # a running job: status shows it (TYPE job NAME) as nobody's; cancel stops it
    long_id = await secured.submit("--gpus", "2", "--name", "long", "--", "sleep", "600")

    async def running():
        return (await jobs())[long_id]["state"] == "running"
    await until(running, "the long job to run")
    view = await remote.view()
    assert {(g.hold.user, g.hold.kind, g.hold.name) for g in view.gpus} == \
        {("nobody", "job", "long")}
    # a queued one behind it: in the queue as a job; cancel takes it out
    queued_id = await secured.submit("--gpus", "1", "--", "true")

    async def queued():
        return (await jobs())[queued_id]["position"] == 1
    await until(queued, "the second job to queue")
    _, waiters = await remote.queue()
    assert [(w.user, w.kind) for w in waiters] == [("nobody", "job")]
    _, text, _ = await secured.run("cancel", str(queued_id), str(long_id))
    assert f"job {queued_id} cancelled" in text and f"job {long_id} cancelled" in text
    found = await jobs()
    assert found[queued_id]["state"] == found[long_id]["state"] == "cancelled"

    async def freed():
        view = await remote.view()
        return not any(g.hold for g in view.gpus) and not (await remote.queue())[1]
    await until(freed, "the GPUs and the queue to be free")
    # another uid (root, through the daemon) cannot publish job events as nobody
    await remote.job_event({"type": "job_ended", "job": 1, "name": "x", "uid": NOBODY,
                            "user": "nobody", "state": "done", "reason": ""})
    last = (await remote.store.events_since(0))[-1]
    assert (last["type"], last["uid"], last["user"]) == ("job_ended", 0, "root")


class Sweep:
    """One of nobody's jobs running on the whole pool, `n` queued behind it (each on the
    whole pool too: they run one after the other), each appending to one file."""

    def __init__(self, secured: Secured) -> None:
        self.secured, self.out = secured, secured.home / "order.txt"

    async def start(self, n: int) -> None:
        self.first = await self.secured.submit("--gpus", "2", "--", "sh", "-c",
                                               f"echo first >> {self.out}; exec sleep 600")

        async def running():
            return (await self.secured.jobs_doc())[self.first]["state"] == "running"
        await until(running, "the first job to run")
        self.ids = [await self.secured.submit("--gpus", "2", "--", "sh", "-c",
                                              f"echo {i} >> {self.out}") for i in range(n)]
        await until(self.queued, "the jobs queued in order")

    async def queued(self) -> bool:
        found = await self.secured.jobs_doc()
        return [found[i]["position"] for i in self.ids] == list(range(1, len(self.ids) + 1))

    async def finish(self) -> None:
        """Cancel the first job; the others run, each once, in order."""
        await self.secured.run("cancel", str(self.first))

        async def all_done():
            found = await self.secured.jobs_doc()
            return all(found[i]["state"] == "done" for i in self.ids)
        await until(all_done, "the queued jobs to run")
        assert self.out.read_text().split() == ["first", *map(str, range(len(self.ids)))]


async def test_a_killed_agent_loses_no_job_and_runs_none_twice(secured):
    """Through the daemon a killed agent's places go with its connections: the next agent
    queues its jobs again in submission order, and a job that was running goes on."""
    sweep = Sweep(secured)
    await sweep.start(4)
    _kill(secured.jobs.agent_pid())

    async def places_gone():
        return not (await secured.remote.queue())[1]
    await until(places_gone, "the killed agent's places to be given back")
    await until(sweep.queued, "`jobs` to start an agent that queues them again in order")
    await sweep.finish()


async def test_a_daemon_restart_loses_no_job_and_runs_none_twice(secured):
    """The daemon (and its embedded Redis) stopped and started again while one of nobody's
    jobs runs and three are queued: the running one goes on, renewing its lease through the
    new daemon; the queued ones run once each, in order."""
    sweep = Sweep(secured)
    await sweep.start(3)
    await secured.stop()
    await secured.start()
    await until(sweep.queued, "the jobs queued again, in order")

    async def held():
        view = await secured.remote.view()
        return {(g.hold.user, g.hold.kind) for g in view.gpus if g.hold} == {("nobody", "job")}
    await until(held, "the running job's GPUs held through the new daemon")
    assert (await secured.jobs_doc())[sweep.first]["state"] == "running"
    await sweep.finish()


async def test_job_events_are_checked_at_the_door(pool, config):
    """The API's job_event: only the job event types, printable bounded fields."""
    from canhazgpu.errors import InvalidRequest
    from eventtools import running_daemon
    async with running_daemon(config):
        remote = RemoteCore(config, str(config.api_path))
        good = {"type": "job_started", "job": 3, "name": "n", "state": "running",
                "reason": "", "gpus": [0]}
        await remote.job_event(good)
        for bad in ({**good, "type": "released"}, {**good, "name": "a\x1b[2Jb"},
                    {**good, "reason": "x" * 600}, {**good, "gpus": ["0"]},
                    {**good, "job": "3"}, {**good, "job": 0}, {**good, "state": "weird"},
                    {**good, "exit_code": 2**40}, {**good, "rid": "r" * 65}, "job_started"):
            with pytest.raises(InvalidRequest):
                await remote.job_event(bad)
