"""`run` on a real terminal (a pty): interactive programs work, Ctrl+C reaches the command
once, and `status` prints the table."""

from __future__ import annotations

import sys

import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def tty_cli(cli, env):
    """The CLI with a terminal's environment (colours allowed) and a pool of 2 GPUs."""
    cli("admin", "--gpus", 2, check=0)
    cli.env = {k: v for k, v in env.items() if k != "NO_COLOR"} | {"TERM": "xterm"}
    return cli


async def test_interactive_command_reads_the_terminal(tty_cli):
    child = "name = input('name? '); print('hello ' + name + ' on ' + __import__('os')" \
            ".environ['CUDA_VISIBLE_DEVICES'])"
    term = tty_cli.terminal("run", "--", sys.executable, "-c", child)
    await term.expect("name? ")
    term.send(b"ada\n")
    await term.expect("hello ada on 0")
    assert await term.wait() == 0


async def test_ctrl_c_reaches_the_command_once(tty_cli, tmp_path):
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
    term = tty_cli.terminal("run", "--", sys.executable, "-c", child)
    await term.expect("ready")
    term.send(b"\x03")  # Ctrl+C: the terminal signals the whole foreground process group
    assert await term.wait() == 11
    assert count.read_text() == "1"


async def test_status_on_a_terminal_is_a_coloured_table(tty_cli):
    term = tty_cli.terminal("status")
    await term.expect("\x1b[32m")  # green: available
    assert await term.wait() == 0
    assert term.text.startswith("GPU STATUS")


async def test_json_on_a_terminal_is_indented(tty_cli):
    term = tty_cli.terminal("status", "--json")
    await term.expect('"gpus"')
    assert await term.wait() == 0
    assert term.text.replace("\r\n", "\n").startswith('{\n  "version": 1,\n')


async def test_no_color_is_honoured_on_a_terminal(tty_cli):
    term = tty_cli.terminal("status", extra_env={"NO_COLOR": "1"})
    await term.expect("\n1 ")  # the last GPU's row
    assert await term.wait() == 0
    assert "\x1b[" not in term.text
