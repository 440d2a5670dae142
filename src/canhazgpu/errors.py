"""The one error hierarchy of the core. The CLI maps each to a message and an exit code."""

from __future__ import annotations


class CanHazGpuError(Exception):
    """Base of every expected failure; str(error) is the one-line message for the user."""

    exit_code = 1


class InvalidRequest(CanHazGpuError):
    """A bad value from the user (count, ids, duration, URL, config): exit 2, nothing changed."""

    exit_code = 2


class NotEnoughGpus(CanHazGpuError):
    """Fewer allocatable GPUs than requested."""

    def __init__(self, requested: int, available: int, unreserved: int) -> None:
        self.requested = requested
        self.available = available
        self.unreserved = unreserved
        text = f"Not enough GPUs available. Requested: {requested}, Available: {available}"
        if unreserved:
            noun = "GPU" if unreserved == 1 else "GPUs"
            text += (
                f" ({unreserved} {noun} in use without reservation"
                " - run 'canhazgpu status' for details)"
            )
        super().__init__(text)


class GpusUnavailable(CanHazGpuError):
    """Specific GPUs asked for by id are held or in unreserved use."""


class NotHeld(CanHazGpuError):
    """Releasing a GPU that nobody holds: nothing changed, but not a usage error."""


class NotOwner(CanHazGpuError):
    """Releasing a reservation that belongs to someone else."""


class PoolNotInitialized(CanHazGpuError):
    """No pool yet: 'canhazgpu admin --gpus N' creates it."""


class PoolBusy(CanHazGpuError):
    """Resizing a pool that has live reservations, without --force."""


class BackendUnavailable(CanHazGpuError):
    """Redis cannot be reached or refuses us."""


class CorruptState(CanHazGpuError):
    """A key in Redis holds something we cannot read; the message names the key."""


class ProviderUnavailable(CanHazGpuError):
    """The GPU provider cannot be read (no NVIDIA driver, amd-smi failing); names the fix."""
