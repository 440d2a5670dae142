"""Fault run: clients reserve, release, run and wait while clients, Redis and the daemon are
SIGKILLed; an observer replays the host's events and checks what they say.

Half the clients are small Python clients on canhazgpu.core (allocate by count and by ids,
release by ids, end, heartbeat, queue with a timeout, leases left to expire), half run the
real CLI one command after another (`reserve` by count and ids, then `release --gpu-ids` or
left to expire; `run -- true`; `run --wait`; `wait --timeout` with and without a command;
`release`; `status`). Meanwhile KILLS random clients are SIGKILLed, Redis is SIGKILLed
RESTARTS times and restarted on its AOF (appendfsync always), and with --daemon a
`canhazgpu serve` runs, itself SIGKILLed and restarted --daemon-kills times.

Checks:
- from the events alone (the host's stream; pub/sub between restarts where there is none):
  no GPU is reserved or granted before the end event of its previous holder. A conflict is
  a double grant when Redis's history has the old hold still open at that time, "freed
  silently" when history shows it ended but no event said so;
- once the clients stop and the last lease ran out: every GPU free, the queue empty, and
  every hold the events opened closed by an event (no leak);
- no client (nor the daemon) printed a traceback;
- nothing acknowledged is lost by a crash: before each Redis SIGKILL writes are paused and
  the host's keys read; a second server loads the AOF and must hold the same.

Run: python benchmarks/fault_run.py --clients 36 --duration 75 --kills 100 --restarts 4
     [--daemon] [--daemon-kills N] [--json FILE]   (tests/test_faults.py runs short ones)
The Python client is benchmarks/fault_client.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio
import redis

from canhazgpu.config import load
from canhazgpu.core import Core
from canhazgpu.embedded import RedisServer

HOST = "faults"
STARTS, ENDS = ("reserved", "granted"), ("released", "expired", "reclaimed", "forced", "left")
LEASES = {"CANHAZGPU_RUN_LEASE": "2s", "CANHAZGPU_HEARTBEAT_INTERVAL": "0.5s",
          "CANHAZGPU_QUEUE_LEASE": "2s", "CANHAZGPU_KILL_GRACE": "1s",
          "CANHAZGPU_SCAN_INTERVAL": "0.5s"}
LONGEST_LEASE_S = 2.0  # reserve -d and every lease above are at most this
CLIENT = Path(__file__).with_name("fault_client.py")


@dataclass
class Plan:
    clients: int = 36
    duration: float = 60.0
    kills: int = 100
    restarts: int = 4
    daemon: bool = False
    daemon_kills: int = 0
    gpus: int = 8
    seed: int = 1


@dataclass
class Report:
    plan: dict
    machine: str = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    replay: str = ""  # where the events came from: stream | pubsub
    operations: int = 0
    client_kills: int = 0
    redis_restarts: int = 0
    daemon_kills: int = 0
    events: int = 0
    missed_events: int = 0
    double_grants: list = field(default_factory=list)
    freed_silently: list = field(default_factory=list)
    leaks: list = field(default_factory=list)
    lost: list = field(default_factory=list)
    tracebacks: list = field(default_factory=list)
    exit_codes: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (self.double_grants or self.freed_silently or self.leaks or self.lost
                    or self.tracebacks)


class Replay:
    """The holds the events describe (GPU -> rid), and every conflict among them."""

    def __init__(self) -> None:
        self.held: dict[int, tuple[str, int]] = {}  # GPU -> (rid, since time_ms)
        self.seq: int | None = None
        self.events = self.missed = 0
        self.conflicts: list[tuple] = []  # (gpu, (old rid, since), new rid, seq, time_ms)

    def apply(self, doc: dict) -> None:
        seq = int(doc["seq"])
        if self.seq is not None and seq <= self.seq:
            return  # seen already
        if self.seq is not None and seq > self.seq + 1:
            self.missed += seq - self.seq - 1  # what changed meanwhile is unknown: start over
            self.held.clear()
        self.seq, self.events = seq, self.events + 1
        gpus = doc.get("gpus") if isinstance(doc.get("gpus"), list) else []
        rid, at = doc.get("rid"), int(doc["time_ms"])
        for gpu in gpus:
            old = self.held.get(gpu, (rid, at))
            if doc["type"] in STARTS:
                if old[0] != rid:
                    self.conflicts.append((gpu, old, rid, seq, at))
                self.held[gpu] = (rid, at) if old[0] != rid else old
            elif doc["type"] in ENDS and old[0] == rid:
                self.held.pop(gpu, None)


def sigkill(proc) -> bool:
    """SIGKILL a child we have not reaped yet. Not proc.kill(): subprocess polls first, and
    reaping a child that just exited would steal its exit code from asyncio's watcher."""
    try:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            return True
    except ProcessLookupError:
        pass
    return False


READ = {"string": lambda pipe, key: pipe.get(key), "hash": lambda pipe, key: pipe.hgetall(key),
        "list": lambda pipe, key: pipe.lrange(key, 0, -1),
        "set": lambda pipe, key: pipe.smembers(key),
        "zset": lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
        "stream": lambda pipe, key: pipe.xrange(key)}


def contents(socket: Path, pause: bool = False) -> tuple[dict, float]:
    """Every key of the host, {key: (value, ms to live or -1)}, and when the reading began.
    pause: first hold every write (scripts included) for 5 s: what is read is then all that
    Redis acknowledged."""
    with redis.Redis(unix_socket_path=str(socket), decode_responses=True) as client:
        if pause:
            client.client_pause(5000, all=False)
        began = time.monotonic()
        keys = list(client.scan_iter(f"canhazgpu:{{{HOST}}}:*", count=1000))
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(key)
            typed = [(key, kind) for key, kind in zip(keys, pipe.execute()) if kind in READ]
            for key, kind in typed:
                READ[kind](pipe, key)
                pipe.pttl(key)
            replies = pipe.execute()
    return {key: (replies[2 * n], replies[2 * n + 1]) for n, (key, _) in enumerate(typed)}, \
        began


class Run:
    def __init__(self, plan: Plan, tmp: Path) -> None:
        self.plan, self.tmp, self.rng = plan, tmp, random.Random(plan.seed)
        self.report = Report(plan=asdict(plan))
        self.replay = Replay()
        self.procs: set = set()  # live client processes, for the killer
        self.codes: Counter = Counter()
        self.up = anyio.Event()  # set while Redis is up
        self.serving = None  # the daemon's process
        self.stopping = False
        fake, config = tmp / "gpus.json", tmp / "config.toml"
        fake.write_text(json.dumps({"count": plan.gpus, "gpus": []}))
        config.write_text("")
        self.server = RedisServer(tmp / "redis", persist=True)
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("CANHAZGPU_")},
                    "CANHAZGPU_REDIS_URL": self.server.url, "CANHAZGPU_HOST": HOST,
                    "CANHAZGPU_PROVIDER": "fake", "CANHAZGPU_FAKE_GPUS": str(fake),
                    "CANHAZGPU_CONFIG": str(config), "CANHAZGPU_STATE_DIR": str(tmp / "state"),
                    "NO_COLOR": "1", **LEASES}
        (tmp / "logs").mkdir()

    # ------------------------------------------------------------------ Redis
    def start_redis(self) -> None:
        self.server.start()
        with redis.Redis(unix_socket_path=str(self.server.socket)) as client:
            client.config_set("appendfsync", "always")  # every acknowledged write on disk

    async def crash_redis(self) -> None:
        """SIGKILL Redis with writes paused, check its AOF against what it held, restart."""
        before, began = await anyio.to_thread.run_sync(contents, self.server.socket, True)
        self.up = anyio.Event()
        await anyio.to_thread.run_sync(self.server.kill)
        copy = RedisServer(self.tmp / "verify", persist=True)  # loads a copy of the AOF
        shutil.rmtree(copy.dir, ignore_errors=True)
        aof = self.server.dir / "appendonlydir"  # Redis 7; 6.2 keeps one file
        if aof.is_dir():
            shutil.copytree(aof, copy.dir / aof.name)
        else:
            copy.dir.mkdir()
            shutil.copy(self.server.dir / "appendonly.aof", copy.dir)
        try:
            await anyio.to_thread.run_sync(copy.start)
            after, _ = await anyio.to_thread.run_sync(contents, copy.socket)
            elapsed_ms = (time.monotonic() - began) * 1000
        finally:  # cancelled or failed on the way (the run ends): no redis-server left behind
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(copy.stop)
        for key, (value, ttl) in before.items():
            if ttl == -1 or ttl > elapsed_ms + 500:  # still due to be there
                if after.get(key, (None,))[0] != value:
                    self.report.lost.append(f"restart {self.report.redis_restarts + 1}: {key}")
        await anyio.sleep(self.rng.uniform(0.3, 1.0))  # down for a while
        await anyio.to_thread.run_sync(self.start_redis)
        self.report.redis_restarts += 1
        self.up.set()

    # ------------------------------------------------------------------ observer
    async def observe(self, store) -> None:
        """Feed the replay: from the stream the scripts keep, else from pub/sub."""
        stream, last = store.key("stream"), "0-0"
        while True:
            try:
                if not self.report.replay:  # decided once: admin's event is there already
                    kind = await store.redis.type(stream)
                    self.report.replay = "stream" if kind == "stream" else "pubsub"
                if self.report.replay == "stream":
                    for _, entries in await store.redis.xread({stream: last}, 500, 500) or ():
                        for last, fields in entries:
                            self.replay.apply(json.loads(fields["doc"]))
                    continue
                async with store.redis.pubsub() as pubsub:
                    await pubsub.subscribe(store.channel)
                    while True:
                        msg = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=0.5)
                        if msg:
                            self.replay.apply(json.loads(msg["data"]))
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                await self.up.wait()
                await anyio.sleep(0.05)  # retry pace

    # ------------------------------------------------------------------ clients
    async def watch(self, argv: list[str], name: str, stdout=subprocess.PIPE) -> tuple:
        """Run one client process (or the daemon) to its end; (exit code, stdout)."""
        log = self.tmp / "logs" / f"{name}.err"
        with open(log, "ab") as err:
            proc = await anyio.open_process(argv, env=self.env, stdout=stdout, stderr=err)
        if name == "daemon":
            self.serving = proc
        else:
            self.procs.add(proc)
        out = b""
        try:
            if proc.stdout is not None:
                async for chunk in proc.stdout:
                    out += chunk
                    self.report.operations += chunk.count(b".") if name.startswith("py") else 0
            code = await proc.wait()
        finally:
            self.procs.discard(proc)
            await proc.aclose()
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            self.report.tracebacks.append(f"{name} {argv[2:]}: {text[-600:]}")
            log.write_text("")  # reported once
        return code, out.decode()

    async def python_client(self, k: int, until: float) -> None:
        gen = 0
        while time.time() < until:
            code, _ = await self.watch([sys.executable, str(CLIENT), str(k + 1000 * gen),
                                        str(until), str(self.plan.gpus)], f"py{k}")
            self.codes[("python client", code)] += 1
            gen += 1

    async def cli_client(self, k: int, until: float) -> None:
        rng, gpus = random.Random(self.plan.seed * 1000 + k), self.plan.gpus
        while time.time() < until:
            n, ids = rng.choice((1, 1, 2, 3)), ",".join(map(str, rng.sample(range(gpus), 2)))
            argv = rng.choice([
                ["reserve", "--gpus", n, "-d", f"{rng.choice((1, 2))}s", "--short"],
                ["reserve", "--gpu-ids", ids, "-d", "2s", "--short"],
                ["run", "--gpus", n, "--", "true"],
                ["run", "--gpus", 1, "--wait", "1s", "--", "sleep", "0.1"],
                ["wait", "--gpus", n, "--timeout", "1s", "--", "true"],
                ["wait", "--gpus", 1, "--timeout", "1s", "-d", "1s", "--short", "--quiet"],
                ["release"], ["status", "--json"]])
            code, out = await self.cli(argv, k)
            if argv[0] == "reserve" and code == 0 and rng.random() < 0.5:
                await self.cli(["release", "--gpu-ids", out.strip()], k)

    async def cli(self, argv: list, k: int) -> tuple:
        args = [str(a) for a in argv]
        code, out = await self.watch([sys.executable, "-m", "canhazgpu", *args], f"cli{k}")
        self.codes[(args[0], code)] += 1
        self.report.operations += code != -9
        return code, out

    # ------------------------------------------------------------------ faults
    async def at_random_times(self, count: int, action) -> None:
        start = time.monotonic()
        for t in sorted(self.rng.uniform(0.5, self.plan.duration - 0.5) for _ in range(count)):
            await anyio.sleep(max(0.0, start + t - time.monotonic()))  # the fault schedule
            await action()

    async def kill_a_client(self) -> None:
        if self.procs:
            victim = self.rng.choice(sorted(self.procs, key=lambda p: p.pid))
            self.report.client_kills += sigkill(victim)

    async def daemon(self) -> None:
        """`canhazgpu serve` until the run ends, started again whenever it is killed."""
        while not self.stopping:
            await self.up.wait()
            code, _ = await self.watch([sys.executable, "-m", "canhazgpu", "serve"], "daemon",
                                       stdout=subprocess.DEVNULL)
            self.codes[("serve", code)] += 1

    async def kill_the_daemon(self) -> None:
        with anyio.move_on_after(30):  # a daemon starting again (slow on a busy machine)
            while True:
                while self.serving is None or self.serving.returncode is not None:
                    await anyio.sleep(0.05)
                if sigkill(self.serving):
                    self.report.daemon_kills += 1
                    return
                # gone already (just killed, reaped but not yet told): kill the next one
                await anyio.sleep(0.05)

    # ------------------------------------------------------------------ the run
    async def main(self) -> Report:
        t0 = time.monotonic()
        await anyio.to_thread.run_sync(self.start_redis)
        self.up.set()
        await anyio.run_process([sys.executable, "-m", "canhazgpu", "admin", "--gpus",
                                 str(self.plan.gpus)], env=self.env)
        core = Core(load(env=self.env))
        until = time.time() + self.plan.duration
        try:
            async with anyio.create_task_group() as observer:
                observer.start_soon(self.observe, core.store)
                async with anyio.create_task_group() as run:
                    if self.plan.daemon:
                        run.start_soon(self.daemon)
                        run.start_soon(self.at_random_times, self.plan.daemon_kills,
                                       self.kill_the_daemon)
                    async with anyio.create_task_group() as clients:
                        for k in range(self.plan.clients):
                            clients.start_soon(self.python_client if k % 2 else
                                               self.cli_client, k, until)
                        clients.start_soon(self.at_random_times, self.plan.kills,
                                           self.kill_a_client)
                        clients.start_soon(self.at_random_times, self.plan.restarts,
                                           self.crash_redis)
                    await self.settle(core)
                    self.stopping = True
                    if self.serving is not None and self.serving.returncode is None:
                        self.serving.terminate()  # a clean stop
                await self.caught_up(core)
                observer.cancel_scope.cancel()
            await self.judge(core)
        finally:
            try:
                await core.aclose()
            finally:  # even when closing fails or is cancelled: no redis-server left
                self.server.stop()
        self.report.exit_codes = {f"{cmd} {code}": n for (cmd, code), n in sorted(
            self.codes.items(), key=lambda item: (item[0][0], str(item[0][1])))}
        self.report.events, self.report.missed_events = self.replay.events, self.replay.missed
        self.report.seconds = round(time.monotonic() - t0, 1)
        return self.report

    async def settle(self, core: Core) -> None:
        """After the last lease: every hold finalized, the queue empty (else: leaks)."""
        deadline = time.monotonic() + LONGEST_LEASE_S + 10
        while True:
            await core.sweep()  # finalizes what expired (with its event), as any script does
            view = await core.view()
            held = [f"GPU {g.gpu} held by {g.hold.rid}" for g in view.gpus if g.hold]
            queued = [f"waiter {w.wid} queued" for w in view.queue]
            if not held and not queued or time.monotonic() > deadline:
                self.report.leaks += held + queued
                return
            await anyio.sleep(0.2)  # leases run out in Redis: re-check until the deadline

    async def caught_up(self, core: Core) -> None:
        seq = int(await core.store.redis.get(core.store.key("seq")) or 0)
        with anyio.move_on_after(15):
            while (self.replay.seq or 0) < seq:
                await anyio.sleep(0.05)  # the observer's own pace: re-check

    async def judge(self, core: Core) -> None:
        ends: dict[tuple, list[int]] = {}
        for record in await core.store.history(0):
            ends.setdefault((record.gpu, record.rid), []).append(record.end_ms)
        for gpu, (old, since), new, seq, at in self.replay.conflicts:
            what = f"GPU {gpu}: {new} (event #{seq}) while {old} held it"
            if any(since <= end <= at for end in ends.get((gpu, old), ())):
                self.report.freed_silently.append(what)  # it had ended: no event said so
            else:
                self.report.double_grants.append(what)
        for gpu, (rid, _) in self.replay.held.items():  # opened by an event, never closed
            self.report.freed_silently.append(f"GPU {gpu}: {rid} ended without an event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in asdict(Plan()).items():
        if isinstance(default, bool):
            parser.add_argument(f"--{name.replace('_', '-')}", action="store_true")
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(default),
                                default=default)
    parser.add_argument("--json", metavar="FILE", help="also write the summary here")
    args = parser.parse_args()
    plan = Plan(**{k: getattr(args, k) for k in asdict(Plan())})
    report = asdict(fault_run(plan))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    sys.exit(0 if Report(**report).clean else 1)


def fault_run(plan: Plan) -> Report:
    with tempfile.TemporaryDirectory(prefix="canhazgpu-faults-") as tmp:
        return anyio.run(Run(plan, Path(tmp)).main)


if __name__ == "__main__":
    main()
