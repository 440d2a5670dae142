"""A user's detached jobs on one host, as files: one directory per job under
STATE_DIR/jobs/HOST/ (mode 0700: private to their owner).

  N/job.json   the job (written whole, atomically, by one writer at a time: `submit`
               creates it, the agent moves it to queued/starting, then its runner alone)
  N/lock       flock held by the job's runner for its whole life (and by the agent while
               it starts one): free means no runner lives
  N/cancel     written by `cancel`: whoever holds the job next ends it
  N/output.log the command's stdout and stderr (output.log.1: the older half, see CAP)
  agent.lock   flock of the user's one agent on this host; agent.pid its pid

Never prints: the CLI, the agent and the runner use it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CanHazGpuError, InvalidRequest

QUEUED, STARTING, RUNNING = "queued", "starting", "running"
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
ENDED = (DONE, FAILED, CANCELLED)
LIVE = (QUEUED, STARTING, RUNNING)
CAP = 8 * 1024 * 1024  # a job's log: the last 4-8 MiB of output are kept (two halves)


class JobNotFound(CanHazGpuError):
    """No such job of ours (or not readable by us)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def jobs_root(config) -> Path:
    """This user's jobs on this host."""
    return config.state_path / "jobs" / config.host_name


def write_json(path: Path, doc: dict) -> None:
    """Replace path with doc atomically (a reader sees the old or the new file, whole)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def try_lock(path: Path) -> int | None:
    """An exclusive flock on path (created 0600): its fd, or None when someone holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_locked(path: Path) -> bool:
    """Whether someone holds the flock on path (a missing file: nobody)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@dataclass
class Job:
    """One job: its directory and its document (the fields of job.json)."""

    path: Path
    doc: dict

    @property
    def id(self) -> int:
        return int(self.doc["id"])

    @property
    def state(self) -> str:
        return self.doc.get("state", QUEUED)

    def file(self, name: str) -> Path:
        return self.path / name

    def save(self, **changes) -> None:
        self.doc.update(changes)
        write_json(self.file("job.json"), self.doc)

    @property
    def cancel_asked(self) -> bool:
        return self.file("cancel").exists()

    def runner_alive(self) -> bool:
        """Whether a runner (or the agent starting one) holds this job's lock."""
        return is_locked(self.file("lock"))

    def ended(self, state: str, reason: str = "", exit_code: int | None = None) -> None:
        self.save(state=state, reason=reason, exit_code=exit_code, ended_ms=now_ms())


def job_document(argv, req, *, user: str, uid: int, host: str, name: str = "",
                 after=(), timeout_s: float | None = None, cwd: str | None = None,
                 env: dict | None = None) -> dict:
    """A new queued job: the command as the submitter runs it (directory, environment and
    umask of this process unless given) and what it asks for (a request.Request)."""
    umask = os.umask(0)
    os.umask(umask)
    return {"name": name, "argv": list(argv), "cwd": cwd or os.getcwd(),
            "env": dict(os.environ if env is None else env), "umask": umask,
            "count": req.count, "ids": list(req.ids) if req.ids is not None else None,
            "after": list(after), "note": req.note, "timeout_s": timeout_s,
            "submitted_ms": now_ms(), "state": QUEUED, "user": user, "uid": uid,
            "host": host}


class JobDir:
    """The jobs directory of one user on one host."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    def ids(self) -> list[int]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        except PermissionError:
            raise JobNotFound(f"cannot read {self.root}: jobs are private to their owner"
                              ) from None
        return sorted(int(n) for n in names if n.isdigit())

    def create(self, doc: dict) -> Job:
        """A new job with the next id (mkdir is the atomic claim)."""
        self.ensure()
        n = (self.ids() or [0])[-1] + 1
        while True:
            try:
                (self.root / str(n)).mkdir(mode=0o700)
                break
            except FileExistsError:
                n += 1
        job = Job(self.root / str(n), {**doc, "id": n})
        job.save()
        return job

    def load(self, job_id) -> Job:
        text = str(job_id).strip()
        if not text.isdigit():
            raise InvalidRequest(f"invalid job id {job_id!r}: use the number that submit "
                                 "printed (see 'canhazgpu jobs')")
        path = self.root / str(int(text))
        try:
            doc = json.loads((path / "job.json").read_text())
        except FileNotFoundError:
            raise JobNotFound(f"no job {text} in {self.root} (see 'canhazgpu jobs --all')"
                              ) from None
        except PermissionError:
            raise JobNotFound(f"job {text}: cannot read {path}: jobs are private to their "
                              "owner") from None
        except ValueError:
            raise JobNotFound(f"job {text}: {path / 'job.json'} is not valid JSON") from None
        return Job(path, doc)

    def all(self) -> list[Job]:
        """Every readable job, in id (submission) order; half-created ones skipped."""
        out = []
        for n in self.ids():
            try:
                out.append(self.load(n))
            except JobNotFound:
                continue
        return out

    # ------------------------------------------------------------------ the agent
    @property
    def agent_lock(self) -> Path:
        return self.root / "agent.lock"

    def agent_pid(self) -> int | None:
        """The live agent's pid (None: no agent holds the lock)."""
        if not is_locked(self.agent_lock):
            return None
        try:
            pid = int((self.root / "agent.pid").read_text())
            # a new agent holds the lock a moment before it writes its pid: never signal
            # whatever process has the previous agent's pid now
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"canhazgpu.jobs.agent" not in f.read():
                    return None
        except (OSError, ValueError):
            return None
        return pid

    def wake_agent(self) -> bool:
        """Tell the agent to look at the jobs again; False when no agent lives."""
        pid = self.agent_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError:
            return False
        return True

    def ensure_agent(self, config, client: str | None = None) -> bool:
        """Wake the user's agent, or start one (detached: its own session, surviving the
        terminal); True when one was started. Settings given as flags travel as their
        environment twins, so that the agent and its runners use the same Redis and host;
        `client` (daemon or direct): the way the starting command reached the pool."""
        if self.wake_agent():
            return False
        self.ensure()
        env = dict(os.environ)
        for key, origin in config.origins.items():
            if origin.startswith("--"):
                env[f"CANHAZGPU_{key.upper()}"] = str(getattr(config, key))
        if client is not None:
            env["CANHAZGPU_CLIENT"] = client
        import subprocess  # (not imported by a submit that finds its agent alive)
        with open(self.root / "agent.log", "ab") as log:
            subprocess.Popen([sys.executable, "-m", "canhazgpu.jobs.agent"], env=env,
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, close_fds=True)
        return True
