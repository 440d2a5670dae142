"""Who is asking: the OS account of the calling uid (never $USER), and the process."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    user: str
    uid: int
    pid: int
    pid_start: float
    is_admin: bool


def user_name(uid: int, unknown: str | None = None) -> str:
    """The account name of a uid; `unknown` (default: the uid itself) without an entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError, TypeError):
        return str(uid) if unknown is None else unknown


def process_start(pid: int) -> float:
    """The process's start time, to tell it from a later process that reuses its PID."""
    import psutil  # imported here: most commands never need it
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return 0.0


def process_owner(pid: int) -> tuple[int | None, float]:
    """(real uid, start time) of a process; (None, 0.0) when there is none."""
    import psutil
    try:
        proc = psutil.Process(pid)
        return proc.uids().real, proc.create_time()
    except (psutil.Error, OSError):
        return None, 0.0


def current(admin_group: str = "", pid: int | None = None) -> Caller:
    uid = os.getuid()
    name = user_name(uid)
    admin = uid == 0
    if not admin and admin_group:
        try:
            group = grp.getgrnam(admin_group)
            admin = group.gr_gid in os.getgroups() or name in group.gr_mem
        except KeyError:
            admin = False
    pid = os.getpid() if pid is None else pid
    return Caller(user=name, uid=uid, pid=pid, pid_start=process_start(pid), is_admin=admin)
