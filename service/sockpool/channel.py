"""Sending and receiving wire messages, with descriptors, over a SOCK_SEQPACKET socketpair.

Uses sendmsg/recvmsg directly rather than socket.send_fds/recv_fds: those size the control
buffer with CMSG_LEN, ignore their flags and never look at MSG_CTRUNC (CPython gh-107898).
The receiving rule is systemd's: on any anomaly, close every descriptor that did arrive.
"""

from __future__ import annotations

import array
import os
import socket
import struct

from .wire import MAX_FDS, MAX_MESSAGE, WireError

_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
# Plain ints: the socket module's flags are IntFlag members, whose | and & run Python code.
DONTWAIT = int(socket.MSG_DONTWAIT)
PEEK = int(socket.MSG_PEEK) | DONTWAIT  # a look at what waits, without taking or waiting
_CLOEXEC, _CTRUNC, _TRUNC = (
    int(f) for f in (socket.MSG_CMSG_CLOEXEC, socket.MSG_CTRUNC, socket.MSG_TRUNC)
)
_SCM = _LEVEL, _RIGHTS = (int(socket.SOL_SOCKET), int(socket.SCM_RIGHTS))
_FD = struct.Struct("i")  # one descriptor, as SCM_RIGHTS carries it (native int)


def pair() -> tuple[socket.socket, socket.socket]:
    """A dispatcher/worker channel; both ends close-on-exec (the default in Python)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message; raises OSError (BlockingIOError when the peer's queue is full)."""
    if fds:
        sock.sendmsg([data], [(*_SCM, array.array("i", fds))])
    else:
        sock.send(data)


def send_fd(sock: socket.socket, data: bytes, fd: int) -> None:
    """send() with exactly one descriptor: the hot path's usual message, with no array."""
    sock.sendmsg([data], [(_LEVEL, _RIGHTS, _FD.pack(fd))])


def receive(sock: socket.socket, flags: int = 0) -> tuple[bytes, list[int]] | None:
    """One message and the descriptors that came with it; None at end of stream.

    Raises WireError (having closed any descriptors) when the message or its control data
    was truncated, or came with control data of a kind we never send. `flags` may add
    MSG_DONTWAIT for a caller that polls.
    """
    data, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE, _ANC_SPACE, _CLOEXEC | flags)
    fds: list[int] = []
    foreign = False
    for level, kind, payload in ancdata:
        if (level, kind) == _SCM and len(payload) == _FD.size:  # the usual: one descriptor
            fds.append(_FD.unpack(payload)[0])
        elif (level, kind) == _SCM:
            ints = array.array("i")
            ints.frombytes(payload[: len(payload) - len(payload) % ints.itemsize])
            fds.extend(ints)
        else:
            foreign = True
    problem = None
    if flags & _CTRUNC:
        problem = "descriptors were dropped in transit (receiver at its descriptor limit?)"
    elif flags & _TRUNC:
        problem = f"message longer than {MAX_MESSAGE} bytes"
    elif foreign:
        problem = "unexpected control data"
    if problem:
        close_all(fds)
        raise WireError(problem)
    if not data and not fds:
        return None
    return data, fds


def close_all(fds: list[int] | tuple[int, ...]) -> None:
    for fd in fds:
        try:  # noqa: SIM105 - on the hot path a try costs less than suppress()
            os.close(fd)
        except OSError:
            pass
