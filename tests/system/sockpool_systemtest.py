"""Handlers the system tests install next to sockpool in the test machine."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from sockpool import client_speaks_first
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


def _unit() -> str:
    """The systemd unit this process runs in (the end of its cgroup): which instance."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return "?"
    paths = [line.split(":", 2)[-1] for line in lines]
    return next((p.rsplit("/", 1)[-1] for p in paths if p.endswith(".service")), "?")


UNIT = _unit()
WHOAMI_DELAY = 0.05  # seconds of work per request: some are always in flight


def _line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n") and (chunk := conn.recv(4096)):
        data += chunk
    return data


@client_speaks_first
def whoami(conn: socket.socket, info: ConnectionInfo) -> None:
    """Answer a line with the unit that serves it and the client address it sees, then the
    line. `hold` first: say `held`, and answer the next line (a request in flight for as
    long as the client wants). A connection that closes at once (a balancer's health
    check) gets nothing."""
    line = _line(conn)
    if line == b"hold\n":
        conn.sendall(b"held\n")
        line = _line(conn)
    if line:
        time.sleep(WHOAMI_DELAY)
        conn.sendall(f"{UNIT} {info.peer} ".encode() + line)
