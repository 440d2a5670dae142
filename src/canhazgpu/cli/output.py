"""Terminal output: colour only on a terminal (NO_COLOR and --no-color honoured), one-line
errors."""

from __future__ import annotations

import os
import sys

from ..text import printable


def is_tty(stream=None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def width() -> int | None:
    """The terminal's columns when stdout is one, else None (no fitting). COLUMNS wins, as
    in shutil.get_terminal_size, which the everyday commands do not import (start-up)."""
    if not is_tty():
        return None
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


_color_off = False  # --no-color


def disable_color() -> None:
    global _color_off
    _color_off = True


def use_color(stream=None) -> bool:
    # no-color.org: only a NO_COLOR with a value turns colours off; NO_COLOR= does not
    return (is_tty(stream) and not _color_off and not os.environ.get("NO_COLOR")
            and os.environ.get("TERM") != "dumb")


def emit(text: str = "") -> None:
    print(text, flush=True)


def emit_json(data) -> None:
    """A JSON document: indented on a terminal (a person reads it), on one line otherwise
    (a program does: jq, a script), which Python's json writes in C, 5x faster than
    indented (the views of 100 hosts: ~4 against ~20 ms)."""
    import json  # (not imported by help and completion: start-up time)
    print(json.dumps(data, indent=2 if is_tty() else None), flush=True)


def warn(text: str, stream=None) -> None:
    """A note on stderr that must never kill us (the terminal may be gone after a hang-up)."""
    try:
        print(f"canhazgpu: {printable(text)}", file=stream or sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def error(text: str) -> None:
    try:
        print(f"Error: {printable(text)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
