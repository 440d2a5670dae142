"""Redis: the connection, key names and Lua scripts. The only module that knows keys."""

from __future__ import annotations

import json
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.exceptions import LockError

from .errors import BackendUnavailable, CorruptState, InvalidRequest

SCRIPTS = ("allocate", "release", "heartbeat", "sweep", "pool", "enqueue", "queue_heartbeat",
           "leave", "usage")
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


def _load_sources() -> dict[str, str]:
    lua = resources.files("canhazgpu") / "lua"
    lib = (lua / "_lib.lua").read_text()
    return {name: lib + "\n" + (lua / f"{name}.lua").read_text() for name in SCRIPTS}


class Store:
    """One Redis connection pool plus the scripts, for the keys of one host."""

    def __init__(self, url: str, host: str, *, client: aioredis.Redis | None = None,
                 explain=None) -> None:
        self.url = check_url(url)
        self._explain = explain  # err -> the "cannot reach" line naming where the URL came from
        self.host = host
        self.prefix = f"canhazgpu:{{{host}}}"
        self.channel = f"{self.prefix}:events"
        self.redis = client or aioredis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30
        )
        self._scripts: dict | None = None

    # ---------------------------------------------------------------- keys
    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def lease_key(self, gpu: int) -> str:
        return f"{self.prefix}:lease:{gpu}"

    def base_keys(self) -> list[str]:
        return [self.key(k) for k in
                ("pool", "holds", "released", "history", "seq", "queue", "waiters", "usage",
                 "ended")]

    def keys_for(self, count: int) -> list[str]:
        return self.base_keys() + [self.lease_key(i) for i in range(count)]

    @property
    def expired_channel(self) -> str:
        """Where Redis announces expired keys of our database (keyspace notifications)."""
        db = self.redis.connection_pool.connection_kwargs.get("db", 0)
        return f"__keyevent@{db}__:expired"

    def gpu_of_lease_key(self, key: str) -> int | None:
        """The GPU a lease key belongs to, or None for any other key."""
        head = f"{self.prefix}:lease:"
        if key.startswith(head) and key[len(head):].isdigit():
            return int(key[len(head):])
        return None

    # ---------------------------------------------------------------- scripts
    async def run(self, name: str, count: int, args: list) -> tuple[str, str]:
        """Run one state-change script over a pool of `count` GPUs; (status, data)."""
        if self._scripts is None:
            self._scripts = {n: self.redis.register_script(src)
                             for n, src in _load_sources().items()}
        argv = [self.channel, self.host, *(str(a) for a in args)]
        reply = await self.guard(self._scripts[name](keys=self.keys_for(count), args=argv))
        if not isinstance(reply, list) or not reply:
            raise CorruptState(f"script {name} returned {reply!r}")
        status = reply[0]
        data = reply[1] if len(reply) > 1 else ""
        return status, data

    async def guard(self, awaitable):
        """Await a Redis call, turning connection trouble into one BackendUnavailable line."""
        try:
            return await awaitable
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as err:
            raise BackendUnavailable(self.unreachable(err)) from None
        except rexc.AuthenticationError as err:
            raise BackendUnavailable(
                f"Redis at {redacted(self.url)} refused the credentials ({err}): "
                "fix the user/password in CANHAZGPU_REDIS_URL"
            ) from None
        except rexc.ResponseError as err:
            if "NOAUTH" in str(err) or "WRONGPASS" in str(err):
                raise BackendUnavailable(
                    f"Redis at {redacted(self.url)} needs a password ({err}): "
                    "put it in CANHAZGPU_REDIS_URL as redis://:PASSWORD@host:port/0"
                ) from None
            raise

    def unreachable(self, err: BaseException) -> str:
        if self._explain is not None:
            return self._explain(err)
        return (
            f"cannot reach Redis at {redacted(self.url)} ({err or type(err).__name__}): "
            "start one with 'canhazgpu serve --embedded-redis', or point "
            "CANHAZGPU_REDIS_URL at a running Redis"
        )

    # ---------------------------------------------------------------- reads
    async def read_state(self) -> dict:
        """Pool, holds, releases, queue and Redis time in one transaction: a consistent view."""
        pool = await self.guard(self.redis.hgetall(self.key("pool")))
        count = int(pool.get("count", 0) or 0)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.hgetall(self.key("pool"))
            pipe.hgetall(self.key("holds"))
            pipe.hgetall(self.key("released"))
            pipe.lrange(self.key("queue"), 0, -1)
            pipe.hgetall(self.key("waiters"))
            if count:
                pipe.mget([self.lease_key(i) for i in range(count)])
            replies = await self.guard(pipe.execute())
        now, pool, holds, released, queue, waiters = replies[:6]
        leases = replies[6] if count else []
        if int(pool.get("count", 0) or 0) != count:  # resized between the two reads
            return await self.read_state()
        holds = {int(k): self.decode(self.key("holds"), v) for k, v in holds.items()}
        leases = dict(enumerate(leases))
        return {
            "now_ms": int(now[0]) * 1000 + int(now[1]) // 1000,
            "pool": pool,
            "holds": holds,
            # a hold is live only while its lease names it: the one place that decides
            "live": {i: h for i, h in holds.items() if leases.get(i) == h.get("rid")},
            "released": released,
            "queue": queue,
            "waiters": {k: self.decode(self.key("waiters"), v) for k, v in waiters.items()},
        }

    @staticmethod
    def decode(key: str, raw: str):
        try:
            return json.loads(raw)
        except (TypeError, ValueError):
            raise CorruptState(f"corrupt value in Redis key {key}: {raw[:80]!r}") from None

    async def history(self, since_ms: int) -> list[dict]:
        rows = await self.guard(self.redis.zrangebyscore(self.key("history"), since_ms, "+inf"))
        return [self.decode(self.key("history"), r) for r in rows]

    async def read_usage(self) -> dict | None:
        raw = await self.guard(self.redis.get(self.key("usage")))
        return self.decode(self.key("usage"), raw) if raw else None

    # ---------------------------------------------------------------- daemon
    def host_lock(self, token: str, ttl_s: float) -> HostLock:
        return HostLock(self, token, ttl_s)

    async def enable_expiry_notifications(self) -> str | None:
        """Make Redis announce expired keys, keeping the flags already set.

        Returns None when notifications are on, else why they cannot be (CONFIG refused).
        """
        try:
            current = (await self.guard(self.redis.config_get("notify-keyspace-events"))
                       ).get("notify-keyspace-events", "")
            wanted = current + ("E" if "E" not in current else "") + \
                ("x" if "x" not in current and "A" not in current else "")
            if wanted != current:
                await self.guard(self.redis.config_set("notify-keyspace-events", wanted))
        except rexc.ResponseError as err:
            return str(err)
        return None

    async def close(self) -> None:
        await self.redis.aclose()

    async def server_info(self) -> dict:
        """The Redis version, and its appendonly, appendfsync and save settings under
        "persistence" (None when it refuses CONFIG, as managed services often do)."""
        info = await self.guard(self.redis.info("server"))
        try:
            found = await self.guard(self.redis.config_get("append*"))
            found.update(await self.guard(self.redis.config_get("save")))
        except rexc.ResponseError:
            found = None
        return {"version": info.get("redis_version", "unknown"),
                "persistence": found and {k: found.get(k, "") for k in
                                          ("appendonly", "appendfsync", "save")}}

    async def daemon_holder(self) -> str | None:
        """What the host's daemon wrote into its lock (machine, PID, start), or None."""
        return await self.guard(self.redis.get(self.key("daemon")))


class HostLock:
    """The host's one-daemon lock: a key holding its owner's token, with a TTL that the owner
    keeps renewing (so a daemon that dies frees it by itself)."""

    def __init__(self, store: Store, token: str, ttl_s: float) -> None:
        self.store = store
        self.token = token
        self._lock = store.redis.lock(store.key("daemon"), timeout=ttl_s, blocking=False)

    async def acquire(self) -> bool:
        return bool(await self.store.guard(self._lock.acquire(token=self.token)))

    async def renew(self) -> bool:
        """Reset the TTL; False when the key is no longer ours."""
        try:
            await self.store.guard(self._lock.reacquire())
        except LockError:
            return False
        return True

    async def holder(self) -> str | None:
        return await self.store.guard(self.store.redis.get(self.store.key("daemon")))

    async def break_stale(self, holder: str) -> None:
        """Delete the key if it still holds `holder` (a dead daemon's token)."""
        try:
            await self.store.guard(self._lock.do_release(holder))
        except LockError:
            pass

    async def release(self) -> None:
        try:
            await self.store.guard(self._lock.release())
        except LockError:
            pass
