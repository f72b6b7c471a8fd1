"""What the unit tests share."""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator

import pytest

from harness import disk_path, open_fds  # noqa: F401 (a fixture)
from sockpool import channel


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A real channel (SOCK_SEQPACKET socketpair): a dispatcher's end and a worker's."""
    a, b = channel.pair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def no_descriptor_leaks() -> Iterator[None]:
    """Fails a test that leaves a descriptor open (modules opt in with usefixtures).
    Collected first: a socket an earlier module dropped unclosed would otherwise be freed
    by a collection during the test, and count as one it closed."""
    gc.collect()
    before = open_fds()
    yield
    assert open_fds() == before, "descriptors leaked"
