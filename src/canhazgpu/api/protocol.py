"""The wire: one JSON document per line, version VERSION (docs/api.md).

A connection carries a request, then its replies: zero or more stream lines
(`progress`, `warn`, `event`) and one last line (`ok` or `error`); a short request with
`"keep": true` leaves it open for the next. Errors travel as the
name of their CanHazGpuError class, the one-line message and the exit code, so the CLI
says and exits exactly what it would in direct mode. Imports nothing heavy: the CLI uses
it on its fast path.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .. import errors
from ..model import GpuProcess, GpuState, GpuUsage, Hold, PoolView, Waiter

if TYPE_CHECKING:
    from ..hosts import HostView
    from ..request import QueueStatus, Request, Reservation

VERSION = 1
MAX_LINE = 64 * 1024  # a request or reply line longer than this is refused
KEEP_IDLE_S = 60.0  # a kept connection with no next request within this is closed
MAX_HOSTS = 10000  # host names in one request
MAX_HOST_NAME = 200


class ProtocolError(errors.CanHazGpuError):
    """The other side broke the protocol (garbage, unknown operation, wrong version)."""

    exit_code = 2


class RemoteError(errors.CanHazGpuError):
    """An error the daemon raised whose class the client does not know: same text and
    exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def dump(doc: dict) -> bytes:
    return json.dumps({"v": VERSION, **doc}, separators=(",", ":")).encode() + b"\n"


def load(line: bytes) -> dict:
    """One received line as a document; ProtocolError for anything else."""
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("not a JSON document") from None
    except RecursionError:
        raise ProtocolError("a JSON document nested too deeply") from None
    if not isinstance(doc, dict):
        raise ProtocolError("not a JSON object")
    if doc.get("v") != VERSION:
        raise ProtocolError(f"protocol version {doc.get('v')!r} is not {VERSION}: "
                            "use a canhazgpu of the daemon's version")
    return doc


# ---------------------------------------------------------------------- errors
def error_doc(err: errors.CanHazGpuError) -> dict:
    """An error as sent: its class, message, exit code and its own fields (NotEnoughGpus'
    requested/available/unreserved), so the client raises the same error."""
    fields = {k: v for k, v in vars(err).items()
              if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))}
    return {"error": {"type": type(err).__name__, "message": str(err),
                      "exit_code": err.exit_code, "fields": fields}}


def raise_error(doc: dict) -> None:
    """Raise the error a reply's `error` stands for: our own class when it is one of
    errors.py (NotEnoughGpus, NotOwner, ...), else a RemoteError with its exit code."""
    message, code = str(doc.get("message", "")), int(doc.get("exit_code", 1))
    cls = getattr(errors, str(doc.get("type", "")), None)
    if isinstance(cls, type) and issubclass(cls, errors.CanHazGpuError) \
            and cls.exit_code == code:
        err = cls.__new__(cls)
        Exception.__init__(err, message)
        fields = doc.get("fields")
        for key, value in (fields.items() if isinstance(fields, dict) else ()):
            if isinstance(key, str) and not key.startswith("_"):
                setattr(err, key, value)
        raise err
    raise RemoteError(message, code)


# ---------------------------------------------------------------------- values
def encode(value):
    """A core value (dataclasses, tuples, dicts) as JSON-able data: what asdict() gives,
    without its deep copies (a view of many GPUs and waiters is encoded on every status)."""
    fields = getattr(type(value), "__dataclass_fields__", None)
    if fields is not None:
        return {name: encode(getattr(value, name)) for name in fields}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


def _build(cls, doc: dict, **nested):
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()
                  if k not in nested}, **nested)


def waiter(doc: dict) -> Waiter:
    return _build(Waiter, doc)


def usage(doc: dict | None) -> GpuUsage | None:
    if doc is None:
        return None
    return _build(GpuUsage, doc, processes=tuple(_build(GpuProcess, p)
                                                 for p in doc.get("processes", ())))


def view(doc: dict) -> PoolView:
    gpus = tuple(_build(GpuState, g, hold=_build(Hold, g["hold"]) if g.get("hold") else None,
                        usage=usage(g.get("usage"))) for g in doc["gpus"])
    return _build(PoolView, doc, gpus=gpus, queue=tuple(waiter(w) for w in doc["queue"]))


def reservation(doc: dict) -> Reservation:
    from ..request import Reservation  # (not imported by status: start-up time)
    return _build(Reservation, doc, record=dict(doc["record"]))


def request(doc: dict) -> Request:
    """A Request from a client: its fields converted here, its values checked by Request."""
    from ..request import Request
    try:
        ids = doc.get("ids")
        return Request(count=None if doc.get("count") is None else int(doc["count"]),
                       ids=None if ids is None else tuple(int(i) for i in ids),
                       kind=str(doc.get("kind", "manual")),
                       duration_s=float(doc.get("duration_s", 1800.0)),
                       note=str(doc.get("note", "")), claim_own=bool(doc.get("claim_own")))
    except (TypeError, ValueError, AttributeError, OverflowError):
        raise errors.InvalidRequest(f"invalid request {str(doc)[:80]}") from None


JOB_EVENTS = ("job_submitted", "job_started", "job_ended")
JOB_STATES = ("queued", "starting", "running", "done", "failed", "cancelled")
MAX_JOB_TEXT = 500  # a job's reason; its name: 100, as submit cuts it
MAX_JOB_GPUS = 4096


def job_text(value, what: str, limit: int = 100) -> str:
    """A job's name (or other text of a job event): printable, at most `limit` long."""
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise errors.InvalidRequest(f"invalid job {what} {str(value)[:40]!r}: printable text "
                                    f"up to {limit} characters")
    return value


def _job_number(value, what: str, low: int, high: int, none: bool = False):
    if (none and value is None) or (isinstance(value, int) and not isinstance(value, bool)
                                    and low <= value <= high):
        return value
    raise errors.InvalidRequest(f"invalid job {what} {str(value)[:40]!r}: a number from "
                                f"{low} to {high}")


def job_event(doc, user: str, uid: int) -> dict:
    """A detached job's step (docs/jobs.md) as a client announces it: one of JOB_EVENTS,
    every field checked and bounded here, the user and uid the kernel named."""
    if not isinstance(doc, dict) or doc.get("type") not in JOB_EVENTS:
        kind = doc.get("type") if isinstance(doc, dict) else doc
        raise errors.InvalidRequest(f"invalid job event type {str(kind)[:40]!r}: one of "
                                    f"{', '.join(JOB_EVENTS)}")
    gpus = doc.get("gpus") or []
    if not isinstance(gpus, list) or len(gpus) > MAX_JOB_GPUS or not all(
            isinstance(g, int) and not isinstance(g, bool) and 0 <= g < 2**31 for g in gpus):
        raise errors.InvalidRequest(f"invalid job event gpus {str(gpus)[:40]!r}: GPU ids")
    if doc.get("state") not in JOB_STATES:
        raise errors.InvalidRequest(f"invalid job event state {str(doc.get('state'))[:40]!r}:"
                                    f" one of {', '.join(JOB_STATES)}")
    rid = doc.get("rid")
    return {"type": doc["type"], "job": _job_number(doc.get("job"), "id", 1, 2**63 - 1),
            "name": job_text(doc.get("name", ""), "name"), "user": user, "uid": uid,
            "rid": None if rid is None else job_text(rid, "reservation id", 64),
            "gpus": gpus, "state": doc["state"],
            "exit_code": _job_number(doc.get("exit_code"), "exit code", -2**31, 2**31 - 1,
                                     none=True),
            "reason": job_text(doc.get("reason", ""), "reason", MAX_JOB_TEXT), "kind": "job"}


def queue_status(doc: dict) -> QueueStatus:
    from ..request import QueueStatus
    return _build(QueueStatus, doc)


# ---------------------------------------------------------------------- across hosts
def host_name(value) -> str:
    """One host name as a client sends it (checked once, here)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_HOST_NAME \
            or not value.isprintable() or "," in value:
        raise errors.InvalidRequest(f"invalid host {str(value)[:80]!r}: one host name, "
                                    f"printable, up to {MAX_HOST_NAME} characters")
    return value


def host_names(value) -> list[str] | None:
    """The hosts a view across hosts spans: None (every registered host) or names."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_HOSTS:
        raise errors.InvalidRequest(f"invalid hosts {str(value)[:80]!r}: a list of up to "
                                    f"{MAX_HOSTS} host names, or null for every host")
    return [host_name(h) for h in value]


def host_view(doc: dict) -> HostView:
    from ..hosts import HostView
    return HostView(host=str(doc["host"]), entry=dict(doc["entry"]), daemon=str(doc["daemon"]),
                    view=view(doc["view"]) if doc.get("view") else None,
                    error=doc.get("error"))
