"""Shared-accept pre-forked pool: the baseline that isolates the cost of sockpool's handoff.

Every worker calls accept() on the inherited listening socket and runs the handler
itself: the same handler functions as sockpool (sockpool.handlers:*, bench.handlers:*),
so the only difference is who accepts. Sync handlers get one connection at a time per
worker (blocking accept); async ones run asyncio.start_server on the shared socket.

    systemd-socket-activate -l 127.0.0.1:7101 python -m bench.peers.prefork \
        --workers 4 sockpool.handlers:echo
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def serve_sync(lsock: socket.socket, handler: Callable[..., Any]) -> None:
    lsock.setblocking(True)
    name = "bench"
    for n in itertools.count(1):
        try:
            conn, peer = lsock.accept()
        except InterruptedError:
            continue
        try:
            handler(conn, Info(conn_id=n, listener=name, peer=f"{peer[0]}:{peer[1]}"))
        except Exception:  # a handler error must not kill the worker
            pass
        finally:
            conn.close()


def serve_async(lsock: socket.socket, handler: Callable[..., Any]) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except Exception:  # as sockpool does: the connection ends, the worker goes on
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, sock=lsock, backlog=4096)
        await server.serve_forever()

    asyncio.run(main())


def worker(lsock: socket.socket, handler: Callable[..., Any]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(KeyboardInterrupt):
        if is_async(handler):
            serve_async(lsock, handler)
        else:
            serve_sync(lsock, handler)
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="shared-accept pre-forked pool")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("handler")
    args = ap.parse_args(argv)
    lsock = listening_socket()
    handler = load_handler(args.handler)
    children: set[int] = set()

    stop_children_on_signal(children)
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            worker(lsock, handler)
        children.add(pid)
    while children:
        try:
            pid, _status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
