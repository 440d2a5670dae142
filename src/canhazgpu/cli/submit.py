"""Detached jobs: `submit`, `jobs`, `logs` and `cancel` (docs/jobs.md)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

import asyncclick as click

from ..errors import CanHazGpuError, InvalidRequest
from . import output
from .main import cli
from .options import COMMAND_LINE, build_request, command_line, duration, gpu_selection

POLL_S = 0.1  # cancel waits for the job file to say the job ended; logs -f reads on


def _jobs(state):
    from ..jobs.files import JobDir, jobs_root
    return JobDir(jobs_root(state.config))


def _agent(state, jobs) -> bool:
    """Wake our agent, or start one that reaches the pool the way this command does
    (through the daemon, or Redis); True when one was started."""
    return jobs.ensure_agent(state.config, "daemon" if state.remote else "direct")


def _complete_ids(ctx, incomplete: str, live: bool = False) -> list:
    """Tab completion of job ids (cancel: the queued and running ones), with their names."""
    from asyncclick.shell_completion import CompletionItem
    from ..jobs.files import LIVE
    from .main import Context
    try:
        found = _jobs(ctx.ensure_object(Context)).all()
    except CanHazGpuError:
        return []
    return [CompletionItem(str(j.id), help=j.doc.get("name") or " ".join(j.doc["argv"])[:40])
            for j in found if str(j.id).startswith(incomplete)
            and (not live or j.state in LIVE)]


@cli.command(context_settings=COMMAND_LINE, epilog="""\b
Examples:
  canhazgpu submit --gpus 1 -- python train.py --lr 0.1     # prints the job id
  for lr in 0.1 0.01 0.001; do canhazgpu submit -g 1 --name lr$lr -- python train.py --lr $lr; done
  canhazgpu submit --gpus 2 --after 3,4 -- python eval.py   # when jobs 3 and 4 succeeded
  canhazgpu jobs; canhazgpu logs 3 -f; canhazgpu cancel 3
The job queues with `wait` and `run --wait` (first come, first served) and runs as you, in
this directory, with this environment. You may log out: your job agent keeps its place.
""")
@gpu_selection
@click.option("--name", default="", metavar="NAME", help="A name shown in jobs and status.")
@click.option("--after", metavar="ID[,ID]",
              help="Start only when these jobs ended successfully (a failure cancels this).")
@click.option("--timeout", "-t", "timeout_text", metavar="D",
              help="Stop the command after D (SIGTERM, then SIGKILL after a grace period).")
@command_line
@click.pass_obj
async def submit(state, count, gpu_ids, note, name, after, timeout_text, command):
    """Queue a command to run on GPUs later, detached; prints its id."""
    from ..jobs.files import job_document
    from ..text import check_note
    if not command:
        raise InvalidRequest("submit needs a command, e.g. canhazgpu submit --gpus 1 -- "
                             "python train.py")
    timeout_s = duration(timeout_text, "timeout", "1s") if timeout_text is not None else None
    req = await build_request(state, count, gpu_ids, "job", 0, check_note(note))
    jobs = _jobs(state)
    deps = _after(jobs, after)
    from ..identity import user_name  # (the job's owner is who we are: no process facts)
    uid = os.getuid()
    job = jobs.create(job_document(command, req, user=user_name(uid), uid=uid,
                                   host=state.config.host_name, name=check_note(name, "name")[:100],
                                   after=deps, timeout_s=timeout_s))
    _agent(state, jobs)  # which announces it (job_submitted): no Redis here
    output.emit(str(job.id))


def _after(jobs, text: str | None) -> list[int]:
    if not text:
        return []
    deps = []
    for part in text.split(","):
        deps.append(jobs.load(part).id)  # a bad or unknown id is refused now
    return deps


@cli.command("jobs", epilog="""\b
Examples:
  canhazgpu jobs                 # queued and running jobs, and those ended in the last day
  canhazgpu jobs --all --json | jq '.[] | select(.state == "failed") | .id'
""")
@click.option("--all", "show_all", is_flag=True, help="Also jobs that ended over a day ago.")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
@click.pass_obj
async def jobs_(state, show_all, as_json):
    """Your detached jobs on this host: state, queue place or GPUs, exit."""
    from ..jobs.files import LIVE, QUEUED, STARTING, now_ms
    from ..render.jobs import job_json, render_jobs
    jobs = _jobs(state)
    found = jobs.all()
    now = now_ms()
    found = [j for j in found if show_all or j.state in LIVE
             or now - (j.doc.get("ended_ms") or now) < 86400_000]
    if any(j.state in (QUEUED, STARTING) for j in found) and jobs.agent_pid() is None:
        _agent(state, jobs)  # after a reboot: the queued jobs queue again
        output.warn("started your job agent: queued jobs had none (see docs/jobs.md)")
    positions = await _positions(state)
    rows = [job_json(j.doc, positions.get(j.doc.get("rid"))) for j in found]
    if as_json:
        output.emit_json(rows)
        return
    width = shutil.get_terminal_size().columns if output.is_tty() else None
    output.emit(render_jobs(rows, now, width))


async def _positions(state) -> dict:
    try:
        _, waiters = await state.core.queue()
    except CanHazGpuError:
        return {}
    return {w.wid: pos for pos, w in enumerate(waiters, 1)}


@cli.command(epilog="""\b
Examples:
  canhazgpu logs 3               # what job 3 printed (stdout and stderr)
  canhazgpu logs 3 -f            # and what it prints, until it ends
""")
@click.argument("job_id", metavar="ID", shell_complete=lambda c, p, i: _complete_ids(c, i))
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@click.pass_obj
async def logs(state, job_id, follow):
    """Print a job's output (the latest 4-8 MiB are kept)."""
    import anyio
    from ..jobs.files import LIVE
    job = _jobs(state).load(job_id)
    log, older = job.file("output.log"), job.file("output.log.1")
    if older.exists():
        output.warn("canhazgpu: earlier output was dropped (a job keeps its last 4-8 MiB)")
        _copy(older, 0)
    where = _Tail(log)
    where.read()
    while follow:
        ended = _reload(job).get("state") not in LIVE
        got = where.read()
        if ended and not got:
            return
        if not got:
            await anyio.sleep(POLL_S)


def _reload(job) -> dict:
    import json
    try:
        return json.loads(job.file("job.json").read_text())
    except (OSError, ValueError):
        return job.doc


def _copy(path, offset: int) -> int:
    """Write path from offset to stdout; the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(1 << 16):
                sys.stdout.buffer.write(chunk)
                offset += len(chunk)
    except FileNotFoundError:
        return offset
    sys.stdout.buffer.flush()
    return offset


class _Tail:
    """What is new in a log that the runner may move to log.1 (when it reaches its half)."""

    def __init__(self, path) -> None:
        self.path, self.inode, self.offset = path, None, 0

    def read(self) -> bool:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            return False
        before = self.offset
        if self.inode is not None and inode != self.inode:  # moved: finish the old one
            self.offset = _copy(self.path.with_name(self.path.name + ".1"), self.offset)
            before, self.offset = -1, 0
        self.inode = inode
        self.offset = _copy(self.path, self.offset)
        return self.offset != before


@cli.command(epilog="""\b
Examples:
  canhazgpu cancel 3             # queued: leaves the queue; running: SIGTERM, then SIGKILL
  canhazgpu cancel 3 4 5
""")
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True,
                shell_complete=lambda c, p, i: _complete_ids(c, i, live=True))
@click.pass_obj
async def cancel(state, job_ids):
    """Cancel jobs: a queued one leaves the queue, a running one stops."""
    jobs = _jobs(state)
    todo = [jobs.load(j) for j in job_ids]  # every id checked before anything changes
    grace = state.config.seconds("kill_grace")
    failed = 0
    for job in todo:
        try:
            output.emit(await _cancel(state, jobs, job, grace))
        except CanHazGpuError as err:
            output.error(str(err))
            failed += 1
    return 1 if failed else 0


def _terminate(job) -> None:
    try:
        os.kill(int(job.doc["runner_pid"]), signal.SIGTERM)
    except (OSError, KeyError, ValueError) as err:
        raise CanHazGpuError(f"cannot stop job {job.id}: {err}") from None


async def _cancel(state, jobs, job, grace: float) -> str:
    import anyio
    from ..jobs.files import ENDED, RUNNING, Job
    if job.state in ENDED:
        return f"job {job.id} already {job.state}"
    try:
        job.file("cancel").touch()
    except PermissionError:
        raise CanHazGpuError(f"job {job.id} is not yours to cancel") from None
    if job.state == RUNNING and job.runner_alive():
        _terminate(job)
    else:
        _agent(state, jobs)  # the agent (or the runner, starting) ends it
    deadline = time.monotonic() + grace + 10
    while time.monotonic() < deadline:
        now = Job(job.path, _reload(job))
        if now.state in ENDED:
            code = now.doc.get("exit_code")
            return f"job {job.id} {now.state}" + (f" (exit {code})" if code is not None else "")
        await anyio.sleep(POLL_S)
    return f"job {job.id}: cancel asked; it ends shortly (see 'canhazgpu jobs')"
