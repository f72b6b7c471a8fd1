"""What a handler learns about its connection, and how it finds it from anywhere."""

from __future__ import annotations

import contextvars
import socket
import struct
from dataclasses import dataclass
from typing import Any

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
    # has read anything from it yet (it takes its turn before it yields it), and when; whether
    # receive() has looked for a next request on it yet (it reads first only the first time).
    request_started: int = 0
    may_park: bool = False
    parked: bool = False
    has_read: bool = False
    turn_began: int = 0
    kept_alive: bool = False
    unsent: Any = None  # unsent.Unsent: an answer's rest its client has not taken yet
    # Behind a load balancer speaking the PROXY protocol v2: the TLVs it sent, if any.
    proxy_unique_id: bytes | None = None  # PP2_TYPE_UNIQUE_ID (HAProxy's unique-id)
    proxy_authority: str | None = None  # PP2_TYPE_AUTHORITY: the host name asked for (SNI)
    proxy_alpn: bytes | None = None  # PP2_TYPE_ALPN: the protocol the client negotiated


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
    # A TCP socket's proto is IPPROTO_TCP, a plain int, which settles it without `family`
    # (an enum conversion, about a microsecond per connection).
    if not sock.proto and sock.family == socket.AF_UNIX:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            creds = _PEERCRED.unpack(raw)
        except OSError:
            pass
    info = ConnectionInfo(conn_id, listener, peer, *creds, idle_timeout, carried, started, may_park)
    if "\0" in peer:  # a proxied client's TLVs ride behind its address
        from .proxyproto import split_peer

        info.peer, info.proxy_unique_id, info.proxy_authority, info.proxy_alpn = split_peer(peer)
    return info


def current_connection() -> ConnectionInfo | None:
    """The connection being served by this thread or asyncio task; None outside one."""
    return _current.get(None)


def set_current(info: ConnectionInfo | None) -> None:
    _current.set(info)
