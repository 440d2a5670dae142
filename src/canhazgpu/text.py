"""Text that another user or a process controls (notes, user and process names, command
lines): refused at the edge when it holds control characters, escaped wherever it reaches a
terminal or a log line. JSON keeps it exact."""

from __future__ import annotations

import re

from .errors import InvalidRequest

MAX_NOTE = 1000
# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a reader sees:
# none of them is printable (str.isprintable), which spares most texts the pattern. (A
# pattern, compiled and cached by re when first used: not by every command at start-up.)
_UNSAFE = "[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]"


def printable(text: str) -> str:
    """`text` with every control character shown as an escape (\\x1b, \\u202e): safe to put
    on a terminal or in a log."""
    if text.isprintable() or not re.search(_UNSAFE, text):
        return text
    return re.sub(_UNSAFE, lambda m: _escape(m.group()), text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def check_note(note: str, what: str = "note") -> str:
    """A note as given, or InvalidRequest naming what is wrong with it."""
    if len(note) > MAX_NOTE:
        raise InvalidRequest(f"invalid {what}: {len(note)} characters, at most {MAX_NOTE}")
    found = None if note.isprintable() else re.search(_UNSAFE, note)
    if found:
        raise InvalidRequest(f"invalid {what} {printable(note[:60])!r}: control character "
                             f"{_escape(found.group())} is not allowed (use plain text)")
    return note
