"""A worker's checks on a connection it was handed unchecked, and the built-in handlers' send,
on real TCP sockets over loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from harness import tcp_pair
from sockpool import unsent, worker


@pytest.fixture
def tcp() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, the server's end of its connection)."""
    client, conn = tcp_pair()
    with client, conn:
        yield client, conn


def test_a_connection_with_a_request_is_readable(tcp) -> None:
    client, conn = tcp
    client.sendall(b"GET")
    assert worker._readable(conn, 1.0)
    assert conn.recv(10) == b"GET"  # the check only peeked


def test_a_request_and_a_half_close_is_readable(tcp) -> None:
    client, conn = tcp
    client.sendall(b"ping")
    client.shutdown(socket.SHUT_WR)  # as the bench's echo client does
    assert worker._readable(conn, 1.0)


def test_a_request_that_comes_while_it_waits_is_readable(tcp) -> None:
    client, conn = tcp
    threading.Timer(0.05, client.sendall, [b"late"]).start()
    assert worker._readable(conn, 5.0)


def test_a_silent_connection_is_not_readable(tcp) -> None:
    _, conn = tcp
    assert not worker._readable(conn, 0.01)
    assert not worker._readable(conn, 0)  # the async worker's look without waiting


@pytest.mark.parametrize("how", ["close", "half-close"])
def test_a_client_that_ends_without_a_byte_is_not_readable(tcp, how: str) -> None:
    client, conn = tcp
    if how == "close":
        client.close()
    else:
        client.shutdown(socket.SHUT_WR)
    assert not worker._readable(conn, 1.0)


def test_send_sends_what_does_not_fit_at_once_outside_a_worker(tcp) -> None:
    client, conn = tcp
    conn.settimeout(10)  # as a sync worker's connection: non-blocking underneath
    data = bytes(range(256)) * 40_000  # 10 MB: far more than the send buffer takes at once
    got = bytearray()

    def read() -> None:
        while chunk := client.recv(1 << 20):
            got.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    unsent.send(conn, data)
    conn.shutdown(socket.SHUT_WR)
    reader.join(10)
    assert bytes(got) == data


def test_a_client_that_reads_nothing_of_the_end_of_a_response_is_dropped_at_idle_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing pinned: an async connection ends by flushing what is left of its response
    (below the write buffer's limit, which send() does not wait on). A client that reads
    nothing more gives up its task, slot and descriptor at idle_timeout, not never."""
    monkeypatch.setattr(worker, "asyncio", asyncio, raising=False)  # as an async worker's start
    server, client = socket.socketpair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.settimeout(10)

    async def end() -> None:
        _, writer = await asyncio.open_connection(sock=server)
        writer.write(b"x" * (4 << 20))  # more than the socket's buffers hold
        writer.close()
        await worker._closed(writer, 0.2)

    with client:
        asyncio.run(asyncio.wait_for(end(), 10))
        assert server.fileno() == -1  # the descriptor went with it
        while client.recv(65536):  # what was in the buffers, then the end
            pass


def test_a_client_that_reads_slowly_gets_the_whole_end_of_a_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wait ends when nothing has moved for idle_timeout, not after it in all: a client
    taking 1 MiB at 800 KB/s, 1.3 s, has it all with an idle_timeout of 1 s."""
    monkeypatch.setattr(worker, "asyncio", asyncio, raising=False)  # as an async worker's start
    server, client = socket.socketpair()
    client.settimeout(10)
    got = bytearray()

    def read_slowly() -> None:
        while data := client.recv(8192):
            got.extend(data)
            threading.Event().wait(0.01)

    async def end() -> None:
        _, writer = await asyncio.open_connection(sock=server)
        writer.write(b"x" * (1 << 20))
        writer.close()
        await worker._closed(writer, 1.0)

    reader = threading.Thread(target=read_slowly)
    with client:
        reader.start()
        asyncio.run(asyncio.wait_for(end(), 10))
        reader.join(10)
    assert len(got) == 1 << 20
