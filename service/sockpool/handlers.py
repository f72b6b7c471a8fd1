"""Built-in handlers: echo, and a minimal HTTP/1.1 server for examples and benchmarks.

Each comes in a sync and an async flavour over the same pure protocol code, so a
benchmark compares the pool models, not two implementations.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from .connection import ConnectionInfo, current_connection
from .errors import whole_number
from .giveback import (
    began,
    client_speaks_first,
    read,
    read_within,
    reads_first_with_receive,
    receive,
    request_left,
)
from .unsent import send

if TYPE_CHECKING:  # the async handlers import it themselves: a sync worker never loads it
    import asyncio

CHUNK = 65536
MAX_HEAD = 16384
MAX_BODY = 1 << 20  # http_hello skips a request's body, but only after reading it whole
_BODY = b"hello\n"
_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
_KEEP = _OK + b"\r\n" + _BODY
_CLOSE = _OK + b"Connection: close\r\n\r\n" + _BODY
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
TOO_LARGE = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@client_speaks_first
@reads_first_with_receive
def echo(conn: socket.socket, info: ConnectionInfo) -> None:
    """Send back what arrives until the peer closes its side; idle, the connection waits
    in the dispatcher, not here."""
    while data := receive(conn):
        send(conn, data)


def _idle_timeout() -> float | None:
    """The configured idle_timeout (sync handlers get it as their socket timeout)."""
    info = current_connection()
    return info.idle_timeout if info else None


@client_speaks_first
async def echo_async(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    import asyncio  # loaded by the async worker already

    idle = _idle_timeout()
    while True:
        async with asyncio.timeout(idle):
            data = await read(reader, writer)
        if not data:
            return
        writer.write(data)
        await writer.drain()


class BadRequest(ValueError):
    response = BAD_REQUEST  # what the client gets, before the connection closes


class TooLarge(BadRequest):
    response = TOO_LARGE


def http_response(head: bytes) -> tuple[bytes, bool, int]:
    """(response, keep the connection open, request body length to skip) for one request head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest(lines[0][:80])
    keep = parts[2] == b"HTTP/1.1"
    length = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadRequest(line[:80])
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"connection":
            keep = value == b"keep-alive" or (keep and value != b"close")
        elif name == b"content-length":
            if not value.isdigit():  # (bytes: 0-9 only)
                raise BadRequest(line[:80])
            # int() refuses thousands of digits: past 20, it is too large whatever it is.
            size = whole_number(value.decode(), 10**20 - 1)
            if size is None:
                size = MAX_BODY + 1
            if length not in (None, size):  # two different lengths: which is the body's?
                raise BadRequest(line[:80])
            length = size
            if length > MAX_BODY:
                raise TooLarge(line[:80])
        elif name == b"transfer-encoding":
            raise BadRequest(b"chunked request bodies are not supported")
    return (_KEEP if keep else _CLOSE), keep, length or 0


_END = b"\r\n\r\n"  # of a request head


def next_request(buf: bytes) -> tuple[bytes, bool, int] | None:
    """(response, keep the connection open, bytes of `buf` the request took) once `buf`
    holds a whole request; None while it is incomplete. Raises BadRequest."""
    end = buf.find(_END)
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise BadRequest(b"request head too long")
        if b"\n\n" in buf:  # its lines end in a bare LF: no CRLF CRLF will ever come
            raise BadRequest(b"request lines must end in CRLF")
        return None
    response, keep, length = http_response(buf[:end])
    used = end + 4 + length
    return (response, keep, used) if len(buf) >= used else None


def _owed(buf: bytes) -> int:
    """The bytes the request begun in `buf` (incomplete) still needs, once its head is
    whole: the rest of its body. 0 while the head is not."""
    end = buf.find(_END)
    return 0 if end < 0 else end + 4 + http_response(buf[:end])[2] - len(buf)


@client_speaks_first
@reads_first_with_receive
def http_hello(conn: socket.socket, info: ConnectionInfo) -> None:
    """Answer `200 hello` to every request on the connection (HTTP/1.1 keep-alive). Between
    requests, and while a request is incomplete, the connection waits in the dispatcher
    with what was read so far (receive() parks it), as the web servers' do: the rest of a
    body, up to max_buffered_body, the dispatcher waits for; a longer one that would take
    it over max_carry is read here, bounded by request_timeout."""
    buf = info.carried
    while True:
        try:
            request = next_request(buf)
        except BadRequest as exc:
            send(conn, exc.response)
            return
        if request is None:
            if not (data := receive(conn, buf, want=_owed(buf))):
                if buf:
                    send(conn, BAD_REQUEST)
                return
            buf += data
            continue
        response, keep, used = request
        if buf := buf[used:]:  # the next request's, read with this one: it began now
            began(info)
        send(conn, response)
        if not keep:
            return


@client_speaks_first
async def http_hello_async(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    import asyncio  # loaded by the async worker already

    idle = _idle_timeout()
    info = current_connection()
    buf = b""
    while True:
        try:
            request = next_request(buf)
        except BadRequest as exc:
            writer.write(exc.response)
            await writer.drain()
            return
        if request is None:
            if _END in buf:  # a body is read here: see http_hello
                data = await read_within(reader, idle, request_left(info))
            else:
                async with asyncio.timeout(idle):
                    data = await read(reader, writer, buf)
            if not data:
                if buf:  # it ended mid-request
                    writer.write(BAD_REQUEST)
                    await writer.drain()
                return
            buf += data
            continue
        response, keep, used = request
        if buf := buf[used:]:  # the next request's, read with this one: it began now
            began(info)
        writer.write(response)
        await writer.drain()
        if not keep:
            return
