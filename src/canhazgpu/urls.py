"""Redis URLs: checked where they are configured, redacted where they are shown. Apart from
store.py so that reading the config never imports redis-py (a command through the daemon
does not need it)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from .errors import InvalidRequest

_URL_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def redacted(url: str) -> str:
    """The URL with any password replaced, fit for error messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("@")[-1]
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def check_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number from 0 to 65535)
        scheme = parts.scheme
    except ValueError as err:
        raise InvalidRequest(f"invalid Redis URL {redacted(url)!r} ({err}): use "
                             "redis://[user:password@]host:port/db") from None
    if scheme not in _URL_SCHEMES:
        raise InvalidRequest(
            f"invalid Redis URL {redacted(url)!r}: use redis://[user:password@]host:port/db, "
            "rediss://... for TLS, unix:///path/to/redis.sock, or "
            "redis+cluster://host:port for a Redis Cluster"
        )
    return url
