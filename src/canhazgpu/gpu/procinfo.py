"""Facts about the processes a GPU reports: owner, name, command line.

GPU drivers give us PIDs only. The owner and the command come from the OS, and reading
them fails in ordinary ways: the process has exited since the scan, /proc is mounted with
hidepid, the PID lives in another namespace (containers), or its uid has no passwd entry.
Each of those yields "unknown" or an empty command line for that field, never an error.
Blocking: call from a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from .. import identity
from ..model import GpuProcess

UNKNOWN = "unknown"


@dataclass(frozen=True)
class ProcessFacts:
    name: str = UNKNOWN
    user: str = UNKNOWN
    cmdline: tuple[str, ...] = ()


def user_name(uid: int) -> str:
    """The account name of a uid; "unknown" when the passwd database has no entry."""
    return identity.user_name(uid, UNKNOWN)


def describe(pid: int) -> ProcessFacts:
    """Owner, name and command line of one live process, each field best effort."""
    try:
        proc = psutil.Process(pid)
    except (psutil.Error, ValueError):
        return ProcessFacts()
    name = _field(lambda: proc.name(), UNKNOWN) or UNKNOWN
    user = _field(lambda: user_name(proc.uids().real), UNKNOWN)
    cmdline = tuple(_field(lambda: proc.cmdline(), ()))
    return ProcessFacts(name=name, user=user, cmdline=cmdline)


def describe_all(pids: Iterable[int]) -> dict[int, ProcessFacts]:
    """describe() for each distinct PID (a process on several GPUs is read once)."""
    return {pid: describe(pid) for pid in dict.fromkeys(pids)}


def gpu_process(pid: int, used_memory_mb: int | None, facts: ProcessFacts,
                name: str | None = None) -> GpuProcess:
    """A GpuProcess from what the driver said and what the OS said (the driver's name wins)."""
    return GpuProcess(pid=pid, name=name or facts.name, user=facts.user,
                      used_memory_mb=used_memory_mb, cmdline=facts.cmdline)


def _field(read, default):
    try:
        return read()
    except (psutil.Error, OSError):
        return default
