"""`run` on a real terminal (a pty): interactive programs work, Ctrl+C reaches the command
once, and `status` prints the table."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import subprocess
import sys
import termios
import time

import pytest


def _controlling_tty():
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A child process whose stdin/stdout/stderr is a pty it controls, like a shell's job."""

    def __init__(self, args, env):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     preexec_fn=_controlling_tty)
        os.close(slave)
        self.seen = b""

    def expect(self, text: bytes, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen; got {self.seen!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the other side closed
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{text!r} not seen before EOF; got {self.seen!r}")
                self.seen += chunk
        return self.seen

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> int:
        code = self.proc.wait(timeout=20)
        os.close(self.master)
        return code


@pytest.fixture
def tty_env(cli, env):
    cli("admin", "--gpus", 2, check=0)
    return {k: v for k, v in env.items() if k != "NO_COLOR"} | {"TERM": "xterm"}


def canhazgpu(*args):
    return [sys.executable, "-m", "canhazgpu", *args]


def test_interactive_command_reads_the_terminal(tty_env):
    child = "name = input('name? '); print('hello ' + name + ' on ' + __import__('os')" \
            ".environ['CUDA_VISIBLE_DEVICES'])"
    term = Terminal(canhazgpu("run", "--", sys.executable, "-c", child), tty_env)
    term.expect(b"name? ")
    term.send(b"ada\n")
    term.expect(b"hello ada on 0")
    assert term.close() == 0


def test_ctrl_c_reaches_the_command_once(tty_env, tmp_path):
    count = tmp_path / "count"
    child = (
        "import signal, time, pathlib\n"
        f"p = pathlib.Path({str(count)!r})\n"
        "hits = []\n"
        "def on_int(*a):\n"
        "    hits.append(1); p.write_text(str(len(hits)))\n"
        "signal.signal(signal.SIGINT, on_int)\n"
        "print('ready', flush=True)\n"
        "while not hits: time.sleep(0.01)\n"
        # a second, forwarded SIGINT would arrive within milliseconds of the first
        "time.sleep(0.5)\n"
        "raise SystemExit(10 + len(hits))\n")
    term = Terminal(canhazgpu("run", "--", sys.executable, "-c", child), tty_env)
    term.expect(b"ready")
    term.send(b"\x03")  # Ctrl+C: the terminal signals the whole foreground process group
    assert term.close() == 11
    assert count.read_text() == "1"


def test_status_on_a_terminal_is_a_coloured_table(tty_env):
    term = Terminal(canhazgpu("status"), tty_env)
    term.expect(b"\x1b[32m")  # green: available
    assert term.close() == 0
    assert term.seen.decode().startswith("GPU STATUS")


def test_no_color_is_honoured_on_a_terminal(tty_env):
    term = Terminal(canhazgpu("status"), {**tty_env, "NO_COLOR": "1"})
    term.expect(b"\n1 ")  # the last GPU's row
    assert term.close() == 0
    assert "\x1b[" not in term.seen.decode()
