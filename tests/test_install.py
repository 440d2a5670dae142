"""A real install: the wheel built from this tree, installed with its `embedded` extra into a
fresh virtual environment without the repository (no editable install, no PYTHONPATH), then
`--version`, `--help`, the shipped docs, the systemd unit and the README's try-it block and
tour, run exactly as pasted from a temporary directory.

Slow (a wheel build and a pip install from the package index): about a minute.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

# what the README's tour runs, staged in its working directory
JOBS = {name: "import os\nprint('%s on GPUs', os.environ['CUDA_VISIBLE_DEVICES'])\n" % name
        for name in ("train.py", "big.py", "x.py")}


def sh(*args, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=kwargs.pop("timeout", 300), **kwargs)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv path, environment of a user who has only that venv on PATH)."""
    tmp = tmp_path_factory.mktemp("install")
    tree = tmp / "tree"  # only what a build reads: no .git, no .venv, no tests
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    for name in ("src", "docs"):
        shutil.copytree(ROOT / name, tree / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", tree)
    wheel = next((tmp / "dist").glob("canhazgpu-*.whl"))
    venv = tmp / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv)
    sh(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
       f"{wheel}[embedded]", timeout=600)
    home = tmp / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CANHAZGPU_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", HOME=str(home),
               NO_COLOR="1")
    if os.path.isdir("/var/lib/canhazgpu"):  # a real deployment here: keep out of it
        env["CANHAZGPU_STATE_DIR"] = str(home / "state")
    return venv, env


def test_the_installed_package_runs_without_the_repository(installed, tmp_path):
    venv, env = installed
    where = sh(venv / "bin" / "python", "-c", "import canhazgpu; print(canhazgpu.__file__)",
               env=env, cwd=tmp_path).stdout
    assert where.startswith(str(venv)), where
    assert sh("canhazgpu", "--version", env=env, cwd=tmp_path).stdout.startswith(
        "canhazgpu, version ")
    assert "Examples:" in sh("canhazgpu", "--help", env=env, cwd=tmp_path).stdout
    status_doc = sh("canhazgpu", "help", "status", env=env, cwd=tmp_path).stdout
    assert status_doc == (ROOT / "docs" / "status.md").read_text().rstrip("\n") + "\n"
    unit = sh("canhazgpu", "serve", "--print-systemd-unit", env=env, cwd=tmp_path).stdout
    assert f"\nExecStart={venv}/bin/canhazgpu serve --embedded-redis\n" in unit
    if shutil.which("systemd-analyze"):
        (tmp_path / "canhazgpu.service").write_text(unit)
        sh("systemd-analyze", "verify", tmp_path / "canhazgpu.service")


def bash_blocks(after: str) -> list[str]:
    """The lines of the first ```bash block after the heading `after` in the README."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index(after):], re.S).group(1)
    return block.splitlines()


def first_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output in time"
    return proc.stdout.readline()


def test_the_readme_try_it_and_tour_work_as_pasted(installed, tmp_path):
    venv, env = installed
    for name, text in JOBS.items():
        (tmp_path / name).write_text(text)
    try_it = bash_blocks("## Try it yourself")
    assert try_it[0].startswith("pipx install ")  # done by the fixture, from the wheel
    script = "\n".join(["set -ex", *try_it[1:], *bash_blocks("## A 60-second tour")])
    # to files: the daemon started in the background keeps a pipe open after bash exits
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        shell = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=out,
                                 stderr=err, start_new_session=True)
    try:
        shell.wait(timeout=180)
        out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
        assert shell.returncode == 0, (out, err, (tmp_path / "serve.log").read_text())
        assert "train.py on GPUs 0,1" in out
        assert re.search(r"big\.py on GPUs \d,\d,\d,\d", out)
        assert "x.py on GPUs" in out
        for line in bash_blocks("Live views"):
            live_view(line, env, tmp_path)
    finally:
        stop_group(shell.pid)
    log = (tmp_path / "serve.log").read_text()
    assert "created a pool of 8 idle fake GPUs" in log and "Traceback" not in log


def live_view(line: str, env: dict, cwd) -> None:
    """Start a never-ending line of the README, see it print, then Ctrl+C it (exit 0)."""
    view = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if "events" in line:  # it prints changes only: make some until one shows
            deadline = time.monotonic() + 30
            while not select.select([view.stdout], [], [], 0)[0]:
                assert time.monotonic() < deadline, "no event printed"
                sh("bash", "-c", "canhazgpu reserve && canhazgpu release", env=env, cwd=cwd)
        assert first_line(view, 30).startswith("{")
        view.send_signal(signal.SIGINT)
        assert view.wait(timeout=15) == 0, view.stderr.read()
    finally:
        if view.poll() is None:
            view.kill()
            view.wait()


def stop_group(group: int) -> None:
    """SIGTERM what the tour left running in its session (the daemon), and wait for it."""
    left = [p for p in psutil.process_iter() if _group_of(p) == group]
    for proc in left:
        proc.terminate()
    gone, alive = psutil.wait_procs(left, timeout=20)
    for proc in alive:
        proc.kill()


def _group_of(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except OSError:
        return None
