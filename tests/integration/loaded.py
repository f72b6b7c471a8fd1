"""A sync handler that tells which heavy modules its worker has loaded (test_footprint.py).

It imports sockpool's built-in handlers, so their module is part of what is checked."""

from __future__ import annotations

import socket
import sys

from sockpool import ConnectionInfo, handlers  # noqa: F401  (loaded as the echo pool's are)

# What only an async worker needs: tens of milliseconds of cold start and a few MiB of PSS
# across a pool when the dispatcher or a sync worker loads them.
HEAVY = ("asyncio", "concurrent.futures", "ssl")


def heavy_modules(conn: socket.socket, info: ConnectionInfo) -> None:
    conn.recv(64)
    loaded = [name for name in HEAVY if name in sys.modules]
    conn.sendall(("loaded: " + " ".join(loaded) + "\n").encode())
