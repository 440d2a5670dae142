"""A private Redis Cluster for tests and benchmarks: 3 masters and 3 replicas, each a
redis-server on 127.0.0.1 (the binary canhazgpu.embedded finds), joined by redis-cli
--cluster create. No Docker."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from canhazgpu.embedded import redis_server_binary


def _free_port() -> int:
    """A TCP port free for both the node and its cluster bus (port + 10000)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _wait(predicate, timeout: float, what: str) -> None:
    """Poll another process's state with a deadline (nothing to wait on but the state)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.ConnectionError, redis.ResponseError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout}s")
        time.sleep(0.05)


class Node:
    def __init__(self, directory: Path, port: int) -> None:
        self.dir, self.port = directory, port
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True,
                           socket_connect_timeout=1)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
             "--appendonly", "yes", "--save", "", "--notify-keyspace-events", "Ex",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait(lambda: self.client().ping(), 10, f"redis node {self.address}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def info(self) -> dict:
        with self.client() as c:
            return c.execute_command("CLUSTER", "INFO")


class Cluster:
    """`with Cluster(tmp) as c:` a cluster whose URL is c.url (redis+cluster://...)."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 1) -> None:
        self.dir = Path(directory)
        self.masters, self.replicas = masters, replicas
        self.nodes = [Node(self.dir / f"node{i}", _free_port())
                      for i in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        return f"redis+cluster://{self.nodes[0].address}"

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        cli = Path(redis_server_binary()).with_name("redis-cli")
        subprocess.run([str(cli), "--cluster", "create", *(n.address for n in self.nodes),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30) -> None:
        """Every running node says the cluster is ok and every slot is served."""
        def ok():
            for node in self.nodes:
                if node.proc is None:
                    continue
                with node.client() as c:
                    info = c.execute_command("CLUSTER", "INFO")
                    text = info if isinstance(info, str) else str(info)
                    if "cluster_state:ok" not in text or "cluster_slots_ok:16384" not in text:
                        return False
            return True
        _wait(ok, timeout, "cluster state ok")

    def master_of(self, key: str) -> Node:
        """The node serving `key`'s slot now."""
        for node in self.nodes:
            if node.proc is None:
                continue
            with node.client() as c:
                slot = c.cluster("keyslot", key)
                for start, end, master, *_ in c.cluster("slots"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise RuntimeError("no node answers")

    def fail_over(self, key: str) -> Node:
        """Kill the master serving key; return once its replica serves the slot."""
        master = self.master_of(key)
        master.kill()
        _wait(lambda: self.master_of(key) is not master, 30, "failover")
        self.wait_ok()
        return master

    def flushall(self) -> None:
        for node in self.nodes:
            if node.proc is None:
                continue
            with node.client() as c:
                if c.info("replication").get("role") == "master":
                    c.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.proc.terminate()
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
                node.proc = None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A 3-master, 3-replica cluster for the session (import this fixture to use it)."""
    with Cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def patterns_subscribed(cluster: Cluster) -> int:
    """Pattern subscriptions over every node (a subscriber may sit on any of them)."""
    total = 0
    for node in cluster.nodes:
        if node.proc is not None:
            with node.client() as c:
                total += int(c.execute_command("PUBSUB", "NUMPAT"))
    return total
