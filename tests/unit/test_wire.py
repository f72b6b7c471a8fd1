"""The handoff wire format, without sockets."""

from __future__ import annotations

import select

import pytest

from sockpool import wire


def test_handoff_round_trip() -> None:
    entries = [(1, "web", "127.0.0.1:5000"), (2**64 - 1, "admin", "[::1]:6000"), (3, "u", "")]
    decoded = wire.decode_to_worker(wire.encode_handoff(entries), nfds=3)
    assert decoded == [wire.Handoff(*e) for e in entries]


def test_peer_that_is_not_utf8_survives() -> None:
    peer = b"/tmp/\xff.sock".decode(errors="surrogateescape")
    [handoff] = wire.decode_to_worker(wire.encode_handoff([(7, "x", peer)]), nfds=1)
    assert handoff.peer == peer


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 11, 12, 14, 20])
def test_truncated_handoff_is_refused(cut: int) -> None:
    data = wire.encode_handoff([(1, "web", "127.0.0.1:5000")])
    with pytest.raises(wire.WireError):
        wire.decode_to_worker(data[:cut], nfds=1)


def test_stray_bytes_are_refused() -> None:
    data = wire.encode_handoff([(1, "web", "127.0.0.1:5000")])
    with pytest.raises(wire.WireError, match="stray"):
        wire.decode_to_worker(data + b"x", nfds=1)


@pytest.mark.parametrize("nfds", [0, 2, 253])
def test_descriptor_count_must_match_entries(nfds: int) -> None:
    data = wire.encode_handoff([(1, "web", "p")])
    with pytest.raises(wire.WireError, match="carries"):
        wire.decode_to_worker(data, nfds=nfds)


def test_too_many_descriptors_for_one_message() -> None:
    wire.encode_handoff([(i, "l", "p") for i in range(wire.MAX_FDS)])
    with pytest.raises(wire.WireError, match="at most 253"):
        wire.encode_handoff([(i, "l", "p") for i in range(wire.MAX_FDS + 1)])


def test_empty_handoff_and_long_names_are_refused() -> None:
    with pytest.raises(wire.WireError):
        wire.encode_handoff([])
    with pytest.raises(wire.WireError, match="255 bytes"):
        wire.encode_handoff([(1, "n" * 256, "p")])


def test_stop() -> None:
    assert wire.decode_to_worker(wire.encode_stop(), nfds=0) == wire.Stop()
    with pytest.raises(wire.WireError):
        wire.decode_to_worker(wire.encode_stop(), nfds=1)


@pytest.mark.parametrize("data", [b"", b"Z", b"Xabc", b"\x00"])
def test_unknown_messages_to_a_worker(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_to_worker(data, nfds=0)


def test_worker_messages_round_trip() -> None:
    assert wire.decode_to_dispatcher(wire.encode_ready(100)) == wire.Ready(100)
    assert wire.decode_to_dispatcher(wire.encode_failed("no module")) == wire.Failed("no module")
    assert wire.decode_to_dispatcher(wire.encode_beat()) == wire.Beat()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Q",
        b"R\x00\x00",  # short
        b"R\x00\x00\x00\x00",  # capacity 0
        b"D\x00\x01",  # done records never come on the channel
        wire.encode_beat() + b"x",
    ],
)
def test_bad_worker_messages(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_to_dispatcher(data)


def test_done_records_round_trip_in_atomic_writes() -> None:
    ids = list(range(1000))
    writes = wire.encode_done(4242, ids)
    assert all(len(w) <= select.PIPE_BUF and len(w) % wire.DONE.size == 0 for w in writes)
    assert list(wire.decode_done(b"".join(writes))) == [(4242, i) for i in ids]
    assert wire.encode_done(1, []) == []


def test_partial_done_record_is_refused() -> None:
    with pytest.raises(wire.WireError, match="not whole records"):
        list(wire.decode_done(wire.encode_done(1, [5])[0][:-1]))


def test_the_largest_handoff_fits_the_receive_buffer() -> None:
    """253 connections of a 255-byte listener with long peers: encoding cannot fail on size,
    and the receive buffer stays below glibc's 128 KiB mmap threshold."""
    peer = "/" + "p" * 400
    data = wire.encode_handoff([(2**64 - 1, "n" * wire.MAX_NAME, peer)] * wire.MAX_FDS)
    assert len(data) == wire.MAX_MESSAGE < 128 * 1024 - 64
    decoded = wire.decode_to_worker(data, nfds=wire.MAX_FDS)
    assert decoded[0].peer == peer[: wire.MAX_PEER]


UNDECODABLE = b"/tmp/\xff\xfe".decode(errors="surrogateescape")  # as Python gives such paths


@pytest.mark.parametrize(
    ("peer", "received"),
    [
        ("/tmp/a\nb\x1b[31m", "/tmp/a\nb\x1b[31m"),  # control characters travel as they are
        (UNDECODABLE, UNDECODABLE),
        ("/tmp/\ud800", "/tmp/\\ud800"),  # a surrogate no decoder produces: escaped
        ("x" + "é" * 200, "x" + "é" * 119 + "\udcc3"),  # cut inside a character at MAX_PEER
    ],
)
def test_no_peer_makes_encoding_raise(peer: str, received: str) -> None:
    [handoff] = wire.decode_to_worker(wire.encode_handoff([(1, "web", peer)]), nfds=1)
    assert (handoff.listener, handoff.peer) == ("web", received)


def test_listener_name_with_undecodable_bytes_round_trips() -> None:
    name = b"/run/\xff.sock".decode(errors="surrogateescape")
    [handoff] = wire.decode_to_worker(wire.encode_handoff([(1, name, "unix")]), nfds=1)
    assert handoff.listener == name
