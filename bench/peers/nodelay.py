"""Exec a server with TCP_NODELAY set on its activated TCP sockets: what `NoDelay=yes` in a
socket unit does (systemd-socket-activate has no such option). Accepted connections inherit
it from the listening socket on Linux.

    systemd-socket-activate -l 127.0.0.1:7101 python -m bench.peers.nodelay uvicorn --fd 3 app:app

uvicorn wraps the fd of `--fd` as an AF_UNIX socket, so it never sets TCP_NODELAY itself:
without this, each keep-alive answer written in two parts waits ~40 ms for the client's
delayed ACK (Nagle).
"""

from __future__ import annotations

import os
import socket
import sys

from bench.peers.common import LISTEN_FDS_START


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m bench.peers.nodelay COMMAND [ARG]...")
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(os.environ.get("LISTEN_FDS", 0))):
        sock = socket.socket(fileno=fd)
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        finally:
            sock.detach()  # the descriptor stays open for the server
    os.execv(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
