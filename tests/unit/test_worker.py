"""A worker's checks on a connection it was handed unchecked, and the built-in handlers' send,
on real TCP sockets over loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from harness import tcp_pair
from sockpool import handlers, worker


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


def test_send_all_sends_what_does_not_fit_at_once(tcp) -> None:
    client, conn = tcp
    conn.settimeout(10)  # as a sync worker's connection: non-blocking underneath
    data = bytes(range(256)) * 40_000  # 10 MB: far more than the send buffer takes at once
    got = bytearray()

    def read() -> None:
        while chunk := client.recv(1 << 20):
            got.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    handlers.send_all(conn, data)
    conn.shutdown(socket.SHUT_WR)
    reader.join(10)
    assert bytes(got) == data
