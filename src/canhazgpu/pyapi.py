"""The Python API (docs/python.md): GPUs held for exactly the life of a `with` block, an
`async with` block or a Reservation, through the same operations as the CLI (the daemon's
API when one answers, else Redis directly) and with the same errors.

Liveness comes from the calling process, as for `run`: the reservation's owner is this
process (a daemon watches its pid and reclaims within a second of its death, SIGKILL
included) and a heartbeat task renews the lease (without a daemon, a dead program's lease
runs out after run_lease). The synchronous forms run that task in one private event loop
thread per process (a daemon thread with an anyio BlockingPortal: a program that forgets
to release still exits, and its GPUs come back as a crashed program's do).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import sys
import threading
import warnings

import anyio
from anyio.from_thread import BlockingPortal

from .errors import CanHazGpuError, InvalidRequest, boundary

ENV = "CUDA_VISIBLE_DEVICES"
_warned_frameworks = False


def _warn(text: str) -> None:
    warnings.warn(f"canhazgpu: {text}", RuntimeWarning, stacklevel=2)


class Lease:
    """One reservation's whole life in one event loop: acquire (queueing up to `wait_s`),
    heartbeat, optionally watch another process, end. hold() is the one task that owns it;
    end() stops it from the same loop."""

    def __init__(self, count: int | None = None, gpu_ids=None, wait=None, note: str = "",
                 min_free_memory_mb: int | None = None, kind: str = "python",
                 adopt: tuple[str, tuple[int, ...]] | None = None) -> None:
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise InvalidRequest(f"invalid GPU count {count!r}: use a whole number, e.g. 2")
        self.count = count
        self.gpu_ids = None if gpu_ids is None else ",".join(str(i) for i in gpu_ids)
        self.wait_s = _seconds(wait)
        self.note = note
        self.min_free_mb = min_free_memory_mb
        self.kind = kind
        self.adopt = adopt  # (rid, gpus): hold a reservation made by an earlier process
        self.over = False  # set once hold() has ended (read from other threads)
        self.granted: concurrent.futures.Future = concurrent.futures.Future()
        self.res = None
        self._stop: anyio.Event | None = None
        self._done: anyio.Event | None = None
        self._tg = None
        self._sup = None
        self._watch: anyio.CancelScope | None = None

    async def hold(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        """Acquire, report the reservation through task_status and `granted`, keep it
        alive until end() (or cancellation), then release it."""
        from .cli.main import Context
        from .supervisor import Supervisor
        self._stop, self._done = anyio.Event(), anyio.Event()
        ctx = Context()
        try:
            await ctx.connect()
            caller = ctx.caller()
            if self.adopt is not None:
                res = self._adopted(ctx, caller)
            else:
                req = await self._request(ctx)
                if not ctx.remote:
                    from .hosts import check_here
                    await check_here(ctx.core)  # reservations are made by the job's host
                res = await ctx.core.acquire(req, caller, self.wait_s, warn=_warn,
                                             signals=False)
            sup = Supervisor(ctx.core, res, caller, _warn,
                             heartbeat_s=ctx.config.seconds("heartbeat_interval"),
                             renew_at_start=self.wait_s is not None or self.adopt is not None)
            self._sup = sup
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    tg.start_soon(sup._keep_alive)  # the heartbeat of `run`'s supervisor
                    self.res = res
                    self.granted.set_result(res)
                    task_status.started(res)
                    await self._stop.wait()
                    tg.cancel_scope.cancel()
            finally:
                self.over = True  # from now on, not held (the release is under way)
                with anyio.CancelScope(shield=True):
                    await sup._release()
        except BaseException as err:
            if not self.granted.done():
                self.granted.set_exception(err if isinstance(err, Exception)
                                           else CanHazGpuError("stopped waiting for GPUs"))
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await ctx.aclose()
            self.over = True
            self._done.set()

    def _adopted(self, ctx, caller):
        """The reservation `adopt` names, held from now on by this process."""
        from .request import Request, Reservation as Held
        rid, gpus = self.adopt
        record = {"rid": rid}  # the daemon keeps the record
        if not ctx.remote:
            record = ctx.core.record(caller, Request(ids=gpus, kind=self.kind, note=self.note),
                                     rid=rid)
        return Held(rid, gpus, caller.user, self.kind, ctx.config.seconds("run_lease"), record)

    async def _request(self, ctx):
        from .cli.options import build_request
        ids, count = self.gpu_ids, self.count
        if self.min_free_mb is not None:
            ids = await self._roomy(ctx, count if count is not None else 1)
            count = None
        if ids is None and count is None:
            count = 1
        return await build_request(ctx, count, ids, self.kind, 0, self.note)

    async def _roomy(self, ctx, count: int) -> str:
        """The `count` available GPUs with at least min_free_mb free, least recently
        released first (the pool's LRU order); NotEnoughGpus when fewer are."""
        from .errors import NotEnoughGpus
        if not isinstance(self.min_free_mb, int) or self.min_free_mb < 0:
            raise InvalidRequest(f"invalid min_free_memory_mb {self.min_free_mb!r}: a whole "
                                 "number of MB, e.g. 20000")
        view = await ctx.core.view()
        free = [g for g in view.gpus if g.status == "available" and g.usage is not None
                and g.usage.memory_total_mb - g.usage.memory_used_mb >= self.min_free_mb]
        if len(free) < count:
            unreserved = sum(g.status == "unreserved" for g in view.gpus)
            raise NotEnoughGpus(count, len(free), unreserved)
        free.sort(key=lambda g: (g.last_released_ms or 0, g.gpu))
        return ",".join(str(g.gpu) for g in free[:count])

    async def end(self) -> None:
        """Stop holding (from the lease's loop) and wait until the GPUs are released."""
        if self._stop is None:
            return
        self._stop.set()
        await self._done.wait()

    async def move_to(self, pid: int) -> None:
        """Make process `pid` (of the same user) the reservation's owner, whose death a
        daemon watches (a Jupyter kernel's once it runs; the server's during a restart)."""
        from dataclasses import replace

        from .identity import process_start
        sup = self._sup
        if sup is None or self.over or sup.res.record.get("pid") == pid:
            return
        start = await anyio.to_thread.run_sync(process_start, pid)
        moved = replace(sup.res, record={**sup.res.record, "pid": pid, "pid_start": start})
        await sup.core.heartbeat(moved)  # refused (NotOwner): still ours
        sup.res = moved

    async def end_when_gone(self, pid: int, unless=lambda: False) -> None:
        """Release as soon as process `pid` exits, unless unless() says it was meant to
        (a kernel restart); a later call replaces the watched process."""
        if self._watch is not None:
            self._watch.cancel()
        self._watch = anyio.CancelScope()
        self._tg.start_soon(self._watch_pid, pid, unless, self._watch)

    async def _watch_pid(self, pid: int, unless, scope: anyio.CancelScope) -> None:
        from .watch import Owner, wait_gone
        with scope:
            await wait_gone(Owner(pid, 0.0), anyio.Event())
            if not unless():
                self._stop.set()


def _seconds(wait) -> float | None:
    """wait=None: fail at once; a number of seconds, "30m"-style text, or "inf"."""
    if wait is None:
        return None
    if wait == "inf" or wait == float("inf"):
        return float("inf")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool):
        if wait <= 0:
            raise InvalidRequest(f"invalid wait {wait!r}: seconds above 0, e.g. 1800 or '30m'")
        return float(wait)
    from .timefmt import parse_duration
    return parse_duration(wait, what="wait")


# ---------------------------------------------------------------------- the loop thread
_portal: BlockingPortal | None = None
_portal_lock = threading.Lock()
_held: set = set()  # released at exit if the program forgot


def portal() -> BlockingPortal:
    """The process's event loop thread for synchronous callers (started on first use)."""
    global _portal
    with _portal_lock:
        if _portal is None:
            ready: concurrent.futures.Future = concurrent.futures.Future()

            async def serve() -> None:
                async with BlockingPortal() as p:
                    ready.set_result(p)
                    await p.sleep_until_stopped()

            threading.Thread(target=anyio.run, args=(serve,), name="canhazgpu",
                             daemon=True).start()
            _portal = ready.result()
            atexit.register(_release_all)
    return _portal


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) has no loop thread and holds nothing: its
    parent does."""
    global _portal
    _portal = None
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _release_all() -> None:
    for res in list(_held):
        res.release()


def start(lease: Lease):
    """Run lease.hold() in the loop thread; return the reservation once granted. Ctrl+C
    (or any error) while queued leaves the queue before it is raised."""
    p = portal()
    task = p.start_task_soon(lease.hold)
    try:
        concurrent.futures.wait([lease.granted, task],
                                return_when=concurrent.futures.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        p.call(_settled, lease)
        raise
    return lease.granted.result()


async def _settled(lease: Lease) -> None:
    if lease._done is not None:
        await lease._done.wait()


# ---------------------------------------------------------------------- public values
class Reservation:
    """GPUs held until release(), the end of the `with` block, or the end of the program.
    `ids` are the GPU ids (also in CUDA_VISIBLE_DEVICES while held), `rid` the id that
    status shows."""

    def __init__(self, lease: Lease, res, set_env: bool = True, in_loop: bool = False) -> None:
        self._lease = lease
        self.ids: tuple[int, ...] = tuple(res.gpus)
        self.rid: str = res.rid
        self.kind: str = res.kind
        self.released = False
        self._pid = os.getpid()  # a forked child leaving the block releases nothing
        self._in_loop = in_loop  # held by a task of the caller's event loop (async with)
        self._env = _EnvSwap(self.cuda_visible_devices) if set_env else None

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(map(str, self.ids))

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<canhazgpu.Reservation {self.rid} GPU {self.cuda_visible_devices} ({state})>"

    def release(self) -> None:
        """Give the GPUs back now (and restore CUDA_VISIBLE_DEVICES); idempotent."""
        if self.released:
            return
        self.released = True
        _held.discard(self)
        if self._env is not None:
            self._env.restore()
        if os.getpid() != self._pid:
            return
        if self._in_loop:  # called in that loop: the block's end waits for the release
            self._lease._stop.set()
        else:
            portal().call(self._lease.end)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class _EnvSwap:
    """CUDA_VISIBLE_DEVICES set to ours, and put back as it was (unless changed since)."""

    def __init__(self, value: str) -> None:
        global _warned_frameworks
        self.value = value
        self.old = os.environ.get(ENV)
        os.environ[ENV] = value
        loaded = [m for m in ("torch", "jax", "tensorflow") if m in sys.modules]
        if loaded and not _warned_frameworks:
            _warned_frameworks = True
            _warn(f"{', '.join(loaded)} was imported before the GPUs were reserved: CUDA may "
                  f"ignore {ENV}={value}; reserve first, then import it")

    def restore(self) -> None:
        if os.environ.get(ENV) != self.value:
            return  # someone set it since: theirs
        if self.old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self.old


def reserve(count: int | None = None, *, wait=None, note: str = "", gpu_ids=None,
            min_free_memory_mb: int | None = None) -> Reservation:
    """Reserve GPUs for this process until .release() (or its end); sets
    CUDA_VISIBLE_DEVICES. wait=None fails at once with NotEnoughGpus when GPUs are short;
    wait="30m" (or seconds, or "inf") queues first come first served up to that long."""
    lease = Lease(count, gpu_ids, wait, _labelled(note), min_free_memory_mb)
    res = Reservation(lease, start(lease))
    _held.add(res)
    return res


class gpus:  # noqa: N801 (used as `with canhazgpu.gpus(2) as g:`)
    """`with gpus(2, wait="30m") as g:` or `async with gpus(2) as g:`: GPUs for the block,
    released on exit, also on an exception or Ctrl+C; CUDA_VISIBLE_DEVICES set inside."""

    def __init__(self, count: int | None = None, *, wait=None, note: str = "", gpu_ids=None,
                 min_free_memory_mb: int | None = None) -> None:
        self._args = dict(count=count, wait=wait, note=note, gpu_ids=gpu_ids,
                          min_free_memory_mb=min_free_memory_mb)
        self._res: Reservation | None = None
        self._tg = None

    def __enter__(self) -> Reservation:
        self._res = reserve(**self._args)
        return self._res

    def __exit__(self, *exc) -> None:
        self._res.release()

    async def __aenter__(self) -> Reservation:
        args = dict(self._args)
        lease = Lease(args.pop("count"), args.pop("gpu_ids"), args.pop("wait"),
                      _labelled(args.pop("note")), **args)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            res = await self._tg.start(lease.hold)
        except BaseException:
            with boundary():  # the one error to read, not the task group's
                await self._tg.__aexit__(*sys.exc_info())
            raise
        self._res = Reservation(lease, res, in_loop=True)
        return self._res

    async def __aexit__(self, *exc) -> bool | None:
        res = self._res
        res.release()
        await res._lease.end()
        with boundary():
            return await self._tg.__aexit__(*exc)


def _labelled(note: str) -> str:
    """What status shows for a Python program's hold: the program, then the note."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    name = os.path.basename(argv0)
    if argv0 in ("", "-c", "-m"):
        program = "python"
    elif name == "__main__.py":  # python -m package
        program = f"python -m {os.path.basename(os.path.dirname(argv0))}"
    else:
        program = f"python {name}"
    return f"{program}: {note}" if note else program


def status() -> dict:
    """The `canhazgpu status --json` document of this host."""
    return portal().call(_status)


async def _status() -> dict:
    from .cli.main import Context
    from .render import render_json
    ctx = Context()
    try:
        return render_json(await (await ctx.connect()).view())
    finally:
        await ctx.aclose()
