"""One connection per process, as systemd's Accept=yes starts it: the socket is fd 0.

[Socket] ListenStream=127.0.0.1:7101  Accept=yes
[Service] ExecStart=/usr/bin/python3 -m bench.peers.accept_yes sockpool.handlers:echo
          StandardInput=socket
"""

from __future__ import annotations

import os
import socket
import sys

from bench.peers.common import Info, is_async, load_handler


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m bench.peers.accept_yes MODULE:CALLABLE")
    handler = load_handler(args[0])
    if is_async(handler):
        sys.exit("Accept=yes serves sync handlers only here")
    # StandardInput=socket puts the connection on fd 0; without it, fd 3 and LISTEN_FDS=1.
    fd = 3 if os.environ.get("LISTEN_FDS") == "1" else 0
    conn = socket.socket(fileno=fd)
    conn.setblocking(True)
    try:
        peer = conn.getpeername()
    except OSError:
        peer = None
    try:
        handler(conn, Info(conn_id=1, listener="bench", peer=peer))
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
