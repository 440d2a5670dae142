"""Direct mode's reads without an event loop: the store of the commands a person types
(`status`, `queue`, `hosts`, `status --all-hosts`, submit's pool size) over one blocking
connection (resp.py), without asyncio or redis-py. It makes the reads the async Store
makes for them (the read-only view.lua, one per host, pipelined) and decodes them the
same way (layout.py), so Core and the operation table answer as they always do.

Whatever else a command asks of the store (a change, a cluster, TLS, an error reply,
a Redis that does not answer) raises NeedsEventLoop before anything was changed or
printed: the CLI runs the command again with the async Store (cli/runner.py).
"""

from __future__ import annotations

from .errors import CorruptState, NeedsEventLoop
from .layout import REGISTRY_KEY, Keys, _pairs, check_reply, decode_registry, script_source


class QuickStore(Keys):
    """The reads of the views for one host; for_host() shares the connection."""

    def __init__(self, url: str, host: str, link: list | None = None) -> None:
        super().__init__(host)
        if link is None:
            from .resp import endpoint
            endpoint(url)  # NeedsEventLoop now for a URL that resp.py does not serve
        self.url = url
        self._link = [] if link is None else link  # [the connection], made when first used
        self._usage = None  # what the last view read of the snapshot: read_usage()'s answer

    def for_host(self, host: str) -> QuickStore:
        return QuickStore(self.url, host, self._link)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise NeedsEventLoop  # not a read of the views: the async Store does it

    def _node(self, key: str):
        """The connection for `key`: the one Redis, or the cluster node of its slot."""
        if not self._link:
            from .resp import connect
            self._link.append(connect(self.url))
        client = self._link[0]
        return client.node(key) if hasattr(client, "node") else client

    # ---------------------------------------------------------------- the reads
    async def read_pool(self) -> dict:
        return _pairs(self._node(self.key("pool")).call("HGETALL", self.key("pool")))

    async def read_state(self, queue: bool = True):
        """As Store.read_state, from one view read (whose snapshot read_usage() answers)."""
        return self._views([self], queue)[self.host][0]

    async def read_view(self):
        return self._views([self])[self.host]

    async def read_usage(self):
        """(Redis time, the snapshot) as the view just read saw them, else read now."""
        if self._usage is None:
            self._views([self])
        (now_ms, snap), self._usage = self._usage, None
        if isinstance(snap, CorruptState):
            raise snap
        return now_ms, snap

    async def read_views(self, hosts: list[str]) -> dict:
        """As Store.read_views: host -> (state, snapshot), or the CorruptState of a host
        whose state cannot be read; one pipeline per node. (Our own host's snapshot is
        kept for read_usage(), as read_state() keeps it.)"""
        return self._views([self if h == self.host else self.for_host(h) for h in hosts],
                           errors=True)

    async def registry(self) -> dict[str, dict]:
        return decode_registry(_pairs(self._node(REGISTRY_KEY).call("HGETALL", REGISTRY_KEY)))

    async def time_ms(self) -> int:
        secs, micros = self._node(self.key("pool")).call("TIME")
        return int(secs) * 1000 + int(micros) // 1000

    async def close(self) -> None:
        if self._link:
            self._link.pop().close()

    # ---------------------------------------------------------------- view.lua
    def _views(self, stores: list[QuickStore], queue: bool = True,
               errors: bool = False) -> dict:
        """view.lua of each store: one pipeline per Redis node, all sent before any reply is
        read; host -> (state, snapshot) (its CorruptState with errors=True)."""
        from hashlib import sha1
        source = script_source("view")
        sha = sha1(source.encode()).hexdigest()
        by_node: dict[int, tuple] = {}
        for store in stores:
            redis = self._node(store.key("pool"))
            keys, args = store.view_args()
            _, group, commands = by_node.setdefault(id(redis), (redis, [], []))
            group.append(store)
            commands.append(("EVALSHA", sha, len(keys), *keys, store.channel, store.host,
                             *args.values()))
        replies = self._exchange(by_node.values())
        if any(isinstance(r, Exception) and str(r).startswith("NOSCRIPT")
               for r in replies.values()):
            for redis, _, _ in by_node.values():
                redis.call("SCRIPT", "LOAD", source)
            replies = self._exchange(by_node.values())
        out: dict = {}
        for store in stores:
            reply = replies[store.host]
            if isinstance(reply, Exception):
                raise NeedsEventLoop  # a failed script, a moved slot: the async Store's words
            try:
                out[store.host] = store.decode_view(check_reply("view", reply), queue)
            except CorruptState as err:
                if not errors:
                    raise
                out[store.host] = err
                continue
            store._usage = (out[store.host][0].now_ms, out[store.host][1])
        return out

    @staticmethod
    def _exchange(groups) -> dict:
        """Send each node its commands, then read each node's replies: host -> reply."""
        for redis, _, commands in groups:
            redis.send(commands)
        replies = {}
        for redis, stores, commands in groups:
            replies.update(zip((s.host for s in stores), redis.receive(len(commands))))
        return replies
