"""Redis URLs: checked where they are configured, redacted where they are shown. Apart from
store.py so that reading the config never imports redis-py (a command through the daemon
does not need it)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from .errors import InvalidRequest

_URL_SCHEMES = ("redis", "rediss", "unix")


def redacted(url: str) -> str:
    """The URL with any password replaced, fit for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def check_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in _URL_SCHEMES:
        raise InvalidRequest(
            f"invalid Redis URL {redacted(url)!r}: use redis://[user:password@]host:port/db, "
            "rediss://... for TLS, or unix:///path/to/redis.sock"
        )
    return url
