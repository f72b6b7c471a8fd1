"""PROXY protocol headers: parsed strictly, never guessed, taken off real sockets exactly."""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from harness import inet4, tcp_pair, tlv, v2
from sockpool import proxyproto
from sockpool.listeners import PEER_FORMAT
from sockpool.proxyproto import MAX_HEADER, V2_SIGNATURE, Header, ProxyError, parse, take

pytestmark = pytest.mark.usefixtures("no_descriptor_leaks")

PAYLOAD = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    pton = socket.inet_pton
    return (
        pton(socket.AF_INET6, src) + pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport)
    )


def unix(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


def with_crc(header: bytes) -> bytes:
    """`header` (ending in a zeroed CRC32C TLV) with its checksum filled in."""
    return header[:-4] + proxyproto.crc32c(header).to_bytes(4, "big")


TCP4 = v2(block=inet4("203.0.113.7", "10.0.0.1", 51234, 443))
TCP6_TLVS = v2(
    fam=0x21,
    block=inet6("2001:db8::7", "::ffff:10.0.0.1", 1, 65535),
    tlvs=tlv(0x05, b"\x01" * 128)
    + tlv(0x02, "bücher.example".encode())
    + tlv(0x01, b"h2")
    + tlv(0x04, b"")
    + tlv(0x20, b"\x01\0\0\0\0" + tlv(0x21, b"TLSv1.3"))
    + tlv(0xE0, b"custom"),
)
V2_LOCAL = v2(command=0, fam=0x00)
V2_LOCAL_WITH_BLOCK = v2(command=0, fam=0x11, block=inet4("10.0.0.9", "10.0.0.1", 1, 2))
V2_UNSPEC = v2(fam=0x00, tlvs=tlv(0x05, b"id-1"))
V2_UDP = v2(fam=0x12, block=inet4("10.0.0.9", "10.0.0.1", 1, 2))
UNIX_PATH = v2(fam=0x31, block=unix(b"/run/client.sock", b"/run/sockpool.sock"))
UNIX_ABSTRACT = v2(fam=0x31, block=unix(b"\0haproxy", b""))
CRC = with_crc(v2(block=inet4("192.0.2.1", "192.0.2.2", 7, 8), tlvs=tlv(0x03, bytes(4))))
V1_TCP4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::ffff:192.0.2.1 0 65535\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
V1_LONGEST = b"PROXY UNKNOWN " + b"f" * 39 + b" " + b"f" * 39 + b" 65535 65535\r\n"

VALID: dict[bytes, tuple[str, Header]] = {
    TCP4: ("v2", Header(28, False, ("203.0.113.7", 51234), ("10.0.0.1", 443), "tcp4")),
    TCP6_TLVS: (
        "v2",
        Header(
            len(TCP6_TLVS),
            False,
            ("2001:db8::7", 1),
            ("::ffff:10.0.0.1", 65535),
            "tcp6",
            unique_id=b"\x01" * 128,
            authority="bücher.example",
            alpn=b"h2",
        ),
    ),
    V2_LOCAL: ("v2", Header(16, True)),
    V2_LOCAL_WITH_BLOCK: ("v2", Header(28, True)),
    V2_UNSPEC: ("v2", Header(len(V2_UNSPEC), True, unique_id=b"id-1")),
    V2_UDP: ("v2", Header(28, True)),
    UNIX_PATH: ("v2", Header(232, False, "/run/client.sock", "/run/sockpool.sock", "unix")),
    UNIX_ABSTRACT: ("v2", Header(232, False, b"\0haproxy", "", "unix")),
    CRC: ("v2", Header(35, False, ("192.0.2.1", 7), ("192.0.2.2", 8), "tcp4")),
    V1_TCP4: ("v1", Header(47, False, ("192.168.0.1", 56324), ("192.168.0.11", 443), "tcp4")),
    V1_TCP6: (
        "v1",
        Header(len(V1_TCP6), False, ("2001:db8::1", 0), ("::ffff:192.0.2.1", 65535), "tcp6"),
    ),
    V1_UNKNOWN: ("v1", Header(15, True)),
    V1_LONGEST: ("v1", Header(107, True)),
}
HEADERS = list(VALID)


@pytest.mark.parametrize("header", HEADERS)
def test_a_valid_header_is_parsed_by_its_version_and_any(header: bytes) -> None:
    version, expected = VALID[header]
    assert parse(header, version) == expected
    assert parse(header + PAYLOAD, version) == expected  # what follows is not the header's
    assert parse(header + PAYLOAD, "any") == expected


@pytest.mark.parametrize("header", HEADERS)
def test_every_truncation_of_a_valid_header_asks_for_more(header: bytes) -> None:
    version, _ = VALID[header]
    for size in range(len(header)):
        assert parse(header[:size], version) is None, header[:size]
        assert parse(header[:size], "any") is None, header[:size]


@pytest.mark.parametrize("header", HEADERS)
def test_a_header_of_the_other_version_is_refused_from_its_first_byte(header: bytes) -> None:
    version, _ = VALID[header]
    other = "v1" if version == "v2" else "v2"
    for size in range(1, len(header) + 1):
        with pytest.raises(ProxyError, match=f"a PROXY {version} header on a {other} listener"):
            parse(header[:size], other)


def test_crc32c_is_castagnoli() -> None:
    assert proxyproto.crc32c(b"123456789") == 0xE3069283  # RFC 3720's check value


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "not a PROXY (v[12] )?header"),
        (b"\x16\x03\x01\x02\x00", "not a PROXY (v[12] )?header"),  # a TLS ClientHello
        (b"proxy TCP4", "not a PROXY (v[12] )?header"),
        (b"PROXY\tTCP4", "not a PROXY (v[12] )?header"),
        (b"\r\n\r\n\x00\r\nQUIX", "not a PROXY (v[12] )?header"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x10", "bad v2 version 1"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x31", "bad v2 version 3"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c", "bad v2 command 2"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x41\x00\x0c", "bad v2 family and protocol 0x41"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x13\x00\x0c", "bad v2 family and protocol 0x13"),
        # Refused as soon as the length is known, without waiting for 64 KiB.
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff", r"header over 4096 bytes \(65551\)"),
        (v2(fam=0x11, block=bytes(11)), "v2 address block of 11 bytes, 0x11 needs 12"),
        (v2(fam=0x21, block=bytes(12)), "v2 address block of 12 bytes, 0x21 needs 36"),
        (v2(fam=0x31, block=bytes(215)), "v2 address block of 215 bytes, 0x31 needs 216"),
        (v2(block=bytes(12), tlvs=b"\x05\x00"), "v2 TLV header overruns header"),
        (v2(block=bytes(12), tlvs=b"\x05\x00\x05abcd"), "v2 TLV overruns header"),
        (v2(block=bytes(12), tlvs=tlv(4, b"") + b"\x04\xff\xff"), "v2 TLV overruns header"),
        (v2(fam=0, tlvs=b"\xe0\x00\x01"), "v2 TLV overruns header"),
        (v2(block=bytes(12), tlvs=tlv(5, bytes(129))), "v2 unique id over 128 bytes"),
        (v2(block=bytes(12), tlvs=tlv(2, b"a" * 256)), "v2 authority over 255 bytes"),
        (v2(block=bytes(12), tlvs=tlv(2, b"\xff.example")), "v2 authority is not UTF-8"),
        (v2(block=bytes(12), tlvs=tlv(5, b"a") + tlv(5, b"b")), "v2 unique id TLV given twice"),
        (v2(block=bytes(12), tlvs=tlv(1, b"h2") + tlv(1, b"h3")), "v2 ALPN TLV given twice"),
        (v2(block=bytes(12), tlvs=tlv(3, bytes(3))), "v2 CRC32C TLV is not 4 bytes"),
        (CRC[:-1] + bytes([CRC[-1] ^ 1]), "v2 CRC32C does not match"),
        (CRC[:20] + b"\x00" + CRC[21:], "v2 CRC32C does not match"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n", "lone CR or LF"),
        (b"PROXY TCP4 192.168.0.1\r 192.168.0.11 56324 443\r\n", "lone CR or LF"),
        (b"PROXY TCP4 192.168.0.1\n", "lone CR or LF"),
        (b"PROXY UNKNOWN\r\r\n", "lone CR or LF"),
        (b"PROXY UNKNOWN " + b"x" * 93, "v1 header longer than 107 bytes"),
        (b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n", "v1 TCP4 address is not IPv4: '01.2.3.4'"),
        (b"PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n", "v1 TCP4 address is not IPv4"),
        (b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", "v1 TCP4 address is not IPv4"),
        (b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n", "v1 TCP4 address is not IPv4: '::1'"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1 TCP6 address is not IPv6: '1.2.3.4'"),
        (b"PROXY TCP6 ::1%eth0 ::1 1 2\r\n", "v1 TCP6 address is not IPv6: '::1%eth0'"),
        (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "v1 TCP6 address is not IPv6"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", "v1 port is not a number from 0 to 65535"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n", "v1 port is not a number from 0 to 65535"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 +2\r\n", "v1 port is not a number from 0 to 65535"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", "exactly: PROXY TCPn SRC DST SPORT DPORT"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "exactly: PROXY TCPn SRC DST SPORT DPORT"),
        (b"PROXY TCP4\r\n", "exactly: PROXY TCPn SRC DST SPORT DPORT"),
        (b"PROXY TCP4  1.2.3.4 1.2.3.4 1\r\n", "v1 TCP4 address is not IPv4: ''"),
        (b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", "v1 protocol is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY UNKNOWNX\r\n", "v1 protocol is not TCP4, TCP6 or UNKNOWN: 'UNKNOWNX'"),
        (b"PROXY \r\n", "v1 protocol is not TCP4, TCP6 or UNKNOWN: ''"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", "exactly: PROXY TCPn SRC DST SPORT DPORT"),
    ],
)
def test_invalid_input_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    for version in ("v2" if data.startswith(b"\r") else "v1", "any"):
        with pytest.raises(ProxyError, match=reason):
            parse(data + PAYLOAD, version)


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP5",
        b"PROXY X",
        b"PROXY TCP4 1.2.3.4x",
        b"PROXY TCP4 1234.",
        b"PROXY TCP6 ::g",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 0",  # a port after a leading zero can only be "0"
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 123456",
        b"PROXY TCP4 1.2.3.4\n",
    ],
)
def test_a_v1_line_that_cannot_become_valid_is_refused_before_its_end(data: bytes) -> None:
    """The sender learns of its mistake at once instead of after the header timeout."""
    if data.endswith(b" 0"):
        assert parse(data, "v1") is None  # "0" itself is a port...
        data += b"8"  # ...but "08" is not
    with pytest.raises(ProxyError):
        parse(data, "v1")


def test_the_header_limit_holds_and_a_header_just_within_it_is_taken() -> None:
    block = inet4("10.0.0.9", "10.0.0.1", 1, 2)
    padding = MAX_HEADER - 16 - len(block) - 3
    largest = v2(block=block, tlvs=tlv(0x04, bytes(padding)))
    assert len(largest) == MAX_HEADER
    assert parse(largest, "v2") == Header(
        MAX_HEADER, False, ("10.0.0.9", 1), ("10.0.0.1", 2), "tcp4"
    )
    with pytest.raises(ProxyError, match="header over 4096 bytes"):
        parse(v2(block=block, tlvs=tlv(0x04, bytes(padding + 1)))[:16], "v2")


def test_bad_version_setting_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="version must be one of v1, v2, any"):
        parse(TCP4, "v3")


# --- take(): the socket edge --------------------------------------------------------------


@pytest.fixture(params=["unix", "tcp"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, server): the server end is what the dispatcher accepted."""
    client, server = socket.socketpair() if request.param == "unix" else tcp_pair()
    server.setblocking(False)
    with client, server:
        yield client, server


@pytest.mark.parametrize("header", [TCP4, TCP6_TLVS, V1_TCP4, V2_LOCAL, UNIX_PATH])
def test_take_consumes_exactly_the_header_and_leaves_the_payload(pair, header: bytes) -> None:
    client, server = pair
    client.sendall(header + PAYLOAD)
    assert take(server.fileno(), "any") == VALID[header][1]
    assert server.recv(4096) == PAYLOAD
    assert server.fileno() >= 0 and os.fstat(server.fileno())  # still open: take only borrows


def test_take_waits_for_a_header_split_across_sends(pair) -> None:
    client, server = pair
    client.sendall(TCP4[:7])  # inside the signature
    got = take(server.fileno(), "v2")
    assert got == TCP4[:7]
    client.sendall(TCP4[7:20])
    got = take(server.fileno(), "v2", got)
    assert got == TCP4[:20]
    client.sendall(TCP4[20:] + PAYLOAD)
    assert take(server.fileno(), "v2", got) == VALID[TCP4][1]
    assert server.recv(4096) == PAYLOAD


@pytest.mark.parametrize("version", ["v1", "v2", "any"])
def test_a_partial_header_leaves_the_connection_unreadable_until_more_comes(
    pair, version: str
) -> None:
    # Left queued, it kept the connection readable: the dispatcher's epoll woke at once
    # for it, again and again, until proxy_timeout (a busy loop for as long).
    client, server = pair
    header = V1_TCP4 if version == "v1" else TCP4
    client.sendall(header[:9])
    got = take(server.fileno(), version)
    assert got == header[:9]
    assert select.select([server], [], [], 0)[0] == []
    assert take(server.fileno(), version, got) == got  # a wake-up for nothing changes nothing
    client.sendall(header[9:])
    assert select.select([server], [], [], 5)[0] == [server]
    assert take(server.fileno(), version, got) == VALID[header][1]


def test_take_reads_a_header_longer_than_its_first_peek(pair) -> None:
    client, server = pair
    header = v2(block=inet4("10.0.0.9", "10.0.0.1", 1, 2), tlvs=tlv(0x04, bytes(1500)))
    client.sendall(header + PAYLOAD)
    assert take(server.fileno(), "v2").length == len(header)
    assert server.recv(4096) == PAYLOAD


def test_take_with_nothing_sent_yet_returns_none_even_on_a_blocking_socket(pair) -> None:
    _, server = pair
    server.setblocking(True)
    assert take(server.fileno(), "v1") == b""


@pytest.mark.parametrize("sent", [b"", TCP4[:5], TCP4[:20], V1_TCP4[:-1]])
def test_take_refuses_a_connection_closed_before_a_whole_header(pair, sent: bytes) -> None:
    client, server = pair
    client.sendall(sent)
    client.shutdown(socket.SHUT_WR)
    with pytest.raises(ProxyError, match="connection closed before a whole PROXY header"):
        take(server.fileno(), "any")


def test_take_refuses_garbage_and_reports_why(pair) -> None:
    client, server = pair
    client.sendall(PAYLOAD)
    with pytest.raises(ProxyError, match="not a PROXY v2 header"):
        take(server.fileno(), "v2")


def test_take_reports_a_reset_connection_as_a_proxy_error() -> None:
    client, server = tcp_pair()
    with client, server:
        client.sendall(TCP4[:5])
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        with pytest.raises(ProxyError):
            take(server.fileno(), "v2")


# --- the real client's address, as a direct connection's --------------------------------


@pytest.mark.parametrize(
    ("family", "host", "v1_word"),
    [(socket.AF_INET, "127.0.0.1", b"TCP4"), (socket.AF_INET6, "::1", b"TCP6")],
)
def test_the_real_client_looks_like_a_direct_connection(family, host, v1_word) -> None:
    with socket.socket(family) as listener:
        listener.bind((host, 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()[:2]):
            server, peer = listener.accept()
            server.close()
    direct = PEER_FORMAT[family](peer)
    line = b"PROXY %s %s %s %d 80\r\n" % (v1_word, host.encode(), host.encode(), peer[1])
    block = (inet4 if family == socket.AF_INET else inet6)(host, host, peer[1], 80)
    binary = v2(fam=0x11 if family == socket.AF_INET else 0x21, block=block)
    for header in (line, binary):
        assert proxyproto.format_peer(parse(header, "any").source) == direct


def test_a_unix_client_looks_like_a_direct_connection(tmp_path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.bind(str(tmp_path / "c"))
            client.connect(path)
            server, peer = listener.accept()
            server.close()
    header = v2(fam=0x31, block=unix(os.fsencode(peer), path.encode()))
    for source in (peer, "", b"\0abstract"):
        header = v2(fam=0x31, block=unix(os.fsencode(source), path.encode()))
        direct = PEER_FORMAT[socket.AF_UNIX](source)
        assert proxyproto.format_peer(parse(header, "v2").source) == direct


# --- who may send a header ---------------------------------------------------------------


def test_by_default_only_loopback_and_unix_peers_are_trusted() -> None:
    trusted = proxyproto.Trusted()
    for addr in [
        ("127.0.0.1", 1),
        ("127.9.8.7", 2),
        ("::1", 3, 0, 0),
        ("::ffff:127.0.0.2", 4, 0, 0),
    ]:
        assert trusted.allows(addr), addr
    for addr in ["", "/run/haproxy.sock", b"\0abstract"]:
        assert trusted.allows(addr), addr
    for addr in [("10.0.0.1", 1), ("128.0.0.1", 1), ("::2", 1, 0, 0), ("::ffff:10.0.0.1", 1, 0, 0)]:
        assert not trusted.allows(addr), addr
    assert not trusted.allows(("fe80::1%lo", 1, 0, 1))


def test_trusted_networks_of_both_families() -> None:
    trusted = proxyproto.Trusted(["10.1.0.0/16", "192.0.2.7", "2001:db8::/32"])
    assert trusted.allows(("10.1.255.3", 1)) and trusted.allows(("::ffff:10.1.0.1", 1, 0, 0))
    assert trusted.allows(("192.0.2.7", 1)) and not trusted.allows(("192.0.2.8", 1))
    assert trusted.allows(("2001:db8:ff::1", 1, 0, 0)) and not trusted.allows(
        ("2001:db9::1", 1, 0, 0)
    )
    assert not trusted.allows(("127.0.0.1", 1))  # the default is replaced, not extended
    assert not proxyproto.Trusted([]).allows(("127.0.0.1", 1))


def test_trust_stays_right_past_its_cache() -> None:
    trusted = proxyproto.Trusted(["10.0.0.0/24"])
    for n in range(3 * proxyproto.Trusted.CACHE):
        host = f"10.0.{n // 256 % 2}.{n % 256}"
        assert trusted.allows((host, 1)) == (n // 256 % 2 == 0), host


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.5/8", "'10.0.0.5/8' has host bits set: did you mean 10.0.0.0/8?"),
        ("localhost", "'localhost' is not an IPv4 or IPv6 address or network"),
        ("10.0.0.0/33", "is not an IPv4 or IPv6 address or network"),
        ("", "'' is not an IPv4 or IPv6 address or network"),
        ("fe80::1%eth0/128", "'fe80::1%eth0/128': an address with a zone (%...) never matches"),
    ],
)
def test_bad_networks_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        proxyproto.Trusted([text])
    assert str(err.value) == message or message in str(err.value)


# --- fuzz --------------------------------------------------------------------------------


def _check(data: bytes) -> None:
    for version in proxyproto.VERSIONS:
        try:
            header = parse(data, version)
        except ProxyError as exc:
            assert exc.reason and "\n" not in exc.reason and len(exc.reason) < 200
            continue
        if header is not None:
            assert 0 < header.length <= len(data)
            assert header.length <= MAX_HEADER


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Near-valid input, where a parser's bounds checks are tested hardest."""
    bases = [*HEADERS, V2_SIGNATURE, b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 "]
    data = bytearray(draw(st.sampled_from(bases)) + draw(st.binary(max_size=64)))
    flips = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=4)
    for at, value in draw(flips):
        if at < len(data):
            data[at] = value
    return bytes(data)


@settings(max_examples=1500, deadline=None)
@given(mutated(), st.integers(0, 400))
@example(b"PROXY " + b"\0" * 39, 0)  # escaped, 39 NULs made a reason of 200 characters
def test_fuzz_mutated_headers(data: bytes, cut: int) -> None:
    _check(data[: max(cut, 1)])
    _check(data)


def verdict(data: bytes, version: str) -> object:
    try:
        return parse(data, version)  # None: not whole yet
    except ProxyError:
        return ProxyError


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_a_verdict_on_the_first_bytes_of_a_header_stands_for_all_of_them(data: bytes) -> None:
    """The dispatcher parses what has come so far: a header taken or refused on its first
    bytes is taken or refused the same once more have come."""
    for version in proxyproto.VERSIONS:
        first = next(filter(None, (verdict(data[:n], version) for n in range(1, len(data)))), None)
        assert first is None or first == verdict(data, version)


def test_defer_accept_is_set_for_tcp_and_put_back_as_it_was() -> None:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 0)  # systemd's default
        assert proxyproto.defer_accept(lsock, 3.0) == 0
        assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
        proxyproto.restore_accept(lsock, 0)
        assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
    with socket.socket(socket.AF_UNIX) as usock:
        assert proxyproto.defer_accept(usock, 3.0) is None  # no such thing for UNIX sockets


def test_no_peer_text_holds_a_nul_so_no_client_can_forge_the_tlvs() -> None:
    # An abstract UNIX name may hold NULs; behind one, split_peer would read "TLVs".
    peer = PEER_FORMAT[socket.AF_UNIX](b"\0x\0\x04evil\0\0")
    assert "\0" not in peer and proxyproto.split_peer(peer) == (peer, None, None, None)
