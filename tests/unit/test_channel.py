"""Descriptors over a real SOCK_SEQPACKET socketpair, including the kernel's failure modes."""

from __future__ import annotations

import os
import resource
import socket

import pytest

from harness import open_fds
from sockpool import channel, wire


def test_descriptors_arrive_with_their_message_and_close_on_exec(pair) -> None:
    a, b = pair
    r, w = os.pipe()
    channel.send(a, b"hello", [r, w])
    data, fds = channel.receive(b)
    assert data == b"hello" and len(fds) == 2
    assert all(not os.get_inheritable(fd) for fd in fds)
    os.write(fds[1], b"through the copy")
    assert os.read(r, 100) == b"through the copy"
    channel.close_all([r, w, *fds])


def test_end_of_stream(pair) -> None:
    a, b = pair
    a.close()
    assert channel.receive(b) is None


def test_message_boundaries_are_kept(pair) -> None:
    a, b = pair
    channel.send(a, b"one")
    channel.send(a, b"two")
    assert channel.receive(b) == (b"one", [])
    assert channel.receive(b) == (b"two", [])


def test_oversized_message_is_refused_and_its_descriptors_closed(pair) -> None:
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    r, w = os.pipe()
    before = open_fds()
    channel.send(a, b"x" * (wire.MAX_MESSAGE + 10), [r])
    with pytest.raises(wire.WireError, match="longer than"):
        channel.receive(b)
    assert open_fds() == before  # the received copy was closed
    channel.close_all([r, w])


def test_descriptors_dropped_at_the_receivers_limit_are_reported(pair) -> None:
    a, b = pair
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(4)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + 1, hard))  # room for ~1 more
    try:
        channel.send(a, b"four", fds)
        before_receive = open_fds()
        with pytest.raises(wire.WireError, match="dropped"):
            channel.receive(b)
        assert open_fds() == before_receive  # what did arrive was closed again
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    before = open_fds()
    channel.close_all(fds)
    assert open_fds() == before - 4  # nothing else was left open


def test_a_full_queue_raises_instead_of_blocking(pair) -> None:
    a, _ = pair
    a.setblocking(False)
    with pytest.raises(BlockingIOError):
        for _ in range(100_000):
            channel.send(a, b"x" * 1000)
