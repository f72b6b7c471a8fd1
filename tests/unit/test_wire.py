"""The handoff wire format, without sockets (but for one check of the receive buffer)."""

from __future__ import annotations

import os
import select
import struct

import pytest

from sockpool import channel, wire
from sockpool.hotpath import batches

LONGEST_NAME = "n" * wire.MAX_NAME
LONGEST_PEER = "/" + "p" * 800  # cut to MAX_PEER on the wire


def entry(conn_id: int = 1, listener: str = "web", peer: str = "127.0.0.1:5000", carry=b"", t=0):
    return (conn_id, listener, peer, carry, t)


def test_handoff_round_trip() -> None:
    entries = [
        entry(1, "web", "127.0.0.1:5000"),
        entry(2**64 - 1, "admin", "[::1]:6000", b"GET / HT", 2**64 - 1),
        entry(3, "u", "", b"\0" * 100, 12345),
    ]
    decoded = wire.decode_to_worker(wire.encode_handoff(entries), nfds=3)
    assert decoded == [wire.Handoff(*e, may_park=True) for e in entries]


@pytest.mark.parametrize("may_park", [True, False])
def test_may_park_flag_round_trips(may_park: bool) -> None:
    data = wire.encode_handoff([entry(), entry(2, carry=b"x", t=9)], may_park=may_park)
    decoded = wire.decode_to_worker(data, nfds=2)
    assert [h.may_park for h in decoded] == [may_park, may_park]


def test_peer_that_is_not_utf8_survives() -> None:
    peer = b"/tmp/\xff.sock".decode(errors="surrogateescape")
    [handoff] = wire.decode_to_worker(wire.encode_handoff([entry(7, "x", peer)]), nfds=1)
    assert handoff.peer == peer


@pytest.mark.parametrize(
    "entries",
    [
        [entry()],
        [entry(carry=b"GET / HTTP/1.1\r\nHost: x\r\n", t=77)],
        [entry(1), entry(2, "admin", "[::1]:1", b"partial", 5), entry(3, carry=b"z")],
    ],
    ids=["plain", "carry", "mixed"],
)
def test_a_handoff_cut_anywhere_is_refused(entries: list) -> None:
    """Every proper prefix of a handoff, carries and all, is refused, never misread."""
    data = wire.encode_handoff(entries)
    for cut in range(len(data)):
        with pytest.raises(wire.WireError):
            wire.decode_to_worker(data[:cut], nfds=len(entries))


def test_stray_bytes_are_refused() -> None:
    data = wire.encode_handoff([entry(carry=b"abc", t=1)])
    with pytest.raises(wire.WireError, match="stray"):
        wire.decode_to_worker(data + b"x", nfds=1)


@pytest.mark.parametrize(("count", "nfds"), [(1, 0), (1, 2), (1, 253), (3, 2), (3, 4)])
def test_descriptor_count_must_match_entries(count: int, nfds: int) -> None:
    data = wire.encode_handoff([entry(i, carry=b"c" * i) for i in range(count)])
    with pytest.raises(wire.WireError, match="carries"):
        wire.decode_to_worker(data, nfds=nfds)


def test_a_batch_is_at_most_max_batch() -> None:
    wire.encode_handoff([entry(i) for i in range(wire.MAX_BATCH)])
    with pytest.raises(wire.WireError, match=f"at most {wire.MAX_BATCH}"):
        wire.encode_handoff([entry(i) for i in range(wire.MAX_BATCH + 1)])


def test_empty_handoff_and_long_names_are_refused() -> None:
    with pytest.raises(wire.WireError):
        wire.encode_handoff([])
    with pytest.raises(wire.WireError, match="255 bytes"):
        wire.encode_handoff([entry(1, "n" * 256)])


def test_a_handoff_over_max_message_is_refused() -> None:
    """Two full carries in one message: the hot path never builds one (batches() sends a
    carrying connection alone), and the encoder refuses it rather than send what the
    worker's receive buffer would truncate."""
    full = b"c" * wire.MAX_CARRY
    with pytest.raises(wire.WireError, match=f"at most {wire.MAX_MESSAGE}"):
        wire.encode_handoff([entry(1, carry=full), entry(2, carry=full)])


def test_stop() -> None:
    assert wire.decode_to_worker(wire.encode_stop(), nfds=0) == wire.Stop()
    with pytest.raises(wire.WireError):
        wire.decode_to_worker(wire.encode_stop(), nfds=1)


@pytest.mark.parametrize("on", [False, True])
def test_accept_round_trips_and_names_no_connection(on: bool) -> None:
    data = wire.encode_accept(on)
    assert wire.decode_to_worker(data, nfds=0) == wire.Accept(on)
    assert wire.first_conn_id(data) is None
    with pytest.raises(wire.WireError, match="malformed ACCEPT"):
        wire.decode_to_worker(data, nfds=1)


@pytest.mark.parametrize("data", [b"A", b"A\x02", b"A\x01\x00"])
def test_a_malformed_accept_is_refused(data: bytes) -> None:
    with pytest.raises(wire.WireError, match="malformed ACCEPT"):
        wire.decode_to_worker(data, nfds=0)


@pytest.mark.parametrize("conn_id", [1, 2**64 - 1])
def test_a_peek_at_a_handoffs_head_names_its_first_connection(conn_id: int) -> None:
    for data in (
        wire.encode_one(conn_id, "web", "peer", b"", 0, True),
        wire.encode_handoff([entry(conn_id), entry(conn_id - 1)]),
    ):
        assert wire.first_conn_id(data[: wire.FIRST_ID_SIZE]) == conn_id
    assert wire.first_conn_id(wire.encode_stop()) is None
    assert wire.first_conn_id(data[: wire.FIRST_ID_SIZE - 1]) is None


@pytest.mark.parametrize("data", [b"", b"Z", b"Xabc", b"\x00", b"H", b"H\x01"])
def test_unknown_messages_to_a_worker(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_to_worker(data, nfds=0)


def test_worker_messages_round_trip() -> None:
    assert wire.decode_to_dispatcher(wire.encode_ready(100)) == wire.Ready(100)
    assert wire.decode_to_dispatcher(wire.encode_failed("no module")) == wire.Failed("no module")
    assert wire.decode_to_dispatcher(wire.encode_beat()) == wire.Beat()
    assert wire.decode_to_dispatcher(wire.encode_retire("sys.exit()")) == wire.Retire("sys.exit()")
    long = wire.decode_to_dispatcher(b"X" + b"x" * 100_000)  # one line of a record, at most
    assert long == wire.Retire("x" * wire.MAX_REASON)


@pytest.mark.parametrize(
    "names",
    [
        set(),
        {"web"},
        {"web", "admin", "/run/x.sock", LONGEST_NAME},
        {b"/run/\xff.sock".decode(errors="surrogateescape")},
    ],
)
def test_ready_names_the_listeners_whose_clients_speak_first(names: set[str]) -> None:
    ready = wire.decode_to_dispatcher(wire.encode_ready(7, names))
    assert ready == wire.Ready(7, frozenset(names))


@pytest.mark.parametrize("carry", [b"", b"GET / HTTP/1.1\r\n", b"\0" * wire.MAX_CARRY])
def test_park_round_trip(carry: bytes) -> None:
    data = wire.encode_park(2**64 - 1, 123456789, carry)
    assert wire.decode_to_dispatcher(data, nfds=1) == wire.Park(2**64 - 1, 123456789, carry)


@pytest.mark.parametrize("carry", [b"", b"GET / HTTP/1.1\r\n", b"\0" * wire.MAX_CARRY])
@pytest.mark.parametrize("named", [("web", "10.0.0.1:5"), (LONGEST_NAME, "p" * wire.MAX_PEER)])
def test_a_park_of_a_connection_the_worker_accepted_names_where_from(
    carry: bytes, named: tuple[str, str]
) -> None:
    data = wire.encode_park(2**62 + 9, 0, carry, silent=not carry, accepted=named)
    park = wire.decode_to_dispatcher(data, nfds=1)
    assert park == wire.Park(
        2**62 + 9, 0, carry, silent=not carry, listener=named[0], peer=named[1]
    )


@pytest.mark.parametrize("cut", range(1, 12))
def test_a_park_whose_listener_and_peer_are_cut_short_is_refused(cut: int) -> None:
    data = wire.encode_park(5, 0, b"", accepted=("web", "peer"))
    with pytest.raises(wire.WireError, match=r"PARK naming|malformed"):
        wire.decode_to_dispatcher(data[:-cut], nfds=1)


@pytest.mark.parametrize("ready", [False, True])
@pytest.mark.parametrize("silent", [False, True])
def test_park_flags_round_trip(ready: bool, silent: bool) -> None:
    data = wire.encode_park(5, 0, b"x" if ready else b"", ready=ready, silent=silent)
    park = wire.decode_to_dispatcher(data, nfds=1)
    assert isinstance(park, wire.Park) and (park.ready, park.silent) == (ready, silent)


@pytest.mark.parametrize("conn_id", [0, 1, 2**64 - 1])
@pytest.mark.parametrize("carry", [b"", b"GET / HTTP/1.1\r\n"])
@pytest.mark.parametrize("may_park", [False, True])
def test_one_connection_encodes_as_a_batch_of_one(
    conn_id: int, carry: bytes, may_park: bool
) -> None:
    entry = (conn_id, "web", "127.0.0.1:5", carry, 7)
    one = wire.encode_one(*entry, may_park)
    assert one == wire.encode_handoff([entry], may_park)
    (h,) = wire.decode_to_worker(one, 1)
    assert (h.conn_id, h.listener, h.peer, h.carry, h.started, h.may_park) == (*entry, may_park)


@pytest.mark.parametrize("nfds", [0, 2, 253])
def test_park_needs_exactly_one_descriptor(nfds: int) -> None:
    with pytest.raises(wire.WireError, match="descriptors"):
        wire.decode_to_dispatcher(wire.encode_park(1, 0, b"x"), nfds=nfds)


@pytest.mark.parametrize("close", [False, True])
@pytest.mark.parametrize("carry", [b"", b"GET / HT"])
def test_a_park_with_an_answer_to_send_has_its_memfd_beside(close: bool, carry: bytes) -> None:
    data = wire.encode_park(9, 8, carry, unsent=True, close=close)
    park = wire.decode_to_dispatcher(data, nfds=2)
    assert park == wire.Park(9, 8, carry, unsent=True, close=close)
    for nfds in (1, 3):  # the memfd, and only it, goes with UNSENT
        with pytest.raises(wire.WireError, match="descriptors"):
            wire.decode_to_dispatcher(data, nfds=nfds)


@pytest.mark.parametrize(
    "flags", [wire.CLOSE, wire.UNSENT | wire.SILENT | wire.CLOSE, wire.UNSENT | wire.SILENT]
)
def test_close_needs_an_answer_to_send_and_silence_has_none(flags: int) -> None:
    """CLOSE alone would have the dispatcher close what a worker should have; a connection
    that never spoke has had no answer."""
    data = b"P" + struct.pack("!BQQIQQ", flags, 1, 0, 0, 0, 0)
    with pytest.raises(wire.WireError, match="flags"):
        wire.decode_to_dispatcher(data, nfds=2 if flags & wire.UNSENT else 1)
    with pytest.raises(wire.WireError, match="CLOSE without UNSENT"):
        wire.encode_park(1, 0, b"", close=True)


@pytest.mark.parametrize("file", [False, True])
def test_a_park_with_an_answer_to_send_says_which_bytes_of_what(file: bool) -> None:
    """The bytes still to send of the memfd, or of the application's file (a download's
    rest), whose bytes are not the worker's memory."""
    data = wire.encode_park(9, 8, b"", unsent=True, span=(100, 2**63 - 1), file=file)
    park = wire.decode_to_dispatcher(data, nfds=2)
    assert park == wire.Park(9, 8, b"", unsent=True, span=(100, 2**63 - 1), file=file)


@pytest.mark.parametrize(
    ("flags", "span"),
    [
        (0, (0, 5)),  # bytes to send, and nothing to send them from
        (wire.FILE, (0, 0)),  # a file without its descriptor
        (wire.UNSENT, (6, 5)),  # backwards
        (wire.UNSENT | wire.FILE, (0, 2**63)),  # past any file
    ],
)
def test_bytes_to_send_need_their_descriptor_and_an_order(flags: int, span: tuple) -> None:
    nfds = 2 if flags & wire.UNSENT else 1
    data = b"P" + struct.pack("!BQQIQQ", flags, 1, 0, 0, *span)
    with pytest.raises(wire.WireError, match="to send"):
        wire.decode_to_dispatcher(data, nfds=nfds)
    with pytest.raises(wire.WireError, match="to send"):
        wire.encode_park(
            1, 0, b"", unsent=bool(flags & wire.UNSENT), span=span, file=bool(flags & wire.FILE)
        )


def test_a_park_says_how_many_bytes_its_request_still_wants() -> None:
    data = wire.encode_park(7, 8, b"POST / HTTP/1.1\r\n", want=2**32 - 1)
    assert wire.decode_to_dispatcher(data, nfds=1) == wire.Park(
        7, 8, b"POST / HTTP/1.1\r\n", want=2**32 - 1
    )


@pytest.mark.parametrize(
    ("carry", "flags", "nfds"),
    [(b"", 0, 1), (b"x", wire.READY_NOW, 1), (b"x", wire.UNSENT | wire.CLOSE, 2)],
    ids=["no-request-begun", "ready-now", "closed-after"],
)
def test_a_want_only_for_a_request_begun_and_kept(carry: bytes, flags: int, nfds: int) -> None:
    """Bytes to wait for only make sense for a request begun that is kept for them: not
    for one with nothing carried, one to hand on at once, or one to close."""
    data = b"P" + struct.pack("!BQQIQQ", flags, 1, 0, 5, 0, 0) + carry
    with pytest.raises(wire.WireError, match="want"):
        wire.decode_to_dispatcher(data, nfds=nfds)
    with pytest.raises(wire.WireError, match="want"):
        wire.encode_park(
            1, 0, carry, ready=bool(flags & wire.READY_NOW), unsent=nfds == 2,
            close=bool(flags & wire.CLOSE), want=5,
        )  # fmt: skip


@pytest.mark.parametrize(
    "data", [wire.encode_ready(1, {"web"}), wire.encode_failed("x"), wire.encode_beat()]
)
def test_other_worker_messages_never_carry_a_descriptor(data: bytes) -> None:
    with pytest.raises(wire.WireError, match="1 descriptors"):
        wire.decode_to_dispatcher(data, nfds=1)


def test_oversize_carries_are_refused_both_ways() -> None:
    with pytest.raises(wire.WireError, match=f"at most {wire.MAX_CARRY}"):
        wire.encode_park(1, 0, b"x" * (wire.MAX_CARRY + 1))
    forged = wire.encode_park(1, 0, b"x" * wire.MAX_CARRY) + b"x"
    with pytest.raises(wire.WireError, match=f"at most {wire.MAX_CARRY}"):
        wire.decode_to_dispatcher(forged, nfds=1)


@pytest.mark.parametrize("cut", range(1, 38))
def test_a_park_cut_short_is_refused(cut: int) -> None:
    with pytest.raises(wire.WireError, match="malformed"):
        wire.decode_to_dispatcher(wire.encode_park(5, 6, b"")[:cut], nfds=1)


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


def longest(conn_id: int, carry: bytes = b"") -> tuple:
    return (conn_id, -1, LONGEST_NAME, LONGEST_PEER, carry, 2**64 - 1)


def test_the_largest_handoff_fits_the_receive_buffer() -> None:
    """A full batch with the longest names and peers, one of them carrying MAX_CARRY bytes,
    is MAX_MESSAGE exactly, and MAX_MESSAGE stays below glibc's 128 KiB mmap threshold."""
    entries = [entry(2**64 - 1, LONGEST_NAME, LONGEST_PEER, t=2**64 - 1)] * wire.MAX_BATCH
    entries[-1] = entry(2**64 - 1, LONGEST_NAME, LONGEST_PEER, b"c" * wire.MAX_CARRY, 2**64 - 1)
    data = wire.encode_handoff(entries)
    assert len(data) == wire.MAX_MESSAGE < 128 * 1024 - 64
    decoded = wire.decode_to_worker(data, nfds=wire.MAX_BATCH)
    assert decoded[0].peer == LONGEST_PEER[: wire.MAX_PEER]
    assert decoded[-1].carry == b"c" * wire.MAX_CARRY


def test_every_message_the_hot_path_builds_fits() -> None:
    """What batches() makes of any mix, with the longest names, peers and carries, encodes
    (never over MAX_MESSAGE), and a PARK with the largest carry fits too."""
    items = [longest(i, b"c" * wire.MAX_CARRY if i % 3 == 0 else b"") for i in range(200)]
    for batch in batches(items):
        entries = [(cid, name, peer, carry, t) for cid, _, name, peer, carry, t in batch]
        assert len(wire.encode_handoff(entries)) <= wire.MAX_MESSAGE
    assert len(wire.encode_park(1, 1, b"c" * wire.MAX_CARRY)) <= wire.MAX_MESSAGE


def test_the_largest_handoff_passes_a_real_channel() -> None:
    """The kernel takes a MAX_MESSAGE datagram with MAX_BATCH descriptors whole, and the
    receiver's buffer reads it without truncation."""
    entries = [entry(i, LONGEST_NAME, LONGEST_PEER) for i in range(wire.MAX_BATCH)]
    entries[0] = entry(0, LONGEST_NAME, LONGEST_PEER, b"c" * wire.MAX_CARRY)
    data = wire.encode_handoff(entries)
    a, b = channel.pair()
    r, w = os.pipe()
    try:
        channel.send(a, data, [r] * wire.MAX_BATCH)
        got, fds = channel.receive(b)
        channel.close_all(fds)
    finally:
        channel.close_all([r, w])
        a.close()
        b.close()
    assert got == data and len(fds) == wire.MAX_BATCH


UNDECODABLE = b"/tmp/\xff\xfe".decode(errors="surrogateescape")  # as Python gives such paths


@pytest.mark.parametrize(
    ("peer", "received"),
    [
        ("/tmp/a\nb\x1b[31m", "/tmp/a\nb\x1b[31m"),  # control characters travel as they are
        (UNDECODABLE, UNDECODABLE),
        ("/tmp/\ud800", "/tmp/\\ud800"),  # a surrogate no decoder produces: escaped
        ("x" + "é" * 400, "x" + "é" * 299 + "\udcc3"),  # cut inside a character at MAX_PEER
    ],
)
def test_no_peer_makes_encoding_raise(peer: str, received: str) -> None:
    [handoff] = wire.decode_to_worker(wire.encode_handoff([entry(1, "web", peer)]), nfds=1)
    assert (handoff.listener, handoff.peer) == ("web", received)


def test_listener_name_with_undecodable_bytes_round_trips() -> None:
    name = b"/run/\xff.sock".decode(errors="surrogateescape")
    [handoff] = wire.decode_to_worker(wire.encode_handoff([entry(1, name, "unix")]), nfds=1)
    assert handoff.listener == name


@pytest.mark.parametrize("solo", [False, True])
def test_ready_says_whether_the_worker_serves_one_at_a_time(solo: bool) -> None:
    ready = wire.decode_to_dispatcher(wire.encode_ready(2, {"web"}, solo))
    assert ready == wire.Ready(2, frozenset({"web"}), solo)
