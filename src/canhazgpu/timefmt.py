"""Durations: parsing what users type and formatting what they read."""

from __future__ import annotations

import re

from .errors import InvalidRequest

_UNITS_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# 30m, 0.5h, and compounds in this order, with or without spaces: 1h30m, 1h 30m 0s (as hms
# and short print them), 1d 12h. A bare 0 is zero whatever the unit.
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
# (a pattern, compiled and cached by re when first used: not by every command at start-up)
_DURATION = r"^" + "".join(rf"(?:{_NUMBER}\s*{unit}\s*)?" for unit in _UNITS_S) + r"$"
MAX_DURATION_S = 366 * 86400


def parse_duration(text: str, *, what: str = "duration") -> float:
    """Parse '30s', '30m', '2h', '1d', '0.5h', '1h30m', '1h 30m 0s' into seconds (> 0, at
    most a year)."""
    clean = str(text).strip().lower()
    match = re.match(_DURATION, clean)
    if clean == "0":
        seconds = 0.0
    elif match and any(match.groups()):
        seconds = sum(float(n) * size for n, size in zip(match.groups(), _UNITS_S.values())
                      if n)
    else:
        raise InvalidRequest(
            f"invalid {what} {text!r}: use numbers with units s, m, h or d, e.g. 30m, 2h, "
            "1h30m, 1d, 0.5h")
    if seconds <= 0:
        raise InvalidRequest(f"invalid {what} {text!r}: it must be greater than zero, e.g. 30m")
    if seconds > MAX_DURATION_S:
        raise InvalidRequest(f"invalid {what} {text!r}: at most 366d")
    return seconds


def hms(seconds: float) -> str:
    """The documents' long form: always hours, minutes and seconds, e.g. '0h 15m 30s'."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}m {secs}s"


def short(seconds: float) -> str:
    """The table's compact form: leading zero units dropped, e.g. '5s', '45m 0s', '1h 2m 15s'."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def hm(seconds: float) -> str:
    """Hours and minutes, for "idle 2h 10m": '2h 10m', '10m', '45s' under a minute."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    if hours:
        return f"{hours}h {rest // 60}m"
    return f"{rest // 60}m" if rest >= 60 else f"{rest}s"


def coarse(seconds: float) -> str:
    """A rough age for 'free for 2h': the largest whole unit."""
    total = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size:
            return f"{total // size}{unit}"
    return f"{total}s"
