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


def store_identity(url: str) -> str:
    """Which Redis (and database) a URL names, without user or password: what a daemon
    tells its clients so that they can tell whether it serves the store they asked for."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        return url.split("@")[-1]
    query = "&".join(q for q in parts.query.split("&")
                     if q and not q.lower().startswith(("password=", "username=")))
    if parts.scheme == "unix":
        return f"unix://{parts.path}" + (f"?{query}" if query else "")
    path = parts.path if parts.path not in ("", "/") else "/0"
    return urlunsplit((parts.scheme, netloc, path, query, ""))


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
