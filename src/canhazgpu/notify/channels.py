"""The channels a notification goes through: the user's terminals, a webhook, Apprise.

Each send is blocking (a tty write, an HTTP request, Apprise's clients) and runs in a
worker thread with a deadline (notify/service.py); each raises DeliveryError with one line.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import CanHazGpuError
from ..urls import redacted

TTY_DIRS = (Path("/dev/pts"), Path("/dev"))
_TTY_NAME = re.compile(r"^(\d+|tty\d+)$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keep \t and \n
MISSING_APPRISE = ("the apprise channel needs the Apprise library: pip install "
                   "'canhazgpu[notify]' (or pip install apprise) where the daemon runs")


class DeliveryError(CanHazGpuError):
    """A notification could not be delivered (the message says where and why)."""


def clean(text: str) -> str:
    """Text safe for a terminal: what users or processes control never carries escapes."""
    return _CONTROL.sub("?", text)


# ---------------------------------------------------------------------- terminal
def candidate_ttys() -> list[Path]:
    """Login terminals of this machine: /dev/pts/N and the consoles /dev/ttyN."""
    found = []
    for base in TTY_DIRS:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        found += [base / n for n in names if _TTY_NAME.match(n)
                  and (base.name == "pts") == n.isdigit()]
    return sorted(found)


def ttys_of(uid: int, candidates=None) -> list[Path]:
    """The terminals owned by `uid` that accept messages (`mesg y`: group-writable), like
    write(1) finds them; never another user's."""
    found = []
    for path in candidate_ttys() if candidates is None else candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_uid == uid and st.st_mode & stat.S_IWGRP:
            found.append(Path(path))
    return found


def write_terminals(uid: int, title: str, body: str, candidates=None) -> int:
    """Write the message on each of the user's terminals; returns how many took it."""
    stamp = time.strftime("%H:%M")
    text = f"\r\n\aMessage from {clean(title)} at {stamp} ...\r\n" + \
        clean(body).replace("\n", "\r\n") + "\r\nEOF\r\n"
    written = 0
    for path in ttys_of(uid, candidates):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != uid:  # changed hands since we looked: not theirs
                continue
            os.write(fd, text.encode(errors="replace"))
            written += 1
        except OSError:
            continue  # a full or hung-up terminal: the others still get it
        finally:
            os.close(fd)
    if not written:
        raise DeliveryError(f"no terminal of uid {uid} accepts messages (not logged in, or "
                            "'mesg n')")
    return written


# ---------------------------------------------------------------------- webhook
def post_webhook(url: str, payload: dict, timeout_s: float) -> int:
    """POST the payload as JSON; the HTTP status (2xx) or DeliveryError."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "canhazgpu"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:  # noqa: S310
            return reply.status
    except urllib.error.HTTPError as err:
        raise DeliveryError(f"webhook {redacted(url)} answered HTTP {err.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        why = getattr(err, "reason", None) or err
        raise DeliveryError(f"webhook {redacted(url)} failed: {why}") from None


# ---------------------------------------------------------------------- apprise
def send_apprise(url: str, title: str, body: str) -> None:
    try:
        import apprise
    except ImportError:
        raise DeliveryError(MISSING_APPRISE) from None
    client = apprise.Apprise()
    if not client.add(url):
        raise DeliveryError(f"Apprise does not understand the URL {redacted(url)}: see "
                            "https://github.com/caronc/apprise/wiki for the URL of each service")
    if not client.notify(title=title, body=body):
        raise DeliveryError(f"Apprise could not deliver to {redacted(url)} (the daemon's log "
                            "has Apprise's reason)")
