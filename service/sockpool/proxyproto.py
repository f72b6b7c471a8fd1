"""PROXY protocol v1 and v2 (HAProxy's doc/proxy-protocol.txt): the client behind a balancer.

Our own parser, not PyPI's `proxy-protocol`: Debian 12 does not package it (the .deb may depend
only on Debian 12's), and it reads from asyncio streams, while the dispatcher peeks a raw fd.

`parse` is pure and strict: it never guesses whether a header is there (the listener's
setting says which versions it takes, and the first bytes say which one came), answers None
while `data` can still become a valid header, and raises ProxyError the moment it cannot.
`take` is the socket edge the dispatcher calls when a new connection is readable.
"""

from __future__ import annotations

import _socket
import contextlib
import os
import re
import select
import socket
import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

from .channel import PEEK
from .errors import quote
from .listeners import PEER_FORMAT

VERSIONS = ("v1", "v2", "any")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # bytes of the longest v1 line, CRLF included ("PROXY UNKNOWN" + two IPv6...)
# The whole v2 header, 16 fixed bytes included. HAProxy's biggest (UNIX addresses, a 128-byte
# unique id, a 255-byte authority, ALPN, CRC32C and the SSL TLVs with a client certificate's
# CN) stays under 1.5 KiB, and the spec keeps a header within one 536-byte segment when it
# can; 4 KiB is ample headroom, one page, and what a trusted-but-broken sender can make the
# dispatcher peek at most (the length field alone could announce 64 KiB).
MAX_HEADER = 4096
# What `take` peeks first: a v1 line, or a v2 header of the usual size; a larger v2 header is
# peeked again at its announced length.
_FIRST_PEEK = {"v1": V1_MAX, "v2": 536, "any": 536}
MAX_UNIQUE_ID = 128  # the spec's bound (PP2_TYPE_UNIQUE_ID: "up to 128 bytes"), as HAProxy's
MAX_AUTHORITY = 255  # a host name; HAProxy refuses a longer PP2_TYPE_AUTHORITY too

_ALPN, _AUTHORITY, _CRC32C, _UNIQUE_ID = 0x01, 0x02, 0x03, 0x05
_TLV_NAMES = {_ALPN: "ALPN", _AUTHORITY: "authority", _CRC32C: "CRC32C", _UNIQUE_ID: "unique id"}
# v2 transport/family byte -> (family, address block size). DGRAM over a stream connection
# means nothing to us: the spec lets a receiver treat it as UNSPEC (the connection's own).
_V2_FAMILIES: dict[int, tuple[str | None, int]] = {
    0x00: (None, 0),
    0x11: ("tcp4", 12),
    0x12: (None, 12),
    0x21: ("tcp6", 36),
    0x22: (None, 36),
    0x31: ("unix", 216),
    0x32: (None, 216),
}
_V2_FIXED = struct.Struct("!BBH")  # ver_cmd, fam, len after the 12-byte signature
_V4_BLOCK = struct.Struct("!4s4sHH")
_V6_BLOCK = struct.Struct("!16s16sHH")
_NO_TLVS = (None, None, None)
# Bound once: parse runs once per connection on the dispatcher's hot path.
_ntoa, _ntop, _AF_INET6 = socket.inet_ntoa, socket.inet_ntop, socket.AF_INET6
_new = tuple.__new__  # a NamedTuple without its Python-level __new__
_OCTET = rb"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"  # 0-255, no leading zero (no octal doubt)
_IPV4 = re.compile(rb"(?:%s\.){3}%s" % (_OCTET, _OCTET))
_IPV6_CHARS = re.compile(rb"[0-9A-Fa-f:.]*")
_PORT = re.compile(rb"0|[1-9]\d{0,4}")
_PORT_PREFIX = re.compile(rb"(?:0|[1-9]\d{0,4})?")
_IPV4_PREFIX = re.compile(rb"(?:%s\.){0,3}%s?" % (_OCTET, _OCTET))
_V1_WORDS = (b"TCP4", b"TCP6", b"UNKNOWN")
_V1_ADDRESS_MAX = {b"TCP4": 15, b"TCP6": 45}  # 45: INET6_ADDRSTRLEN less the NUL


class ProxyError(Exception):
    """The connection's PROXY header is invalid, or never came: drop the connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Address = tuple[str, int] | str | bytes


class Header(NamedTuple):
    """A complete PROXY header.

    `source`/`dest` are what `socket.getpeername()` would give for the client's own
    connection: (host, port) for tcp4 and tcp6, the path (str) or an abstract name (bytes)
    for unix, so `format_peer` renders them exactly as a direct connection's PEER.
    """

    length: int  # bytes the header occupies: consume exactly these
    local: bool  # v2 LOCAL, v1 UNKNOWN, or an UNSPEC family: use the connection's own addresses
    source: Address | None = None
    dest: Address | None = None
    family: str | None = None  # "tcp4", "tcp6", "unix"; None when local
    unique_id: bytes | None = None  # PP2_TYPE_UNIQUE_ID
    authority: str | None = None  # PP2_TYPE_AUTHORITY: the host name the client asked for (SNI)
    alpn: bytes | None = None  # PP2_TYPE_ALPN


def parse(data: bytes, version: str) -> Header | None:
    """The header at the start of `data`; None while `data` is a valid but incomplete prefix."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {', '.join(VERSIONS)}, not {version!r}")
    if data[:16] == _TCP4_PLAIN and len(data) >= 28 and version != "v1":
        # HAProxy's send-proxy-v2 without TLVs, the usual header: parsed in one unpack (the
        # general path below accepts exactly the same, with more steps).
        src, dst, sport, dport = _V4_BLOCK.unpack_from(data, 16)
        return _new(
            Header, (28, False, (_ntoa(src), sport), (_ntoa(dst), dport), "tcp4", *_NO_TLVS)
        )
    if not data:
        return None
    v2 = V2_SIGNATURE.startswith(data[:12])
    if v2 and version != "v1":
        return _parse_v2(data)
    v1 = V1_PREFIX.startswith(data[:6])
    if v1 and version != "v2":
        return _parse_v1(data) if len(data) > 6 else None
    if v2:
        raise ProxyError("a PROXY v2 header on a v1 listener")
    if v1:
        raise ProxyError("a PROXY v1 header on a v2 listener")
    raise ProxyError("not a PROXY header" if version == "any" else f"not a PROXY {version} header")


_TCP4_PLAIN = V2_SIGNATURE + b"\x21\x11\x00\x0c"  # PROXY, TCP over IPv4, 12 bytes: no TLVs


def _parse_v2(data: bytes) -> Header | None:
    if len(data) < 16:
        return None
    ver_cmd, fam, size = _V2_FIXED.unpack_from(data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"bad v2 version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command > 1:
        raise ProxyError(f"bad v2 command {command}")
    if fam not in _V2_FAMILIES:
        raise ProxyError(f"bad v2 family and protocol 0x{fam:02x}")
    end = 16 + size
    if end > MAX_HEADER:
        raise ProxyError(f"header over {MAX_HEADER} bytes ({end})")
    if len(data) < end:
        return None
    if command == 0:  # LOCAL: the balancer's own connection; the block is to be discarded
        return _new(Header, (end, True, None, None, None, None, None, None))
    family, block = _V2_FAMILIES[fam]
    if size < block:
        raise ProxyError(f"v2 address block of {size} bytes, 0x{fam:02x} needs {block}")
    tlvs = _tlvs(data, 16 + block, end) if size > block else _NO_TLVS
    if family is None:
        return _new(Header, (end, True, None, None, None, *tlvs))
    if family == "tcp4":
        src, dst, sport, dport = _V4_BLOCK.unpack_from(data, 16)
        source, dest = (_ntoa(src), sport), (_ntoa(dst), dport)
    elif family == "tcp6":
        src, dst, sport, dport = _V6_BLOCK.unpack_from(data, 16)
        source, dest = (_ntop(_AF_INET6, src), sport), (_ntop(_AF_INET6, dst), dport)
    else:
        source, dest = _unix_address(data[16:124]), _unix_address(data[124:232])
    return _new(Header, (end, False, source, dest, family, *tlvs))


def _unix_address(raw: bytes) -> str | bytes:
    """As CPython's getpeername() gives AF_UNIX addresses: an abstract name as bytes with its
    leading NUL, a path decoded as the file system does, an unnamed socket as ''; the fixed
    108 bytes are NUL-padded."""
    name = raw.rstrip(b"\0")
    if name[:1] == b"\0":
        return name
    return os.fsdecode(name.split(b"\0", 1)[0])


def _tlvs(data: bytes, pos: int, end: int) -> tuple[bytes | None, str | None, bytes | None]:
    """The TLVs between `pos` and `end`: each must lie wholly inside, and the ones we expose
    may come once (two unique ids would be a guess)."""
    seen: dict[int, bytes] = {}
    crc_at = -1
    while pos < end:
        if pos + 3 > end:
            raise ProxyError("v2 TLV header overruns header")
        kind = data[pos]
        value_end = pos + 3 + int.from_bytes(data[pos + 1 : pos + 3], "big")
        if value_end > end:
            raise ProxyError("v2 TLV overruns header")
        if kind in _TLV_NAMES:
            if kind in seen:
                raise ProxyError(f"v2 {_TLV_NAMES[kind]} TLV given twice")
            seen[kind] = data[pos + 3 : value_end]
            if kind == _CRC32C:
                crc_at = pos + 3
        pos = value_end
    unique_id, authority, alpn = seen.get(_UNIQUE_ID), seen.get(_AUTHORITY), seen.get(_ALPN)
    if crc_at >= 0:
        _check_crc(data, end, crc_at, seen[_CRC32C])
    if unique_id is not None and len(unique_id) > MAX_UNIQUE_ID:
        raise ProxyError(f"v2 unique id over {MAX_UNIQUE_ID} bytes")
    text = None
    if authority is not None:
        if len(authority) > MAX_AUTHORITY:
            raise ProxyError(f"v2 authority over {MAX_AUTHORITY} bytes")
        try:
            text = authority.decode()
        except UnicodeDecodeError:
            raise ProxyError("v2 authority is not UTF-8") from None
    return unique_id, text, alpn


def _check_crc(data: bytes, end: int, at: int, value: bytes) -> None:
    """The spec's MUST for a receiver that knows CRC32C: the checksum of the whole header
    with the checksum's own 4 bytes zeroed."""
    if len(value) != 4:
        raise ProxyError("v2 CRC32C TLV is not 4 bytes")
    zeroed = data[:at] + b"\0\0\0\0" + data[at + 4 : end]
    if crc32c(zeroed) != int.from_bytes(value, "big"):
        raise ProxyError("v2 CRC32C does not match")


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, RFC 4960 appendix B); paid only by headers that carry one."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _parse_v1(data: bytes) -> Header | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyError(f"v1 header longer than {V1_MAX} bytes")
        line = data[:-1] if data.endswith(b"\r") else data  # its LF may come next
        _check_v1_line(line)
        _check_v1_fields(line.split(b" "), complete=False)
        return None
    line = data[:end]
    _check_v1_line(line)
    fields = line.split(b" ")
    source, dest = _check_v1_fields(fields, complete=True)
    if source is None or dest is None:
        return Header(end + 2, True)
    return Header(end + 2, False, source, dest, "tcp4" if fields[1] == b"TCP4" else "tcp6")


def _check_v1_line(line: bytes) -> None:
    if b"\r" in line or b"\n" in line:
        raise ProxyError("v1 header has a lone CR or LF")


def _check_v1_fields(
    fields: list[bytes], complete: bool
) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """Check a v1 line split at its spaces, PROXY included; while not `complete`, its last
    field may still grow, so it need only be able to become valid."""
    word = fields[1] if len(fields) > 1 else b""
    if len(fields) == 2 and not complete:
        if not any(w.startswith(word) for w in _V1_WORDS):
            raise ProxyError(f"v1 protocol is not TCP4, TCP6 or UNKNOWN: {_show(word)}")
        return None, None
    if word == b"UNKNOWN":  # the rest of the line is to be ignored
        return None, None
    if word not in _V1_WORDS:
        raise ProxyError(f"v1 protocol is not TCP4, TCP6 or UNKNOWN: {_show(word)}")
    if len(fields) > 6 or (complete and len(fields) < 6):
        raise ProxyError("v1 header needs exactly: PROXY TCPn SRC DST SPORT DPORT")
    values: list[Any] = []
    for index, field in enumerate(fields[2:], 2):
        growing = not complete and index == len(fields) - 1
        if index < 4:
            values.append(_v1_address(word, field, growing))
        else:
            values.append(_v1_port(field, growing))
    if not complete:
        return None, None
    return (values[0], values[2]), (values[1], values[3])


def _v1_address(word: bytes, field: bytes, growing: bool) -> str | None:
    is_v4 = word == b"TCP4"
    if growing:
        valid = (_IPV4_PREFIX if is_v4 else _IPV6_CHARS).fullmatch(field)
        if valid and len(field) <= _V1_ADDRESS_MAX[word]:
            return None
    elif is_v4:
        if _IPV4.fullmatch(field):
            return field.decode()
    elif len(field) <= _V1_ADDRESS_MAX[word] and _IPV6_CHARS.fullmatch(field):
        with contextlib.suppress(OSError):
            return _ntop(_AF_INET6, socket.inet_pton(_AF_INET6, field.decode()))
    raise ProxyError(f"v1 {word.decode()} address is not IPv{4 if is_v4 else 6}: {_show(field)}")


def _v1_port(field: bytes, growing: bool) -> int | None:
    if growing:
        if not _PORT_PREFIX.fullmatch(field):
            raise ProxyError(f"v1 port is not a number from 0 to 65535: {_show(field)}")
        return None
    if not _PORT.fullmatch(field) or int(field) > 65535:
        raise ProxyError(f"v1 port is not a number from 0 to 65535: {_show(field)}")
    return int(field)


def _show(raw: bytes) -> str:
    """A bounded, printable rendering of what the peer sent, for the one-line reason: cut
    after escaping (errors.quote), since 48 NUL bytes escape to over 200 characters."""
    return quote(raw[:48].decode("ascii", "backslashreplace"))


def take(fd: int, version: str, got: bytes = b"") -> Header | bytes:
    """Read the PROXY header off a connection that is readable, leaving what follows it.

    Peeks what is there (bounded), parses it after `got`, and when the header is whole
    consumes exactly the rest of its length. Incomplete: the bytes so far, read off the
    socket, to pass as `got` once it is readable again. (Left queued, they would keep it
    readable, and the dispatcher would wake for it again and again until proxy_timeout.)
    ProxyError: invalid, or the peer closed or reset the connection before a whole header.
    """
    first = _FIRST_PEEK.get(version, 0)
    if not first:
        raise ValueError(f"version must be one of {', '.join(VERSIONS)}, not {version!r}")
    # With family, type and proto all given, wrapping the fd makes no system call (and none
    # of them matters to recv); detach() leaves the fd open, as it came. The C type under
    # socket.socket: its Python-level __init__ would double the cost of the wrapping.
    sock = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    try:
        data = got + _peek(sock, (first if len(got) < first else MAX_HEADER) - len(got))
        header = parse(data, version)
        if header is None and len(data) == first and version != "v1":
            data = got + _peek(sock, MAX_HEADER - len(got))  # a long v2 header; parse bounds it
            header = parse(data, version)
        if header is None:
            if len(data) == len(got) or _peer_closed(fd):
                raise ProxyError("connection closed before a whole PROXY header")
            _read(sock, len(data) - len(got))
            return data
        _read(sock, header.length - len(got))
        return header
    except BlockingIOError:
        return got
    except OSError as exc:
        raise ProxyError(f"connection failed before a whole PROXY header: {exc.strerror}") from None
    finally:
        sock.detach()


def _read(sock: _socket.socket, size: int) -> None:
    """Consume `size` bytes just peeked."""
    if len(sock.recv(size)) != size:  # cannot happen: the bytes were peeked in the queue
        raise ProxyError("PROXY header shrank between peek and read")


def defer_accept(sock: socket.socket, seconds: float) -> int | None:
    """A balancer writes its header as soon as it has connected: with TCP_DEFER_ACCEPT the
    kernel hands over a connection once that has arrived, so the dispatcher reads the header
    on accept instead of waking a second time for it. Linux may still hand one over with
    nothing to read after `seconds` (it only half honours it, as systemd's DeferAcceptSec=);
    take() then waits for it as for any incomplete header. Returns the setting it replaced;
    None for a UNIX socket, or when it cannot be set. (What restore_accept() puts back is
    systemd's, as Listener.defer_accept read it before any dispatcher set it.)"""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        before = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, max(1, round(seconds)))
    except OSError:
        return None
    return before


def restore_accept(sock: socket.socket, before: int) -> None:
    """Put back what defer_accept() replaced: the listener no longer speaks PROXY."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, before)


def _peek(sock: _socket.socket, size: int) -> bytes:
    return sock.recv(size, PEEK)


def _peer_closed(fd: int) -> bool:
    """A partial header and the peer's FIN look alike to a peek; without this check the
    connection would stay readable, and `take` would be called in a loop until the timeout."""
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP)
    return any(event & (select.POLLRDHUP | select.POLLHUP) for _, event in poller.poll(0))


def format_peer(addr: Address) -> str:
    """PEER text for a header's `source`, exactly as listeners.py renders a direct peer."""
    if isinstance(addr, tuple):
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    else:
        family = socket.AF_UNIX
    return PEER_FORMAT[family](addr)


def parse_network(text: str) -> tuple[int, int, int]:
    """`ADDRESS` or `ADDRESS/PREFIX` (IPv4 or IPv6) as (family, network, mask) integers; a
    network with host bits set is refused (a typo that would widen or narrow the trust)."""
    import ipaddress  # config time only

    if "%" in text:  # a zone: a PROXY header's address has none to match
        raise ValueError(f"{quote(text)}: an address with a zone (%...) never matches: drop it")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{quote(text)} is not an IPv4 or IPv6 address or network") from None
    if ipaddress.ip_interface(text).ip != net.network_address:
        raise ValueError(f"{quote(text)} has host bits set: did you mean {net}?")
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    return family, int(net.network_address), int(net.netmask)


DEFAULT_ALLOW = ("127.0.0.0/8", "::1")


class Trusted:
    """The peers allowed to send a PROXY header (`proxy_allow`).

    A UNIX socket's peers are always trusted: they are processes on this machine that got
    past the socket file's permissions (SocketMode=, SocketUser=), a stronger filter than
    any address, and what a local balancer uses. An IPv4-mapped IPv6 peer (::ffff:a.b.c.d,
    what a dual-stack socket reports) is checked as the IPv4 address it is.
    """

    __slots__ = ("_cache", "_v4", "_v6")
    CACHE = 1024  # hosts remembered: a few balancers in practice; emptied when full

    def __init__(self, networks: Iterable[str] = DEFAULT_ALLOW) -> None:
        nets = [parse_network(text) for text in networks]
        self._v4 = tuple((net, mask) for family, net, mask in nets if family == socket.AF_INET)
        self._v6 = tuple((net, mask) for family, net, mask in nets if family == socket.AF_INET6)
        self._cache: dict[str, bool] = {}

    def allows(self, addr: Any) -> bool:
        """Whether the peer address accept() returned may send a PROXY header."""
        if not isinstance(addr, tuple):
            return True  # AF_UNIX: a path, an abstract name or '' (unnamed)
        host = addr[0]
        known = self._cache.get(host)
        if known is None:
            if len(self._cache) >= self.CACHE:
                self._cache.clear()
            known = self._cache[host] = self._match(host)
        return known

    def _match(self, host: str) -> bool:
        try:
            if ":" not in host:
                return _within(int.from_bytes(socket.inet_aton(host), "big"), self._v4)
            value = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        except OSError:
            return False
        number = int.from_bytes(value, "big")
        if value[:12] == _V4_MAPPED and _within(number & 0xFFFFFFFF, self._v4):
            return True
        return _within(number, self._v6)


_V4_MAPPED = bytes(10) + b"\xff\xff"


def _within(value: int, networks: tuple[tuple[int, int], ...]) -> bool:
    return any(value & mask == net for net, mask in networks)


MAX_ALPN_SHOWN = 64  # bytes: protocol ids are short ("h2", "http/1.1"); the wire is bounded
# The TLVs a handler sees travel to the worker behind the PEER text, after a NUL (which no
# PEER of a TCP client contains): each as a length byte and its bytes, as the wire carries a
# peer (surrogateescape), so any byte survives. The worker splits them off (split_peer).
_NOTHING = b"\0\0\0"


def peer_text(header: Header, own_peer: str) -> str:
    """The PEER a proxied connection is known by: the client's (the connection's own for a
    LOCAL header), with the TLVs handlers see behind it."""
    peer = own_peer if header.local or header.source is None else format_peer(header.source)
    if header.unique_id is None and header.authority is None and header.alpn is None:
        return peer
    authority = header.authority.encode() if header.authority else b""
    fields = (header.unique_id or b"", authority, (header.alpn or b"")[:MAX_ALPN_SHOWN])
    suffix = b"".join(bytes((len(f),)) + f for f in fields)
    if suffix == _NOTHING:
        return peer
    return peer + "\0" + suffix.decode(errors="surrogateescape")


def split_peer(peer: str) -> tuple[str, bytes | None, str | None, bytes | None]:
    """(PEER, unique id, authority, ALPN) of a peer_text(); the TLVs None when absent."""
    text, _, rest = peer.partition("\0")
    raw = rest.encode(errors="surrogateescape")
    fields: list[bytes | None] = []
    at = 0
    for _ in range(3):
        size = raw[at] if at < len(raw) else 0
        fields.append(raw[at + 1 : at + 1 + size] or None)
        at += 1 + size
    uid, authority, alpn = fields
    return text, uid, authority.decode(errors="replace") if authority else None, alpn
