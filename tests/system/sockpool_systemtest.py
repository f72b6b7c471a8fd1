"""Handlers the system tests install next to sockpool in the test machine."""

from __future__ import annotations

import os
import socket
import time

from sockpool.connection import ConnectionInfo

# Seconds each import of this module takes (the dispatcher's check and every worker's):
# a slow start, so a test can tell "the process runs" from "the pool is ready".
time.sleep(float(os.environ.get("SOCKPOOL_TEST_IMPORT_DELAY", "0")))


class DeliberateFailure(RuntimeError):
    """Raised by fail(): a name the tests look for in the journal's traceback."""


def fail(conn: socket.socket, info: ConnectionInfo) -> None:
    """Read the request, then raise: the pool must log the traceback with the connection."""
    data = conn.recv(1024)
    raise DeliberateFailure(f"failing on purpose after {len(data)} bytes on {info.listener}")


def peer(conn: socket.socket, info: ConnectionInfo) -> None:
    """Answer with the client's credentials as the handler sees them (AF_UNIX only)."""
    conn.sendall(f"pid={info.peer_pid} uid={info.peer_uid} gid={info.peer_gid}\n".encode())
