"""What the Python peers share: the activated socket, the handler, a connection info."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import signal
import socket
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

LISTEN_FDS_START = 3


@dataclass
class Info:
    """The same fields sockpool passes its handlers (the AF_UNIX ones stay None)."""

    conn_id: int
    listener: str
    peer: Any
    peer_pid: int | None = None
    peer_uid: int | None = None
    peer_gid: int | None = None
    carried: bytes = b""  # never: a peer has no dispatcher to park connections in


def listening_socket() -> socket.socket:
    """The first socket passed by socket activation (systemd or systemd-socket-activate)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", 0)) < 1:
        sys.exit("not socket-activated: run under systemd-socket-activate or a .socket unit")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sock = socket.socket(fileno=LISTEN_FDS_START)
    sock.set_inheritable(True)
    return sock


def load_handler(spec: str) -> Callable[..., Any]:
    """Import "module:callable"."""
    module, _, name = spec.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        sys.exit(f"{spec} is not callable")
    return obj


def is_async(handler: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(handler)


def stop_children_on_signal(children: Collection[int]) -> None:
    """SIGTERM or SIGINT to the parent stops every child, then the parent, at once."""

    def stop(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
