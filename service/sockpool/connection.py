"""What a handler learns about its connection, and how it finds it from anywhere."""

from __future__ import annotations

import contextvars
import socket
import struct
from dataclasses import dataclass

_PEERCRED = struct.Struct("3i")
_current: contextvars.ContextVar[ConnectionInfo] = contextvars.ContextVar("sockpool_connection")


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    conn_id: int
    listener: str
    peer: str
    peer_pid: int | None = None  # AF_UNIX only: SO_PEERCRED, as of connect()
    peer_uid: int | None = None
    peer_gid: int | None = None


def describe(sock: socket.socket, conn_id: int, listener: str, peer: str) -> ConnectionInfo:
    if sock.family != socket.AF_UNIX:
        return ConnectionInfo(conn_id, listener, peer)
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return ConnectionInfo(conn_id, listener, peer)
    pid, uid, gid = _PEERCRED.unpack(creds)
    return ConnectionInfo(conn_id, listener, peer, pid, uid, gid)


def current_connection() -> ConnectionInfo | None:
    """The connection being served by this thread or asyncio task; None outside one."""
    return _current.get(None)


def set_current(info: ConnectionInfo) -> None:
    _current.set(info)
