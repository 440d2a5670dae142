"""canhazgpu: GPU reservations for shared multi-GPU machines.

The Python API (docs/python.md) is loaded on first use, so that the command line starts
as lightly as before: `canhazgpu.gpus`, `canhazgpu.reserve`, `canhazgpu.status` and the
errors they raise.
"""

__version__ = "0.1.0"

_API = {"gpus": "pyapi", "reserve": "pyapi", "status": "pyapi", "Reservation": "pyapi",
        "CanHazGpuError": "errors", "InvalidRequest": "errors", "NotEnoughGpus": "errors",
        "GpusUnavailable": "errors", "NotOwner": "errors", "PoolNotInitialized": "errors",
        "BackendUnavailable": "errors", "WaitTimedOut": "errors", "LostPlace": "errors",
        "NotHeld": "errors"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'canhazgpu' has no attribute {name!r}")
    from importlib import import_module
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
