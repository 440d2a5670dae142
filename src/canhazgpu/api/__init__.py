"""The daemon's local API (docs/api.md): JSON lines over a unix socket, the caller known
from the kernel (SO_PEERCRED). protocol.py: framing, version, errors and the wire form of
the core's values; server.py: the daemon's side; client.py: the CLI's side, which imports
no Redis module."""
