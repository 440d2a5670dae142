"""Process facts: vanished PIDs, denied access and uids without a name never crash."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

import psutil

from canhazgpu.gpu import procinfo
from canhazgpu.gpu.procinfo import ProcessFacts, describe, describe_all, gpu_process


def test_own_process():
    facts = describe(os.getpid())
    assert facts.user == pwd.getpwuid(os.getuid()).pw_name
    assert facts.name not in ("", "unknown") and facts.cmdline


def test_vanished_process():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert describe(child.pid) == ProcessFacts()
    assert describe(-5) == ProcessFacts()


def test_access_denied_fields(monkeypatch):
    def denied(self):
        raise psutil.AccessDenied(self.pid)
    monkeypatch.setattr(psutil.Process, "cmdline", denied)
    monkeypatch.setattr(psutil.Process, "uids", denied)
    facts = describe(os.getpid())
    assert (facts.user, facts.cmdline) == ("unknown", ())
    assert facts.name not in ("", "unknown")


def test_uid_without_passwd_entry(monkeypatch):
    def missing(uid):
        raise KeyError(uid)
    monkeypatch.setattr(pwd, "getpwuid", missing)
    assert describe(os.getpid()).user == "unknown"
    assert procinfo.user_name(123456) == "unknown"


def test_describe_all_reads_each_pid_once(monkeypatch):
    seen = []
    monkeypatch.setattr(procinfo, "describe", lambda pid: seen.append(pid) or ProcessFacts())
    assert set(describe_all([3, 4, 3, 3])) == {3, 4} and seen == [3, 4]


def test_gpu_process_prefers_the_drivers_name():
    facts = ProcessFacts(name="python3", user="bob", cmdline=("python3", "x.py"))
    assert gpu_process(5, 100, facts).name == "python3"
    process = gpu_process(5, None, facts, name="pt_main_thread")
    assert (process.name, process.user, process.used_memory_mb, process.cmdline) == (
        "pt_main_thread", "bob", None, ("python3", "x.py"))
