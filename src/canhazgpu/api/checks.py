"""The checks of the operation table's arguments (ops.py): each value checked once, at
the table's entry, in both modes; InvalidRequest names the bad value."""

from __future__ import annotations

from ..errors import InvalidRequest

MAX_DAYS = 3660
MAX_IDS = 4096
MAX_ID = 64  # characters of a reservation or queue id
MAX_WAIT_S = 366 * 86400
REASONS = ("released", "reclaimed")


def flag(value) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidRequest(f"invalid flag {str(value)[:40]!r}: true or false")


def whole(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"invalid {what} {str(value)[:40]!r}: a whole number from {low} "
                             f"to {high}")
    return value


def optional(check):
    """None passes (an argument left out: the operation gives its default); the table
    wraps every argument's check in it."""
    return lambda value: None if value is None else check(value)


def gpu_ids(value) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_IDS:
        raise InvalidRequest(f"invalid GPU ids {str(value)[:40]!r}: a list of numbers")
    return tuple(whole(i, "GPU id", 0, MAX_IDS) for i in value)


def name(what: str, longest: int = 200):
    """A printable name (a user, a provider, a channel), up to `longest` characters."""
    def check(value) -> str:
        if not isinstance(value, str) or not 0 < len(value) <= longest \
                or not value.isprintable():
            raise InvalidRequest(f"invalid {what} {str(value)[:40]!r}: printable text, up "
                                 f"to {longest} characters")
        return value
    return check


def text(what: str, longest: int):
    """Free text (a URL), printable, possibly empty."""
    check = name(what, longest)
    return lambda value: "" if value == "" else check(value)


def days(value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or \
            not 0 < value <= MAX_DAYS:
        raise InvalidRequest(f"invalid days {value!r}: above 0, up to {MAX_DAYS}")
    return float(value)


def wait_s(value) -> float:
    if value == "inf":
        return float("inf")
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 < value <= MAX_WAIT_S:
        raise InvalidRequest(f"invalid wait {str(value)[:40]!r}: seconds above 0, or \"inf\"")
    return float(value)


def reason(value) -> str:
    if value not in REASONS:
        raise InvalidRequest(f"invalid reason {str(value)[:40]!r}: one of {', '.join(REASONS)}")
    return value


def kind(value) -> str:
    from ..request import HEARTBEAT
    if value not in HEARTBEAT:
        raise InvalidRequest(f"invalid kind {str(value)[:40]!r}: a heartbeat renews "
                             f"{', '.join(HEARTBEAT)} (a manual reservation keeps its "
                             "duration)")
    return value


def note(value) -> str:
    from ..text import check_note
    if not isinstance(value, str):
        raise InvalidRequest(f"invalid note {str(value)[:40]!r}: text")
    return check_note(value)


def event_types(value) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 64:
        raise InvalidRequest(f"invalid events {str(value)[:40]!r}: a list of event types")
    return [name("event type", 64)(e) for e in value]


ident = name("id", MAX_ID)
def pid(value) -> int:
    return whole(value, "process id", 1, 2**31 - 1)


def json_object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidRequest(f"invalid {what} {str(value)[:40]!r}: a JSON object")
    return value
