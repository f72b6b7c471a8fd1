"""What a handler learns about its connection, and how it finds it from anywhere."""

from __future__ import annotations

import contextvars
import socket
import struct
from dataclasses import dataclass

_PEERCRED = struct.Struct("3i")
_current: contextvars.ContextVar[ConnectionInfo] = contextvars.ContextVar("sockpool_connection")


@dataclass(slots=True)
class ConnectionInfo:
    conn_id: int  # the same every time the connection comes back from the dispatcher
    listener: str
    peer: str
    peer_pid: int | None = None  # AF_UNIX only: SO_PEERCRED, as of connect()
    peer_uid: int | None = None
    peer_gid: int | None = None
    idle_timeout: float | None = None  # seconds a built-in handler waits for the peer
    carried: bytes = b""  # what was read of the next request before the connection parked
    # Mutable, sockpool's own: when the request in progress began (time.monotonic_ns(); 0
    # for none), whether this connection may be parked, whether it was, whether this worker
    # has read anything from it yet (it takes its turn before it yields it), and when.
    request_started: int = 0
    may_park: bool = False
    parked: bool = False
    has_read: bool = False
    turn_began: int = 0


def describe(
    sock: socket.socket,
    conn_id: int,
    listener: str,
    peer: str,
    idle_timeout: float | None,
    carried: bytes = b"",
    started: int = 0,
    may_park: bool = False,
) -> ConnectionInfo:
    creds: tuple[int | None, ...] = (None, None, None)
    if sock.family == socket.AF_UNIX:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            creds = _PEERCRED.unpack(raw)
        except OSError:
            pass
    return ConnectionInfo(conn_id, listener, peer, *creds, idle_timeout, carried, started, may_park)


def current_connection() -> ConnectionInfo | None:
    """The connection being served by this thread or asyncio task; None outside one."""
    return _current.get(None)


def set_current(info: ConnectionInfo) -> None:
    _current.set(info)
