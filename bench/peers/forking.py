"""socketserver.ForkingTCPServer: a fork per connection, serving the same handlers.

systemd-socket-activate -l 127.0.0.1:7101 python -m bench.peers.forking sockpool.handlers:echo
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import socketserver
import sys

from bench.peers.common import Info, is_async, listening_socket, load_handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ForkingTCPServer peer")
    ap.add_argument("handler")
    args = ap.parse_args(argv)
    handler = load_handler(args.handler)
    if is_async(handler):
        sys.exit("ForkingTCPServer serves sync handlers only")
    counter = itertools.count(1)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            handler(
                self.request,
                Info(conn_id=next(counter), listener="bench", peer=self.client_address),
            )

    lsock = listening_socket()
    lsock.setblocking(True)
    server = socketserver.ForkingTCPServer(lsock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = lsock
    server.max_children = 256
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
