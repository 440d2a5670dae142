"""Redis URLs: checked where they are configured, redacted where they are shown. Apart from
store.py so that reading the config never imports redis-py (a command through the daemon
does not need it).

The common forms, scheme://[user:password@]host[:port][/path][?query], are read with one
pattern; any other goes through urllib.parse, whose import (~2 ms) the everyday commands
with a configured redis_url would otherwise pay. Both ways give the same answers."""

from __future__ import annotations

import re

from .errors import InvalidRequest

_URL_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
# scheme, user info, host, port, path, query; no brackets, spaces, fragment or stray "@"
# (compiled and cached by re when first used)
_PLAIN = (r"(rediss?(?:\+cluster)?|unix)://(?:([^\s/?#@\[\]]*)@)?([A-Za-z0-9._-]*)"
          r"(?::([0-9]{1,5}))?(/[^\s?#]*)?(?:\?([^\s#]*))?")


def _plain(url: str) -> tuple | None:
    """(scheme, host, port or None, path, query) of a URL of the common forms whose port is
    in range, lowercased as urlsplit gives them; None for any other URL."""
    found = parts(url)
    return None if found is None else (found[0], *found[3:])


def parts(url: str) -> tuple | None:
    """(scheme, user, password, host, port or None, path, query) of a URL of the common
    forms whose port is in range (user and password still quoted, "" when absent); None
    for any other URL."""
    match = re.fullmatch(_PLAIN, url)
    if match is None:
        return None
    scheme, userinfo, host, port, path, query = match.groups()
    if port is not None and int(port) > 65535:
        return None
    user, _, password = (userinfo or "").partition(":")
    return (scheme, user, password, host.lower(), None if port is None else int(port),
            path or "", query or "")


def redacted(url: str) -> str:
    """The URL with any password replaced, fit for error messages and logs."""
    from urllib.parse import urlsplit, urlunsplit
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
    plain = _plain(url.strip())
    if plain is None or not (plain[1] or plain[0] == "unix"):
        return _identity_of_any(url)
    scheme, host, port, path, query = plain
    query = _without_credentials(query)
    if scheme == "unix":
        return f"unix://{path}" + (f"?{query}" if query else "")
    netloc = host if port is None else f"{host}:{port}"
    return f"{scheme}://{netloc}{path if path not in ('', '/') else '/0'}" + \
        (f"?{query}" if query else "")


def _identity_of_any(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        return url.split("@")[-1]
    query = _without_credentials(parts.query)
    if parts.scheme == "unix":
        return f"unix://{parts.path}" + (f"?{query}" if query else "")
    path = parts.path if parts.path not in ("", "/") else "/0"
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def _without_credentials(query: str) -> str:
    return "&".join(q for q in query.split("&")
                    if q and not q.lower().startswith(("password=", "username=")))


def check_url(url: str) -> str:
    if _plain(url) is not None:
        return url  # one of the schemes, a port in range: what urlsplit would accept
    from urllib.parse import urlsplit
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
