"""Bench-only handlers for the mixed-load scenario, for sockpool and its peers alike.

A request whose payload starts with ``S`` (one in ten, chosen by bench.loadgen) is
answered after 50 ms; every other request is echoed at once. The same functions run in
sockpool (``bench.handlers:mixed`` / ``bench.handlers:mixed_async``) and in the
shared-accept pool, so the only difference between them is the handoff.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

SLOW_SECONDS = 0.05


def mixed(conn: socket.socket, info: Any = None) -> None:
    """Sync echo until EOF; a payload starting with b"S" waits 50 ms first."""
    data = conn.recv(65536)
    if data.startswith(b"S"):
        time.sleep(SLOW_SECONDS)
    while data:
        conn.sendall(data)
        data = conn.recv(65536)


async def mixed_async(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Async echo until EOF; a payload starting with b"S" waits 50 ms first."""
    try:
        data = await reader.read(65536)
        if data.startswith(b"S"):
            await asyncio.sleep(SLOW_SECONDS)
        while data:
            writer.write(data)
            await writer.drain()
            data = await reader.read(65536)
    finally:
        writer.close()
