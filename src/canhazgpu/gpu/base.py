"""What every GPU provider offers: how many GPUs there are, and what each one is doing."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..errors import without_loop
from ..model import GpuUsage

MIB = 1024 * 1024


async def off_loop(func, *args):
    """func(*args) in a worker thread, off the event loop; called as is without one (the
    CLI's loopless reads, cli/runner.py: nothing else runs meanwhile)."""
    if without_loop():
        return func(*args)
    import anyio
    return await anyio.to_thread.run_sync(func, *args)


@runtime_checkable
class Provider(Protocol):
    """A source of GPU usage. Blocking work (C calls, files) runs off the event loop."""

    name: str  # "nvidia", "amd" or "fake": stored with the pool

    async def count(self) -> int:
        """How many GPUs this machine has."""
        ...

    async def scan(self) -> tuple[GpuUsage, ...]:
        """One GpuUsage per GPU index 0..count-1, in index order."""
        ...


def to_mib(value: float | int | None) -> int | None:
    """Bytes to whole MiB (what nvidia-smi and the documents call MB); None stays None."""
    return None if value is None else int(value) // MIB
