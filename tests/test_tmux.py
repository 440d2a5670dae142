"""What a person sees in a real terminal (tmux) at 60, 80 and 120 columns: the words that
matter are whole on the screen, the `status --follow` header is one row and a resize redraws
it, the `wait` progress line keeps its estimate whole, and Ctrl+C on `wait` is no error."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

NOTE = "fine-tuning llama for the paper, please keep"
EXPIRES = re.compile(r"expires in 7h 1\dm \d+s")
EXIT = re.compile(r"\[exit (\d+)\]$")  # (after the ^C the terminal echoes)


class Tmux:
    """One private tmux server (its own socket, no user config) with one window running a
    canhazgpu command; the screen is read with capture-pane. The window is made at its size
    from the start (default-size: no output drawn at 80 columns first), and the shell stays
    after the command, saying `[exit N]` (a pane whose process ended may lose its last
    output)."""

    def __init__(self, tmp_path, env: dict) -> None:
        self.socket = tmp_path / "tmux.sock"
        self.conf = tmp_path / "tmux.conf"
        self.env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES", "TMUX")}
        self.script = tmp_path / "cmd.sh"

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", str(self.socket), "-f", str(self.conf), *args],
                              capture_output=True, text=True, check=True, timeout=10,
                              env=self.env).stdout

    def start(self, *args, width: int, height: int = 30) -> None:
        self.conf.write_text(f"set -g status off\nset -g default-size {width}x{height}\n")
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env.items()
                          if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k))
        argv = " ".join(shlex.quote(str(a)) for a in (sys.executable, "-m", "canhazgpu", *args))
        self.script.write_text(f"unset COLUMNS LINES\n{exports}export TERM=screen\n"
                               "trap : INT\n"  # Ctrl+C is for the command, not this shell
                               f"{argv}\n"
                               "echo \"[exit $?]\"\nexec sleep 600\n")
        self.tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                  f"sh {shlex.quote(str(self.script))}")

    def screen(self) -> list[str]:
        return self.tmux("capture-pane", "-p", "-t", "t").rstrip("\n").split("\n")

    def until(self, predicate, timeout: float = 20.0) -> list[str]:
        """The screen once predicate(rows) holds (re-read every 20 ms, with a deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.screen()
            if predicate(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError("screen never matched:\n" + "\n".join(rows))
            time.sleep(0.02)

    def exit_code(self, timeout: float = 20.0) -> int:
        """The command's exit code, once it ended."""
        rows = self.until(lambda rows: any(EXIT.search(r) for r in rows), timeout)
        return int(next(EXIT.search(r) for r in rows if EXIT.search(r)).group(1))

    def resize(self, width: int, height: int = 30) -> None:
        self.tmux("resize-window", "-t", "t", "-x", str(width), "-y", str(height))

    def close(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True,
                       timeout=10)


@pytest.fixture
def term(tmp_path, env):
    tmux = Tmux(tmp_path, env)
    yield tmux
    tmux.close()


@pytest.fixture
def scene(cli, fake_gpus):
    """GPU 0 available, 1 reserved by us until ~7h 15m from now (with a note), 2 used by
    alice and bob without a reservation (a vLLM model), 3 unreadable."""
    cli("admin", "--gpus", 4, check=0)
    serve = ["vllm", "serve", "mistralai/Mistral-7B-Instruct-v0.1"]
    fake_gpus.write(count=4, gpus=[
        {"index": 2, "memory_used_mb": 3072, "processes": [
            {"pid": 101, "name": "python3", "user": "alice", "used_memory_mb": 2048,
             "cmdline": serve},
            {"pid": 102, "name": "jupyter", "user": "bob", "used_memory_mb": 1024}]},
        {"index": 3, "error": "GPU is lost"}])
    cli("reserve", "--gpu-ids", 1, "-d", "7h 15m", "--note", NOTE, check=0)
    return cli


def whole(rows: list[str], me: str, gpu0: str = "available") -> None:
    """Every word a glance needs, whole on one screen row, and no row wrapped."""
    text = "\n".join(rows)
    table = [r for r in rows if r.strip()]
    at = next(i for i, r in enumerate(table) if r.startswith("GPU STATUS"))
    gpus = table[at + 2:at + 6]
    assert [r.split()[:2] for r in gpus] == [["0", gpu0], ["1", "reserved"],
                                               ["2", "UNRESERVED"], ["3", "error"]], text
    assert gpus[1].split()[2] == me and EXPIRES.search(gpus[1]), text
    assert gpus[2].split()[2] == "alice,bob" and "WITHOUT RESERVATION" in gpus[2], text
    assert "GPU is lost" in gpus[3], text


@pytest.mark.parametrize("width", [60, 80, 120])
def test_status_keeps_what_matters_whole(scene, term, me, width):
    term.start("status", width=width)
    assert term.exit_code() == 0
    rows = term.screen()[:-1]  # (less our [exit 0])
    whole(rows, me.user)
    assert all(len(r) <= width for r in rows)
    titles = rows[0].split()
    assert ("DURATION" in titles) and (("TYPE" in titles) == (width >= 80))
    assert ("VALIDATION" in titles) == (width >= 80)
    assert ("MODEL" in titles and "NOTE" in titles) == (width >= 120)


def header_is_one_row(rows: list[str]) -> bool:
    return (len(rows) > 2 and rows[0].startswith("testhost at ")
            and rows[0].endswith("(Ctrl+C to stop)") and rows[1].startswith("GPU STATUS"))


def test_follow_header_fits_and_a_resize_redraws(scene, term, me):
    term.start("status", "--follow", width=80)
    term.until(lambda rows: header_is_one_row(rows) and len(rows) >= 6)
    scene("reserve", "--gpu-ids", 0, "-d", "1h", check=0)  # an event: a longer header
    rows = term.until(lambda rows: header_is_one_row(rows) and "last: " in rows[0]
                      and rows[3].split()[:2] == ["0", "reserved"])
    assert "TYPE" in rows[1].split() and len(rows[0]) <= 80
    term.resize(60)  # no event: the resize alone redraws, at the new width
    rows = term.until(lambda rows: header_is_one_row(rows) and "TYPE" not in rows[1])
    assert all(len(r) <= 60 for r in rows) and rows[3].split()[2] == me.user
    term.resize(120)
    rows = term.until(lambda rows: header_is_one_row(rows) and "NOTE" in rows[1])
    whole(rows[1:], me.user, gpu0="reserved")
    term.tmux("send-keys", "-t", "t", "C-c")
    assert term.exit_code() == 0
    assert "Error" not in "\n".join(term.screen())


@pytest.mark.parametrize("width", [60, 80, 120])
def test_wait_shows_the_whole_estimate_and_ctrl_c_is_no_error(cli, term, width):
    cli("admin", "--gpus", 2, check=0)
    cli("reserve", "--gpus", 2, "-d", "20m", check=0)
    term.start("wait", "--gpus", 2, "-d", "5m", width=width)
    rows = term.until(lambda rows: "granted" in rows[0])
    assert re.search(r"expected in ~19m \d{1,2}s$", rows[0]), rows[0]
    assert len(rows[0]) < width
    term.tmux("send-keys", "-t", "t", "C-c")
    assert term.exit_code() == 130
    text = "\n".join(term.screen())
    assert "canhazgpu: stopped waiting; left the queue" in text and "Error" not in text
    assert json.loads(cli("queue", "--json", check=0).stdout) == []
