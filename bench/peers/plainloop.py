"""The plainest possible dispatcher, to price sockpool's own: accept, send_fds, close.

The main process accepts each connection, passes its descriptor with socket.send_fds
to the next worker in turn over a SOCK_SEQPACKET socketpair, and closes its copy: no
ack, no accounting, no logging. Its CPU time per connection (user+system from
/proc/PID/stat) is the floor sockpool's dispatcher is measured against. The workers
receive each descriptor and run the same handler as everyone else.

    systemd-socket-activate -l 127.0.0.1:7101 python -m bench.peers.plainloop \
        --workers 4 sockpool.handlers:echo
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from bench.peers.common import (
    Info,
    is_async,
    listening_socket,
    load_handler,
    stop_children_on_signal,
)


def worker(chan: socket.socket, handler: Callable[..., Any]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for n in itertools.count(1):
        _msg, fds, _flags, _addr = socket.recv_fds(chan, 1, 1)
        if not fds:
            os._exit(0)
        conn = socket.socket(fileno=fds[0])
        try:
            handler(conn, Info(conn_id=n, listener="bench", peer=None))
        except Exception:
            pass
        finally:
            conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="plain accept/send_fds/close dispatcher")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("handler")
    args = ap.parse_args(argv)
    lsock = listening_socket()
    lsock.setblocking(True)
    handler = load_handler(args.handler)
    if is_async(handler):
        sys.exit("the plain loop serves sync handlers only")
    chans: list[socket.socket] = []
    children: list[int] = []
    for _ in range(args.workers):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            lsock.close()
            for c in chans:
                c.close()
            worker(theirs, handler)
        theirs.close()
        chans.append(ours)
        children.append(pid)

    stop_children_on_signal(children)
    accept = lsock.accept
    send_fds = socket.send_fds
    for chan in itertools.cycle(chans):
        conn, _peer = accept()
        send_fds(chan, [b"c"], [conn.fileno()])
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
