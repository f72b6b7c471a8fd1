"""Bench-only handlers, for sockpool and its peers alike.

The same functions run in sockpool (``bench.handlers:NAME``) and in the peers
(bench.peers.prefork, bench.peers.plainloop), so the only difference between them is the
handoff.

- ``mixed`` / ``mixed_async``: a request whose payload starts with ``S`` (one in ten,
  chosen by bench.loadgen) is answered after 50 ms of sleep; every other one is echoed at
  once.
- ``mixed_cpu_async``: the same, but the slow request burns 5 ms of CPU in the event loop
  (a busy loop, not a sleep): the load where the kernel's LIFO wake-ups pile connections
  onto one shared-accept worker and least-busy dispatch should win (issue 14).
- ``cpu_echo``: 0.5 ms of CPU, then sockpool's echo: churn with a realistic handler.
- ``answer_once``: one read, the same bytes back, close: workers that answer at once, so
  what remains per connection is the dispatcher's own cost (issue 14's ceiling).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sockpool.giveback import client_speaks_first
from sockpool.handlers import echo

SLOW_SECONDS = 0.05
SLOW_CPU_SECONDS = 0.005
CPU_SECONDS = 0.0005


def burn(cpu_seconds: float) -> None:
    """Spend `cpu_seconds` of this thread's CPU time (not wall time: a worker that is
    preempted still does all of its work)."""
    end = time.thread_time() + cpu_seconds
    while time.thread_time() < end:
        for _ in range(100):  # arithmetic between the clock reads, which are syscalls
            pass


def mixed(conn: socket.socket, info: Any = None) -> None:
    """Sync echo until EOF; a payload starting with b"S" waits 50 ms first."""
    data = conn.recv(65536)
    if data.startswith(b"S"):
        time.sleep(SLOW_SECONDS)
    while data:
        conn.sendall(data)
        data = conn.recv(65536)


async def _mixed_async(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    slow: Callable[[], Awaitable[None] | None],
) -> None:
    """Async echo until EOF; a payload starting with b"S" runs `slow` first."""
    try:
        data = await reader.read(65536)
        if data.startswith(b"S") and (pending := slow()) is not None:
            await pending
        while data:
            writer.write(data)
            await writer.drain()
            data = await reader.read(65536)
    finally:
        writer.close()


async def mixed_async(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The slow request sleeps 50 ms: the worker's other connections go on meanwhile."""
    await _mixed_async(reader, writer, lambda: asyncio.sleep(SLOW_SECONDS))


async def mixed_cpu_async(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The slow request burns 5 ms of CPU: the worker's other connections wait for it."""
    await _mixed_async(reader, writer, lambda: burn(SLOW_CPU_SECONDS))


@client_speaks_first
def cpu_echo(conn: socket.socket, info: Any) -> None:
    """0.5 ms of CPU work, then sockpool's echo."""
    burn(CPU_SECONDS)
    echo(conn, info)


@client_speaks_first
def answer_once(conn: socket.socket, info: Any = None) -> None:
    """Send back the first read's bytes and return (the caller closes): the least a worker
    can do for an echo client that sends its payload and shuts down its side at once."""
    conn.sendall(conn.recv(65536))
