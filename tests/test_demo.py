"""scripts/demo end to end, in the test's own environment: it finishes, and every command it
shows can be pasted (quoted as the shell needs, like shlex.join)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_the_demo_runs_and_prints_commands_that_can_be_pasted(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANHAZGPU_")}
    env.update(CANHAZGPU_VENV=sys.prefix, TMPDIR=str(tmp_path))
    # output to files: a daemon left behind by a failing demo would hold pipes open
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        demo = subprocess.Popen([str(ROOT / "scripts" / "demo")], env=env, stdout=out,
                                stderr=err, start_new_session=True)
    try:
        code = demo.wait(timeout=300)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    stdout = (tmp_path / "out").read_text()
    assert code == 0, (stdout, (tmp_path / "err").read_text())
    assert "\x1b[" not in stdout  # no colour off a terminal
    shown = [shlex.split(line[2:]) for line in stdout.splitlines()
             if line.startswith("$ canhazgpu ")]
    assert ["canhazgpu", "reserve", "--gpus", "1", "--duration", "4h", "--note",
            "notebook"] in shown
    assert ["canhazgpu", "run", "--gpus", "2", "--", "sh", "-c",
            'echo "my job sees CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"; '
            "canhazgpu status --format lines"] in shown
    assert "my job sees CUDA_VISIBLE_DEVICES=" in stdout
    assert "IN USE WITHOUT RESERVATION by user bob" in stdout
    assert stdout.rstrip().endswith("Demo finished: everything above ran against a "
                                         "private Redis on fake GPUs.")
