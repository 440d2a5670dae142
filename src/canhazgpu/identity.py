"""Who is asking: the OS account of the calling uid (never $USER), and the process."""

from __future__ import annotations

import grp
import os
import pwd

from .model import Value, fill


class Caller(Value):
    """Who calls, by the kernel's word (the daemon) or our own look-up (direct mode)."""

    __slots__ = ("user", "uid", "pid", "pid_start", "is_admin")

    def __init__(self, user: str, uid: int, pid: int, pid_start: float,
                 is_admin: bool) -> None:
        fill(self, locals())


def user_name(uid: int, unknown: str | None = None) -> str:
    """The account name of a uid; `unknown` (default: the uid itself) without an entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError, TypeError):
        return str(uid) if unknown is None else unknown


def process_start(pid: int) -> float:
    """The process's start time, to tell it from a later process that reuses its PID: what
    psutil's create_time() gives (boot time + start ticks), from one read of
    /proc/PID/stat (psutil also re-reads /proc/stat for the boot time on every call: the
    daemon asks this for every request). Elsewhere than Linux, psutil's."""
    global _BOOT_TIME
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except FileNotFoundError:
        return 0.0 if os.path.isdir("/proc") else _psutil_start(pid)  # gone, or not Linux
    except OSError:
        return _psutil_start(pid)
    if _BOOT_TIME is None:
        import psutil
        _BOOT_TIME = psutil.boot_time()
    return _BOOT_TIME + int(fields[19]) / _CLOCK_TICKS  # field 22, starttime


_BOOT_TIME: float | None = None
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _psutil_start(pid: int) -> float:
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


def current(admin_group: str = "", pid: int | None = None, started: bool = True) -> Caller:
    """Who runs this process (or who `pid` is, as far as we are concerned). started=False:
    without the process's start time (pid_start 0.0), for what only reads (psutil's boot
    time costs ~8 ms of a command's start)."""
    uid = os.getuid()
    name = user_name(uid)
    admin = uid == 0
    if not admin and admin_group:  # by gid, among the groups the kernel gives: not by name
        try:
            admin = grp.getgrnam(admin_group).gr_gid in os.getgroups()
        except KeyError:
            admin = False
    pid = os.getpid() if pid is None else pid
    return Caller(user=name, uid=uid, pid=pid, pid_start=process_start(pid) if started else 0.0,
                  is_admin=admin)


def require_admin(caller: Caller, admin_group: str, action: str) -> None:
    """Root, or a member of the admin group (by gid, from the kernel): else NotOwner
    naming who may `action`."""
    if caller.is_admin:
        return
    from .errors import NotOwner
    who = f"root or members of group {admin_group!r} (admin_group)" if admin_group else \
        "root (no admin_group is configured)"
    raise NotOwner(f"only {who} may {action}; you are {caller.user}: ask an admin, or run "
                   "it with sudo")
