"""The systemd unit of `canhazgpu serve`, written for the canhazgpu this process runs from.

The unit (canhazgpu.service, package data) runs the daemon as its own service user, so the
command it starts must be reachable by that user: `unit()` says so when it is not (a
canhazgpu installed under a home directory of mode 0700, say).
"""

from __future__ import annotations

import stat
import sys
from importlib import resources
from pathlib import Path

MARK = "@CANHAZGPU@"


def command() -> list[str]:
    """How to start this canhazgpu again: its console script, else `python -m canhazgpu`."""
    script = Path(sys.argv[0])
    if script.name == "canhazgpu" and script.is_file():
        return [str(script.absolute())]
    return [sys.executable, "-m", "canhazgpu"]


def unit() -> tuple[str, str | None]:
    """The unit's text, and a warning when the service user could not run the command."""
    cmd = command()
    template = (resources.files("canhazgpu") / "canhazgpu.service").read_text()
    text = template.replace(MARK, " ".join(_quoted(word) for word in cmd))
    return text, _closed_to_others(Path(cmd[0]), Path(sys.executable))


def _quoted(word: str) -> str:
    """One ExecStart word: systemd's specifiers (%) and variables ($) escaped, quoted when
    it holds blanks or quotes."""
    word = word.replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in "\"'\\" for c in word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def _closed_to_others(*paths: Path) -> str | None:
    for path in paths:
        folders = dict.fromkeys([*path.absolute().parents, *path.resolve().parents])
        for folder in folders:
            try:
                mode = folder.stat().st_mode
            except OSError:
                continue
            if not mode & stat.S_IXOTH:
                return (f"the unit's service user cannot run {path}: {folder} is mode "
                        f"{stat.S_IMODE(mode):o}; install canhazgpu where every user can run "
                        "it (canhazgpu help install)")
    return None
