"""canhazgpu: GPU reservations for shared multi-GPU machines."""

__version__ = "0.1.0"
