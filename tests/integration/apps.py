"""Handlers the integration tests serve (imported by the workers through PYTHONPATH)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import sockpool
import sockpool.handlers
from sockpool import client_speaks_first, park_async, receive
from sockpool.connection import ConnectionInfo

log = logging.getLogger("apps")
DELAY = 1.0


def _line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def whoami(conn: socket.socket, info: ConnectionInfo) -> None:
    """Who served this: handler, listener, worker pid, peer credentials."""
    _line(conn)
    words = [info.listener, os.getpid(), info.peer, info.peer_pid, info.peer_uid]
    conn.sendall(("whoami " + " ".join(map(str, words)) + "\n").encode())


def admin(conn: socket.socket, info: ConnectionInfo) -> None:
    _line(conn)
    conn.sendall(f"admin {info.listener} {os.getpid()}\n".encode())


def slow_echo(conn: socket.socket, info: ConnectionInfo) -> None:
    """Say '+' as soon as the connection is in a worker's hands, echo a line DELAY s later."""
    conn.sendall(b"+")
    line = _line(conn)
    time.sleep(DELAY)
    conn.sendall(line)


async def async_slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"+")
    await writer.drain()
    line = await reader.readline()
    await asyncio.sleep(DELAY)
    info = sockpool.current_connection()
    assert info is not None
    writer.write(line)
    await writer.drain()


async def async_stubborn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Swallows the cancellation at its time limit and answers a second later: its loop
    turns all along, so only the worker's heartbeats tell that it is not hung."""
    await reader.readline()
    try:
        await asyncio.sleep(DELAY)
    except asyncio.CancelledError:
        await asyncio.sleep(DELAY)
    writer.write(b"late\n")
    await writer.drain()


async def async_whoami(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    info = sockpool.current_connection()
    assert info is not None
    writer.write(f"async {info.listener} {os.getpid()} {info.conn_id}\n".encode())
    await writer.drain()


def boom(conn: socket.socket, info: ConnectionInfo) -> None:
    _line(conn)
    log.info("about to fail")
    raise RuntimeError("boom in the handler")


def exits(conn: socket.socket, info: ConnectionInfo) -> None:
    """Says '+', then on "exit" calls sys.exit(); echoes anything else."""
    conn.sendall(b"+")
    line = _line(conn)
    if line == b"exit\n":
        sys.exit(3)
    conn.sendall(line)


async def async_exits(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"+")
    await writer.drain()
    line = await reader.readline()
    if line == b"exit\n":
        sys.exit(3)
    writer.write(line)
    await writer.drain()


not_callable = 42


def hang(conn: socket.socket, info: ConnectionInfo) -> None:
    """Never answers: a handler stuck in a loop that waits for nothing."""
    conn.sendall(b"+")
    while True:
        time.sleep(0.05)


def crash(conn: socket.socket, info: ConnectionInfo) -> None:
    """Dies the way a broken C extension does."""
    _line(conn)
    os.kill(os.getpid(), signal.SIGSEGV)


def slow_reader(conn: socket.socket, info: ConnectionInfo) -> None:
    """Reads 64 KiB every 10 ms and answers with the byte count."""
    total = 0
    while chunk := conn.recv(65536):
        total += len(chunk)
        time.sleep(0.01)
    conn.sendall(f"{total}\n".encode())


BIG = 1 << 20  # the answer to a held request: long enough to be cut if anything cut it


@client_speaks_first
def ids(conn: socket.socket, info: ConnectionInfo) -> None:
    """Answers each line with "CONN_ID PID", giving the connection back to the dispatcher
    between lines (receive() parks it), so each line may be served by another worker.

    "hold" pins the worker: it answers "holding PID", then waits for the next line in the
    worker's hands (a plain recv, no parking) and answers it with BIG bytes and a newline.
    """
    buf = info.carried
    while True:
        line, sep, rest = buf.partition(b"\n")
        if not sep:
            if not (data := receive(conn, buf)):
                return
            buf += data
            continue
        buf = rest
        if line != b"hold":
            conn.sendall(f"{info.conn_id} {os.getpid()}\n".encode())
            continue
        conn.sendall(f"holding {os.getpid()}\n".encode())
        while b"\n" not in buf:
            if not (chunk := conn.recv(4096)):
                return
            buf += chunk
        buf = buf.partition(b"\n")[2]
        conn.sendall(b"x" * BIG + b"\n")


def banner(conn: socket.socket, info: ConnectionInfo) -> None:
    """The server speaks first (an SMTP-like greeting), then echoes one line. Not declared
    client_speaks_first: by default it gets its connections at once."""
    conn.sendall(f"220 {info.listener} ready\n".encode())
    conn.sendall(_line(conn))


@client_speaks_first
async def async_one_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one line, then gives the connection back with whatever the reader already
    holds (park_async carries it): each line is a turn of its own, as a handler that
    parks after every request does."""
    line = await reader.readline()
    if line:
        writer.write(b"got " + line)
        await park_async(reader, writer)


@client_speaks_first
def proxied(conn: socket.socket, info: ConnectionInfo) -> None:
    """Who the client is, behind a PROXY protocol balancer: PEER and the TLVs handed on,
    for each line it sends. Between lines it parks, and comes back as the same client."""
    buf = info.carried
    while data := receive(conn, buf):
        buf += data
        while b"\n" in buf:
            _, _, buf = buf.partition(b"\n")
            words = [info.peer, info.proxy_unique_id, info.proxy_authority, info.proxy_alpn]
            conn.sendall(("proxied " + " ".join(map(str, words)) + "\n").encode())


def gate_echo(conn: socket.socket, info: ConnectionInfo) -> None:
    """Echo a line; 'gate PATH' instead answers 'gated', then holds its worker until the
    test opens and closes the FIFO at PATH, then answers 'opened'."""
    line = _line(conn)
    if line.startswith(b"gate "):
        conn.sendall(b"gated\n")
        _wait_for_gate(line)
        conn.sendall(b"opened\n")
    else:
        conn.sendall(line)


async def async_gate_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """gate_echo, async: the gate blocks the worker's whole loop, as a handler that computes
    for a long time would."""
    line = await reader.readline()
    if line.startswith(b"gate "):
        writer.write(b"gated\n")
        await writer.drain()
        _wait_for_gate(line)
        line = b"opened\n"
    writer.write(line)
    await writer.drain()


async def async_gate_pid(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers its worker's pid, then: 'gate PATH' blocks the loop as async_gate_echo's gate
    does; 'hold' waits for another line, without blocking it; anything else is done."""
    line = await reader.readline()
    writer.write(b"%d\n" % os.getpid())
    await writer.drain()
    if line.startswith(b"gate "):
        _wait_for_gate(line)
    elif line.startswith(b"hold"):
        await reader.readline()


def _wait_for_gate(line: bytes) -> None:
    with open(line[5:].strip(), "rb") as gate:  # a FIFO: blocks until a writer opens it
        gate.read()  # and until it closes it


def undeclared_echo(conn: socket.socket, info: ConnectionInfo) -> None:
    """sockpool.handlers.echo without client_speaks_first: a new connection comes to a
    worker at once, and receive() gives it back if its client has not spoken yet."""
    while data := receive(conn):
        conn.sendall(data)


@functools.wraps(sockpool.handlers.echo)
def token_echo(conn: socket.socket, info: ConnectionInfo) -> None:
    """sockpool.handlers.echo behind a wrapper of the user's own that reads a token first,
    with a plain recv(): functools.wraps gives it echo's attributes, not echo's first read."""
    if conn.recv(6) == b"token\n":
        sockpool.handlers.echo(conn, info)


def child_ignores(conn: socket.socket, info: ConnectionInfo) -> None:
    """What a program the handler starts ignores: SigIgn of /proc, in hex."""
    status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
    conn.sendall(next(ln for ln in status.splitlines() if ln.startswith("SigIgn:")).encode())
