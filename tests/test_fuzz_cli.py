"""CLI input fuzzing: random argv for every command (its options, unknown ones, values that
are numbers, huge, negative, empty, unicode, malformed durations and ids). Whatever the
input: exit code 0, 1 or 2 (`run`/`wait` with a command: the command's own, which is only
ever `true` or something that cannot start, 126/127), never a traceback, and nothing in
Redis changed when the answer is 2 (bad usage).

Every example starts from the same state, an empty pool of 8 GPUs, so nothing blocks:
`wait` gets a short --timeout, `--wait`/`--timeout` values over a second are cut to one,
and `events` (which runs until its --count) is stopped with Ctrl+C once it has subscribed.
Long-running forms (`status --follow`, `serve`, `web`) are left out."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from canhazgpu.errors import InvalidRequest
from canhazgpu.timefmt import parse_duration
from conftest import wait_until

FLAG = None
VALUE = "value"
SELECTION = {"--gpus": VALUE, "-g": VALUE, "--gpu-ids": VALUE, "-G": VALUE, "--note": VALUE,
             "-n": VALUE}
QUEUEING = {"--wait": VALUE, "-w": VALUE, "--nonblock": FLAG, "--quiet": FLAG, "-q": FLAG}
CHECKS = {"--wait": VALUE, "--json": FLAG}
COMMANDS = {
    "admin": {"--gpus": VALUE, "--provider": VALUE, "--force": FLAG, "--json": FLAG},
    "status": {"--format": VALUE, "--json": FLAG, "--summary": FLAG},
    "reserve": {**SELECTION, **QUEUEING, "--duration": VALUE, "-d": VALUE, "--short": FLAG,
                "-s": FLAG, "--json": FLAG, "-j": FLAG, "--force": FLAG},
    "release": {"--gpu-ids": VALUE, "-G": VALUE, "--user": VALUE, "--force": FLAG,
                "--json": FLAG, "-j": FLAG},
    "run": {**SELECTION, **QUEUEING, "--timeout": VALUE, "-t": VALUE},
    "wait": {**SELECTION, "--timeout": VALUE, "-t": VALUE, "--duration": VALUE, "-d": VALUE,
             "--short": FLAG, "-s": FLAG, "--quiet": FLAG, "-q": FLAG},
    "queue": {"--json": FLAG},
    "report": {"--days": VALUE, "--json": FLAG},
    "events": {"--json": FLAG, "-j": FLAG, "--type": VALUE, "--count": VALUE,
               "--since": VALUE},
    "config": CHECKS,
    "doctor": CHECKS,
    "help": {},  # a topic: the positional words
    "completion": {},  # a shell: the positional words
}
GLOBAL = ("--redis-url", "--host", "--memory-threshold", "--config")
BLOCKING = ("--wait", "-w", "--timeout", "-t")  # values over a second are cut to one
NASTY = ("", " ", "0", "-1", "-0", "+1", "1x", "1,,2", "0,0", "1,", ",", "1,3", "7", "8",
         "0x10", "1e9", "1.5", "nan", "inf", "٣", "²", "1_000", "30s", "0s", "0.1s", "2h",
         "366d", "367d", "1d", "99999999999999999999d", "fake", "nvidia", "amd", "table",
         "lines", "reserved,nope", "released", "bash", "zsh", "status", "events", "\u202e",
         "é", "🚀", "-", "--", "--gpus",
         "redis://[::1", "redis://localhost:99999/0", "redis://localhost:abc/0",
         "http://x", "unix://", "unix:///nonexistent/redis.sock", "redis://:pw@localhost:1/0")


def harmless(text: str) -> bool:
    """Not a program on PATH (a value may end up as `run`'s command) and valid in argv."""
    return "\x00" not in text and shutil.which(text.split(" ")[0] or " ") is None


values = st.one_of(
    st.sampled_from(NASTY),
    st.integers(-10, 20).map(str),
    st.integers(min_value=2**31).map(str),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
).filter(harmless)
junk = st.one_of(st.sampled_from(("--nope", "-x", "-", "--help", "-h", "--json=1")),
                 st.text(st.characters(blacklist_categories=("Cs",)), min_size=1,
                         max_size=6).filter(lambda t: not t.startswith("-")),
                 ).filter(harmless)


def bounded(name: str, value: str) -> str:
    """Keep an example fast: a valid --wait/--timeout over a second becomes 1s."""
    if name in BLOCKING:
        try:
            if parse_duration(value) > 1:
                return "1s"
        except InvalidRequest:
            pass
    return value


@st.composite
def command_lines(draw) -> tuple[str, list[str]]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    spec = COMMANDS[command]
    args: list[str] = ["--timeout", "0.3s"] if command == "wait" else []
    for _ in range(draw(st.integers(0, 4))):
        if not spec or draw(st.integers(0, 3)) == 0:
            args.append(draw(junk if spec else values))  # help TOPIC, completion SHELL
            continue
        name = draw(st.sampled_from(sorted(spec)))
        if spec[name] is FLAG:
            args.append(name)
            continue
        value = bounded(name, draw(values))
        args += [f"{name}={value}"] if draw(st.booleans()) else [name, value]
    if command == "run" or (command == "wait" and draw(st.booleans())):
        args += ["--", "true"]
    before = []
    if draw(st.integers(0, 3)) == 0:
        before = [draw(st.sampled_from(GLOBAL)), draw(values)]
    if draw(st.integers(0, 7)) == 0:
        before.append("--no-color")
    return command, [*before, command, *args]


@pytest.fixture
def pool_state(cli, redis_url):
    """An empty pool of 8 GPUs; restore() puts Redis back to it; snapshot() reads it all."""
    cli("admin", "--gpus", 8, check=0)
    raw = redis.Redis.from_url(redis_url)

    class State:
        @staticmethod
        def snapshot() -> dict:
            return {key: (raw.dump(key), raw.pttl(key)) for key in raw.scan_iter()}

        golden = snapshot()

        def restore(self) -> None:
            raw.flushall()
            for key, (dumped, _) in self.golden.items():
                raw.restore(key, 0, dumped)

    yield State()
    raw.close()


def run_cli(cli, rclient, command: str, argv: list[str]) -> subprocess.CompletedProcess:
    proc = cli.popen(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if command == "events":  # runs until --count events: stop it once it listens
        wait_until(lambda: proc.poll() is not None or rclient.pubsub_channels(), timeout=20)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"canhazgpu {argv!r} did not finish in 20 s") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def check(cli, rclient, pool_state, command: str, argv: list[str]) -> None:
    pool_state.restore()
    proc = run_cli(cli, rclient, command, argv)
    shown = f"canhazgpu {argv!r} -> {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    # run/wait take whatever they do not know as the command: 126/127 when it cannot start
    allowed = {0, 1, 2} | ({126, 127} if command in ("run", "wait") else set())
    assert proc.returncode in allowed, shown
    if proc.returncode == 2:
        assert pool_state.snapshot() == pool_state.golden, f"state changed: {shown}"


@settings(max_examples=80, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(line=command_lines())
def test_random_command_lines_exit_cleanly(cli, rclient, pool_state, line):
    check(cli, rclient, pool_state, *line)


@pytest.mark.parametrize("argv", [
    ["events", "--count", "²"],  # str.isdigit() is true, int() refuses it
    ["--redis-url", "redis://[::1", "status"],  # urlsplit raises ValueError
    ["--redis-url", "redis://localhost:99999/0", "status"],  # redis-py: port out of range
    ["--redis-url", "redis://localhost:abc/0", "queue"],  # redis-py: port not a number
    ["admin", "--gpus", "99999999999"],  # no upper bound: one Redis key per GPU
], ids=lambda argv: " ".join(argv))
def test_inputs_found_by_fuzzing(cli, rclient, pool_state, argv):
    check(cli, rclient, pool_state, argv[2] if argv[0].startswith("--") else argv[0], argv)
