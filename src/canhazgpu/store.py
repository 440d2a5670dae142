"""Redis: the connection, key names and Lua scripts. The only module that knows keys, with
layout.py: its redis-free half (key names, the scripts' source, decoding the reads), which
the CLI's blocking reads (quickread.py) share."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import anyio
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import LockError

from .errors import BackendUnavailable, CorruptState
from .lane import Lane, Opener
from .layout import (ARGS, KEYS, REGISTRY_KEY, WITHOUT_LIB, Keys,  # noqa: F401 (theirs)
                     _int, check_reply, decode_registry, lua_name, script_source)
from .model import Record, State, Usage
from .urls import check_url, redacted  # noqa: F401 (redacted: used by the daemon, tests)

MAX_CONNECTIONS = 32  # per process (the daemon's subscription is one of them)
POOL_WAIT_S = 30.0  # how long a call waits for a free connection before it fails
# Every host's event channel (canhazgpu:{HOST}:events), for one subscription to all hosts.
ALL_HOSTS_EVENTS = "canhazgpu:*:events"
_CLUSTER_DOWN = (rexc.ConnectionError, rexc.TimeoutError, OSError, rexc.ClusterError,
                 rexc.RedisClusterException)



def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme.endswith("+cluster")


def connect(url: str) -> aioredis.Redis | RedisCluster:
    """A client for `url`: redis-py's cluster client for redis+cluster://, else a plain one."""
    if is_cluster(url):
        plain = url.replace("+cluster://", "://", 1)
        return RedisCluster.from_url(plain, decode_responses=True, socket_connect_timeout=5)
    # A bounded pool that waits for a free connection rather than failing: however many
    # clients the daemon serves at once, it never opens more than MAX_CONNECTIONS.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30,
        max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_S)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: closed with it


class Store(Keys):
    """One Redis connection pool plus the scripts, for the keys of one host.

    On a Redis Cluster every key of the host lives in one slot (the {HOST} hash tag): the
    scripts go through the cluster client, which follows slot moves; transactions and the
    keyspace notifications of the host's keys need the node serving that slot (node())."""

    def __init__(self, url: str, host: str, *, client=None, nodes: dict | None = None,
                 explain=None, scripts: dict | None = None, lane: Lane | None = None) -> None:
        self.url = check_url(url)
        self._explain = explain  # err -> the "cannot reach" line naming where the URL came from
        super().__init__(host)
        self.redis = client or connect(url)
        self.cluster = isinstance(self.redis, RedisCluster)
        self._nodes = {} if nodes is None else nodes  # cluster: node name -> its own client
        self._owner = client is None  # close() closes what we opened, not a shared client
        self._scripts: dict = {} if scripts is None else scripts  # shared with for_host()
        self.trouble = None  # the daemon of an embedded Redis: () -> why it is down, or None
        # the scripts of this process, pipelined on one connection (a single Redis; shared
        # with for_host())
        self._lane = lane if lane is not None or self.cluster else \
            Lane(self.redis.connection_pool, url)

    def for_host(self, host: str) -> Store:
        """The store of another host, on this store's connections (closed with this one)."""
        return Store(self.url, host, client=self.redis, nodes=self._nodes,
                     explain=self._explain, scripts=self._scripts, lane=self._lane)

    async def subscription(self):
        """A pub/sub connection to the node serving this host's slot: the lane's own kind
        (lane.Subscription) where the lane serves the URL itself, else redis-py's."""
        opener = self._lane.pool if self._lane is not None else None
        if isinstance(opener, Opener):
            return await opener.subscription()
        return (await self.node()).pubsub()

    async def node(self) -> aioredis.Redis:
        """The client of the node serving this host's slot: the one client when not on a
        cluster. Where a slot moved or its master failed over, forget_node() first."""
        if not self.cluster:
            return self.redis
        await self.guard(self.redis.initialize())
        found = self.redis.get_node_from_key(self.key("pool"))
        if found.name not in self._nodes:
            kwargs = {k: v for k, v in self.redis.get_connection_kwargs().items()
                      if k in ("username", "password", "ssl", "ssl_cert_reqs", "ssl_ca_certs",
                               "ssl_certfile", "ssl_keyfile", "socket_connect_timeout")}
            self._nodes[found.name] = aioredis.Redis(host=found.host, port=found.port,
                                                     decode_responses=True, **kwargs)
        return self._nodes[found.name]

    async def node_name(self) -> str:
        """Which node serves this host's slot now, as far as the cluster client knows."""
        if not self.cluster:
            return ""
        await self.guard(self.redis.initialize())
        return self.redis.get_node_from_key(self.key("pool")).name

    async def forget_node(self) -> None:
        """Re-learn the cluster's slots (after a failure or a MOVED reply)."""
        if self.cluster:
            try:
                await self.redis.nodes_manager.initialize()
            except _CLUSTER_DOWN:
                pass  # the next call says so, in one line

    async def at_once(self, build) -> list:
        """Commands on this host's keys as one MULTI/EXEC transaction (build(pipe) adds
        them), on the node serving the host's slot; once more after a slot move."""
        for attempt in (1, 2):
            client = await self.node()
            try:
                async with client.pipeline(transaction=True) as pipe:
                    build(pipe)
                    return await pipe.execute()
            except (rexc.RedisError, *_CLUSTER_DOWN) as err:
                if not (self.cluster and attempt == 1 and _slot_trouble(err)):
                    return await self.guard(_raise(err))  # one line naming the URL
                await self.forget_node()

    # ---------------------------------------------------------------- keys
    @property
    def expired_channel(self) -> str:
        """Where Redis announces expired keys of our database (keyspace notifications)."""
        db = 0 if self.cluster else self.redis.connection_pool.connection_kwargs.get("db", 0)
        return f"__keyevent@{db}__:expired"

    def waiter_channel(self, wid: str) -> str:
        """Where a waiter hears of its own grant or departure."""
        return f"{self.channel}:{wid}"

    # ---------------------------------------------------------------- scripts
    async def run(self, name: str, span: int, /, **args) -> tuple[str, str]:
        """Run one state-change script with the keys of `span` GPUs; (status, data).

        `args` are the script's values by name (ARGS[name], all of them)."""
        return await self._call(name, self.keys_for(span), args)

    async def _call(self, name: str, keys: list[str], args: dict) -> tuple[str, str]:
        reply = await self._eval(name, keys, args)
        return reply[0], (reply[1] if len(reply) > 1 else "")

    async def _eval(self, name: str, keys: list[str], args: dict, client=None) -> list:
        """Script `name`'s whole reply: a list whose first item is its status. client: a
        pipeline to queue it on (the reply then comes from its execute(): check_reply())."""
        if set(args) != set(ARGS[name]):
            raise TypeError(f"script {name} takes {ARGS[name]}, not {tuple(args)}")
        if name not in self._scripts:
            self._scripts[name] = self.redis.register_script(script_source(name))
        argv = [self.channel, self.host, *(str(args[a]) for a in ARGS[name])]
        if client is not None:
            return await self._scripts[name](keys=keys, args=argv, client=client)
        if self._lane is not None:
            return check_reply(name, await self.guard(
                self._on_lane(self._scripts[name], keys, argv)))
        return check_reply(name, await self.guard(self._scripts[name](keys=keys, args=argv)))

    async def _on_lane(self, script, keys: list[str], argv: list[str]):
        """A script on this process's lane (lane.py); loaded first where Redis lost it, and
        sent again once on a new connection when the lane's was lost (a Redis restart), as
        redis-py's own retry does."""
        for attempt in (1, 2):
            try:
                return await self._lane.call("EVALSHA", script.sha, len(keys), *keys, *argv)
            except rexc.NoScriptError:
                await self.redis.script_load(script.script)
            except rexc.ConnectionError:
                if attempt == 2:
                    raise
        return await self._lane.call("EVALSHA", script.sha, len(keys), *keys, *argv)

    async def guard(self, awaitable):
        """Await a Redis call; every Redis failure becomes one line naming the URL."""
        try:
            return await awaitable
        except LockError:
            raise  # the host lock's own answer, not a failure
        except _CLUSTER_DOWN as err:
            raise BackendUnavailable(self.unreachable(err)) from None
        except rexc.AuthenticationError as err:
            raise BackendUnavailable(
                f"Redis at {redacted(self.url)} refused the credentials ({err}): "
                "fix the user/password in CANHAZGPU_REDIS_URL"
            ) from None
        except rexc.RedisError as err:
            if "No space left" in str(err) or str(err).startswith("MISCONF"):
                raise BackendUnavailable(no_space(f"Redis at {redacted(self.url)}", err)) \
                    from None
            if "NOAUTH" in str(err) or "WRONGPASS" in str(err):
                raise BackendUnavailable(
                    f"Redis at {redacted(self.url)} needs a password ({err}): "
                    "put it in CANHAZGPU_REDIS_URL as redis://:PASSWORD@host:port/0"
                ) from None
            raise BackendUnavailable(
                f"Redis at {redacted(self.url)} refused a command: {err}") from None

    def unreachable(self, err: BaseException) -> str:
        if self.trouble is not None and self.trouble():  # what its daemon knows (a full disk)
            return self.trouble()
        if self._explain is not None:
            return self._explain(err)
        return (
            f"cannot reach Redis at {redacted(self.url)} ({err or type(err).__name__}): "
            "start one with 'canhazgpu serve --embedded-redis', or point "
            "CANHAZGPU_REDIS_URL at a running Redis"
        )

    # ---------------------------------------------------------------- the registry
    async def register(self, op: str, entry: dict) -> None:
        """Write this host's registry entry (register.lua: op admin, up, down or retire)."""
        await self._call("register", [REGISTRY_KEY], {"op": op, "entry": json.dumps(entry)})

    async def registry_entry(self) -> dict | None:
        """This host's registry entry, or None (not registered, or unreadable)."""
        doc = await self.guard(self.redis.hget(REGISTRY_KEY, self.host))
        try:
            entry = json.loads(doc) if doc else None
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None

    async def registry(self) -> dict[str, dict]:
        return decode_registry(await self.guard(self.redis.hgetall(REGISTRY_KEY)))

    # ---------------------------------------------------------------- notification rules
    async def change_notify(self, op: str, uid: int, user: str, rule: str) -> tuple[str, str]:
        """Add or remove one of a user's own notification rules (notify.lua)."""
        return await self._call("notify", [self.key("notify")],
                                {"op": op, "uid": str(uid), "user": user, "rule": rule})

    async def notify_rules(self, uid: int | None = None) -> dict[int, dict]:
        """Users' own notification rules: uid -> {"user", "rules"} (one uid, or all).
        An unreadable entry is skipped: one user's corrupt rules never stop the others'."""
        key = self.key("notify")
        if uid is None:
            raw = await self.guard(self.redis.hgetall(key))
        else:
            doc = await self.guard(self.redis.hget(key, str(uid)))
            raw = {str(uid): doc} if doc else {}
        out = {}
        for field, doc in raw.items():
            try:
                entry = json.loads(doc)
                rules = entry["rules"]
                out[int(field)] = {"user": str(entry["user"]),
                                   "rules": [r for r in rules if isinstance(r, dict)]
                                   if isinstance(rules, list) else []}
            except (ValueError, KeyError, TypeError):
                continue
        return out

    # ---------------------------------------------------------------- reads
    async def read_pool(self) -> dict:
        return await self.guard(self.redis.hgetall(self.key("pool")))

    async def read_state(self, queue: bool = True) -> State:
        """Pool, holds, releases and queue at one instant (one transaction), decoded.
        queue=False: without the waiters (State.queue empty), for what shows only the GPUs:
        a status of a host with thousands queued need not decode them."""
        count = _int(self.key("pool"), (await self.read_pool()).get("count", "0"))

        def build(pipe):
            pipe.time()
            pipe.hgetall(self.key("pool"))
            pipe.hgetall(self.key("holds"))
            pipe.hgetall(self.key("released"))
            if queue:
                pipe.zrange(self.key("q:order"), 0, -1)
                pipe.hgetall(self.key("q:waiters"))
                pipe.zrange(self.key("q:deadlines"), 0, -1, withscores=True)
            else:  # which reservations are still waiting: their ids are enough
                pipe.hkeys(self.key("q:waiters"))
            if count:
                pipe.mget([self.lease_key(i) for i in range(count)])
        replies = await self.at_once(build)
        now, pool, holds, released = replies[:4]
        if queue:
            order, waiters, deadlines = replies[4:7]
        else:
            order, waiters, deadlines = replies[4], {}, []
        leases = replies[-1] if count else []
        if _int(self.key("pool"), pool.get("count", "0")) != count:  # resized meanwhile
            return await self.read_state(queue)
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        return self.decode_state(now_ms, count, pool, holds, released, order, waiters,
                                  dict(deadlines), leases, queue)

    async def read_view(self) -> tuple[State, Usage | CorruptState | None]:
        """read_state() and read_usage() at one instant, in one read (view.lua: one
        round trip, routed by key on a cluster): the views across hosts read each host so.
        The snapshot is None when there is none, a CorruptState when it cannot be read
        (raised by the caller that needs it: the state is still good)."""
        return self.decode_view(await self._eval("view", self.keys_for(0),
                                                  {"lease_prefix": self.key("lease:")}))

    async def read_views(self, hosts: list[str]) -> dict:
        """read_view() of every host in `hosts`: one pipeline (one round trip) per Redis
        node, the nodes at once; host -> its read_view(), or the CorruptState of a host
        whose state cannot be read. On a cluster, a host whose slot moved meanwhile is
        read again through the cluster client (which follows the move)."""
        by_node: dict[int, tuple] = {}
        for store in (self.for_host(h) for h in hosts):
            client = await store.node()  # the one client when not on a cluster
            by_node.setdefault(id(client), (client, []))[1].append(store)
        out: dict = {}

        async def one_node(client, stores: list[Store]) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for store in stores:
                    await store._eval("view", *store.view_args(), client=pipe)
                try:
                    replies = await pipe.execute(raise_on_error=False)
                except (rexc.RedisError, *_CLUSTER_DOWN) as err:
                    if not self.cluster:
                        await self.guard(_raise(err))  # one line naming the URL
                    await self.forget_node()  # a node gone: each host read on its own
                    replies = [err] * len(stores)
            for store, reply in zip(stores, replies):
                try:
                    if isinstance(reply, Exception) and self.cluster and _slot_trouble(reply):
                        out[store.host] = await store.read_view()
                        continue
                    if isinstance(reply, Exception):
                        raise CorruptState(f"script view on host {store.host!r} failed: "
                                           f"{str(reply)[:200]}")
                    out[store.host] = store.decode_view(check_reply("view", reply))
                except CorruptState as err:
                    out[store.host] = err
        async with anyio.create_task_group() as tg:
            for client, stores in by_node.values():
                tg.start_soon(one_node, client, stores)
        return out

    async def time_ms(self) -> int:
        """Redis's clock now (the node of this host's slot, on a cluster)."""
        secs, micros = await self.guard((await self.node()).time())
        return int(secs) * 1000 + int(micros) // 1000

    async def history(self, since_ms: int) -> list[Record]:
        key = self.key("history")
        rows = await self.guard(self.redis.zrangebyscore(key, since_ms, "+inf"))
        out = []
        for raw in rows:
            try:
                doc = json.loads(raw)
                out.append(Record(gpu=int(doc["gpu"]), rid=str(doc["rid"]),
                                  user=str(doc["user"]), kind=str(doc.get("kind") or ""),
                                  start_ms=int(doc["start_ms"]), end_ms=int(doc["end_ms"]),
                                  reason=str(doc.get("reason") or ""),
                                  note=str(doc.get("note") or "")))
            except (TypeError, ValueError, KeyError):
                raise CorruptState(f"corrupt value in Redis key {key}: {raw[:80]!r}") from None
        return out

    async def read_usage(self) -> tuple[int, Usage | None]:
        """(Redis time now, the daemon's last snapshot or None), both in Redis's clock."""
        (secs, micros), (doc, scanned) = await self.at_once(
            lambda pipe: pipe.time().hmget(self.key("snapshot"), "doc", "scanned_ms"))
        return int(secs) * 1000 + int(micros) // 1000, self.snapshot(doc, scanned)

    async def events_since(self, seq: int, limit: int = 10000) -> list[dict]:
        """The host's events after `seq`, oldest first, from its capped stream (the newest
        STREAM_CAP or so); the caller tells a gap by the first one's seq."""
        key, found, top = self.key("stream"), [], "+"
        while len(found) < limit:
            batch = await self.guard(self.redis.xrevrange(key, top, "-", count=200))
            for entry_id, fields in batch:
                try:
                    doc = json.loads(fields.get("doc", ""))
                    if int(doc["seq"]) <= seq:
                        return found[::-1]
                except (TypeError, ValueError, KeyError):
                    continue  # a foreign entry: not ours to replay
                found.append(doc)
            if len(batch) < 200:
                break
            top = "(" + batch[-1][0]
        return found[::-1]

    # ---------------------------------------------------------------- daemon
    def host_lock(self, token: str, ttl_s: float) -> HostLock:
        return HostLock(self, token, ttl_s)

    async def enable_expiry_notifications(self) -> str | None:
        """Make Redis announce expired keys, keeping the flags already set.

        Returns None when notifications are on, else why they cannot be (CONFIG refused).
        """
        try:
            node = await self.node()  # keyspace notifications are the slot owner's own
            current = (await node.config_get("notify-keyspace-events")
                       ).get("notify-keyspace-events", "")
            wanted = current + ("E" if "E" not in current else "") + \
                ("x" if "x" not in current and "A" not in current else "")
            if wanted != current:
                await node.config_set("notify-keyspace-events", wanted)
        except rexc.ResponseError as err:
            return str(err)
        except _CLUSTER_DOWN as err:
            raise BackendUnavailable(self.unreachable(err)) from None
        return None

    async def last_seq(self) -> int:
        """The sequence number of the host's latest event (0: none yet)."""
        return _int(self.key("seq"), await self.guard(self.redis.get(self.key("seq"))))

    async def ping(self) -> None:
        await self.guard(self.redis.ping())

    async def close(self) -> None:
        if self._owner:
            if self._lane is not None:
                await self._lane.aclose()
            for client in self._nodes.values():
                await client.aclose()
            await self.redis.aclose()

    async def server_info(self) -> dict:
        """The Redis version, and its appendonly, appendfsync and save settings under
        "persistence" (None when it refuses CONFIG, as managed services often do)."""
        node = await self.node()  # on a cluster: the node serving this host's slot
        info = await self.guard(node.info("server"))
        aof = await self.guard(node.info("persistence"))
        if aof.get("aof_last_write_status") == "err":
            raise BackendUnavailable(no_space(f"Redis at {redacted(self.url)}",
                                              "its last AOF write failed"))
        try:
            found = await self.guard(node.config_get("append*"))
            found.update(await self.guard(node.config_get("save")))
        except rexc.ResponseError:
            found = None
        return {"version": info.get("redis_version", "unknown"),
                "persistence": found and {k: found.get(k, "") for k in
                                          ("appendonly", "appendfsync", "save")}}

    async def daemon_holder(self) -> str | None:
        """What the host's daemon wrote into its lock (machine, PID, start), or None."""
        return await self.guard(self.redis.get(self.key("daemon")))


def no_space(who: str, why) -> str:
    """The one line for a Redis that cannot write its AOF (a full disk)."""
    return (f"{who} cannot write its AOF: no space left on its disk ({why}); nothing is "
            "lost, ask an admin to free space")


async def _raise(err: BaseException):
    raise err


def _slot_trouble(err: BaseException) -> bool:
    """A failure that a fresh look at the cluster's slots may cure: the node is gone, or
    the slot is served elsewhere now."""
    if isinstance(err, rexc.ResponseError):
        return any(word in str(err) for word in ("MOVED", "EXECABORT", "CLUSTERDOWN"))
    return True


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

    async def without_ttl(self) -> bool:
        """Whether the key exists with no TTL: no daemon ever leaves it so (a hand-made or
        restored key), and it would otherwise keep every daemon out forever."""
        return await self.store.guard(self.store.redis.pttl(self.store.key("daemon"))) == -1

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
