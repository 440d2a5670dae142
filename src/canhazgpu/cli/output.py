"""Terminal output: colour only on a terminal (NO_COLOR honoured), one-line errors."""

from __future__ import annotations

import json
import os
import sys


def is_tty(stream=None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def use_color(stream=None) -> bool:
    return is_tty(stream) and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def emit(text: str = "") -> None:
    print(text, flush=True)


def emit_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=False), flush=True)


def warn(text: str, stream=None) -> None:
    """A note on stderr that must never kill us (the terminal may be gone after a hang-up)."""
    try:
        print(f"canhazgpu: {text}", file=stream or sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def error(text: str) -> None:
    try:
        print(f"Error: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
