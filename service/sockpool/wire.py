"""The handoff wire format between dispatcher and workers: pure encode/decode, no I/O.

Every message is one SOCK_SEQPACKET datagram: a type byte, then a fixed layout.
Descriptors travel beside the bytes as SCM_RIGHTS; a HANDOFF carries exactly one entry per
descriptor, in order, so a connection never gets separated from its metadata.

Dispatcher -> worker
    HANDOFF  b"H" flags:u8 count:u16 then count x
             (conn_id:u64 name_len:u8 peer_len:u16 carry_len:u32 started:u64 name peer carry)
    STOP     b"S"                        finish what you hold, then exit
    ACCEPT   b"A" on:u8                  `accept = workers`: accept from the listeners
                                         you were given (1), or no longer (0) (direct.py)
Worker -> dispatcher
    READY    b"R" capacity:u32 names     handler imported, can take `capacity` at once; names
                                         (NUL-separated) are the listeners whose handler
                                         waits for the client to speak first
    FAILED   b"F" reason (utf-8)         could not start; why, for the dispatcher's log
    BEAT     b"B"                        heartbeat: an async worker's loop still turns
    RETIRE   b"X" reason (utf-8)         recycle me: an async worker whose application
                                         called sys.exit() in a task of its own
    PARK     b"P" flags:u8 conn_id:u64 started:u64 want:u32 from:u64 to:u64 carry
                                         + one descriptor:
                                         the connection, given back until it is readable;
                                         `want` > 0: the carried request is whole once
                                         that many more bytes have come, and only then is
                                         there work for a worker (a body, which the
                                         dispatcher waits for in the kernel's buffer);
                                         flag READY_NOW: its carry holds bytes nobody has
                                         looked at yet, so hand it on at once; flag SILENT:
                                         a new connection that has sent nothing yet;
                                         flag UNSENT: a second descriptor follows, a
                                         memfd holding the rest of an answer the client
                                         has not taken yet, bytes `from` to `to`, for the
                                         dispatcher to send first (unsent.py); with flag
                                         FILE, the application's own file instead, whose
                                         bytes hold none of our memory; flag CLOSE: then
                                         close it; flag ACCEPTED: a connection the worker
                                         accepted itself (direct.py), which the dispatcher
                                         never saw: name_len:u8 peer_len:u16 name peer
                                         come before the carry
Workers -> dispatcher, on one pipe all workers share
    DONE     pid:u32 conn_id:u64         a finished connection: capacity is free again;
                                         conn_id 0 (pull.WAKE) names none: with `pull`,
                                         the worker's loop waits for work

A HANDOFF's flag MAY_PARK says the worker may give these connections back (PARK); the
dispatcher clears it near its descriptor limit. `carry` is what a worker read of the next
request before it parked the connection, handed over again with it; `started` is when that
request began (CLOCK_MONOTONIC nanoseconds, one clock for every process; 0: none begun).

Completions are the one message per connection that flows back, so they share a pipe:
whatever several workers finished while the dispatcher was busy, it reads with one read().
Each write is whole records and at most PIPE_BUF bytes, so writes never interleave.

A worker takes a handoff by reading it: that dequeue is the acknowledgement. Until then the
message, descriptors and all, sits in the worker's receive queue, which the dispatcher can
read back if the worker dies (see dispatcher.py), so receipt needs no message of its own.
"""

from __future__ import annotations

import select
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

MAX_FDS = 253  # SCM_MAX_FD: the kernel's limit of descriptors in one message
MAX_NAME = 255  # bytes of a listener name (a u8 length); start-up refuses longer names
# Bytes of a peer carried, the rest cut: AF_UNIX's longest is 108, and a PROXY protocol
# client's TLVs ride behind its address (proxyproto.peer_text): at most 451 bytes more.
MAX_PEER = 600
MAX_BATCH = 64  # connections in one handoff; the hot path splits larger batches
MAX_CARRY = 65536  # bytes carried with one connection: the ceiling of `max_carry`
MAX_REASON = 200  # bytes of a RETIRE's reason
MAY_PARK = 1
READY_NOW = 1
SILENT = 2
UNSENT = 4
CLOSE = 8
FILE = 16
ACCEPTED = 32

_HEAD = struct.Struct("!BH")
_ENTRY_HEAD = struct.Struct("!QBHIQ")
_PARK = struct.Struct("!BQQIQQ")
_NAMED = struct.Struct("!BH")  # an ACCEPTED PARK's listener and peer lengths
_ENTRY_MAX = _ENTRY_HEAD.size + MAX_NAME + MAX_PEER
# The receive buffer holds the largest message there can be: a full batch with the longest
# names and peers, one of them carrying MAX_CARRY bytes (the hot path sends at most one
# carrying connection per message). 121,732 bytes: under glibc's 128 KiB mmap threshold,
# past which every receive's buffer would cost an mmap (~5x).
MAX_MESSAGE = 1 + _HEAD.size + MAX_BATCH * _ENTRY_MAX + MAX_CARRY
_READY = struct.Struct("!I")
_SOLO_BIT = 1 << 31  # in READY's capacity: see Ready.solo
DONE = struct.Struct("!IQ")
DONE_READ_SIZE = DONE.size * (65536 // DONE.size)  # whole records per read
_DONE_PER_WRITE = select.PIPE_BUF // DONE.size


class WireError(ValueError):
    """A message that does not follow the format: the receiver drops it and its descriptors."""


class Handoff(NamedTuple):
    """One connection of a HANDOFF (a tuple: built for every connection a worker takes,
    where a frozen dataclass costs twice as much)."""

    conn_id: int
    listener: str
    peer: str
    carry: bytes = b""
    started: int = 0
    may_park: bool = False


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Ready:
    capacity: int
    speaks_first: frozenset[str] = frozenset()
    solo: bool = False  # one connection at a time: a capacity over 1 is a queue (queue_ahead)


@dataclass(frozen=True, slots=True)
class Park:
    conn_id: int
    started: int
    carry: bytes
    ready: bool = False
    silent: bool = False
    unsent: bool = False  # its second descriptor holds an answer's rest, to send first
    close: bool = False  # and once that is sent, the connection is done: close it
    want: int = 0  # the carried request is whole once this many more bytes have come
    span: tuple[int, int] = (0, 0)  # with unsent: the bytes to send, from and to
    file: bool = False  # with unsent: the application's file, not a memfd of the worker's
    listener: str = ""  # ACCEPTED: where the worker accepted it, and from whom
    peer: str = ""


@dataclass(frozen=True, slots=True)
class Accept:
    """`accept = workers`: take connections from the listeners (on), or stop (direct.py)."""

    on: bool


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str


@dataclass(frozen=True, slots=True)
class Beat:
    pass


@dataclass(frozen=True, slots=True)
class Retire:
    """The worker cannot go on as it should (`reason`): recycle it, as max_requests does."""

    reason: str


ToWorker = list[Handoff] | Stop | Accept
ToDispatcher = Ready | Failed | Beat | Park | Retire


Entry = tuple[int, str, str, bytes, int]  # conn_id, listener, peer, carry, started


def encode_handoff(entries: list[Entry], may_park: bool = True) -> bytes:
    """Encode (conn_id, listener, peer, carry, started) entries; the caller sends one
    descriptor per entry.

    Runs on the dispatcher's hot path, so no peer can make it raise: a peer is carried as
    the bytes Python decoded it from (surrogateescape), cut at MAX_PEER. It raises only for
    a batch the caller got wrong (empty, over MAX_BATCH, too large with its carries), or a
    name over MAX_NAME bytes, which start-up refuses.
    """
    if not entries:
        raise WireError("a handoff needs at least one connection")
    if len(entries) > MAX_BATCH:
        raise WireError(f"{len(entries)} connections in one handoff, at most {MAX_BATCH}")
    parts = [b"H", _HEAD.pack(MAY_PARK if may_park else 0, len(entries))]
    parts += (_entry(*entry) for entry in entries)
    data = b"".join(parts)
    if len(data) > MAX_MESSAGE:
        raise WireError(f"handoff of {len(data)} bytes, at most {MAX_MESSAGE}")
    return data


def encode_one(
    conn_id: int, listener: str, peer: str, carry: bytes, started: int, may_park: bool
) -> bytes:
    """encode_handoff() of one connection, the usual case, without building a batch. A
    carry is at most max_carry (wire.MAX_CARRY), so one connection always fits."""
    return _ONE_HEAD[may_park] + _entry(conn_id, listener, peer, carry, started)


def _entry(conn_id: int, listener: str, peer: str, carry: bytes, started: int) -> bytes:
    name = _names.get(listener) or _name_bytes(listener)
    addr = peer_bytes(peer)
    return (
        _ENTRY_HEAD.pack(conn_id, len(name), len(addr), len(carry), started) + name + addr + carry
    )


_ONE_HEAD = {flag: b"H" + _HEAD.pack(MAY_PARK if flag else 0, 1) for flag in (False, True)}
_names: dict[str, bytes] = {}  # listener names, encoded once: a handful per process


def peer_bytes(peer: str) -> bytes:
    """A peer's text as the wire and the seats (direct.py) carry it: at most MAX_PEER."""
    try:
        return peer.encode(errors="surrogateescape")[:MAX_PEER]
    except UnicodeEncodeError:  # a surrogate no decoder made: escape it, never fail
        return peer.encode(errors="backslashreplace")[:MAX_PEER]


def _name_bytes(listener: str) -> bytes:
    try:
        name = listener.encode(errors="surrogateescape")
    except UnicodeEncodeError:
        name = listener.encode(errors="backslashreplace")
    if len(name) > MAX_NAME:
        raise WireError(f"listener name longer than {MAX_NAME} bytes: {listener[:40]!r}...")
    if len(_names) < 1024:
        _names[listener] = name
    return name


def encode_stop() -> bytes:
    return b"S"


def encode_accept(on: bool) -> bytes:
    return b"A\x01" if on else b"A\x00"


FIRST_ID_SIZE = 1 + _HEAD.size + 8  # a handoff's head up to its first conn_id


def first_conn_id(head: bytes) -> int | None:
    """The first conn_id of a handoff from its first FIRST_ID_SIZE bytes (a peek at a
    channel); None for anything else (a STOP, an ACCEPT)."""
    if len(head) < FIRST_ID_SIZE or head[:1] != b"H":
        return None
    return int.from_bytes(head[1 + _HEAD.size : FIRST_ID_SIZE], "big")


def decode_to_worker(data: bytes, nfds: int) -> ToWorker:
    """Decode a dispatcher message that came with `nfds` descriptors."""
    if data == b"S":
        if nfds:
            raise WireError(f"STOP came with {nfds} descriptors")
        return Stop()
    if data[:1] == b"A":
        if nfds or len(data) != 2 or data[1] > 1:
            raise WireError(f"malformed ACCEPT of {len(data)} bytes with {nfds} descriptors")
        return Accept(data[1] == 1)
    if data[:1] != b"H" or len(data) < 1 + _HEAD.size:
        raise WireError(f"unknown message type {data[:1]!r}")
    flags, count = _HEAD.unpack_from(data, 1)
    if count != nfds:
        raise WireError(f"handoff lists {count} connections but carries {nfds} descriptors")
    may_park = bool(flags & MAY_PARK)
    entries = []
    pos, end = 1 + _HEAD.size, len(data)
    try:
        for _ in range(count):
            conn_id, name_len, peer_len, carry_len, started = _ENTRY_HEAD.unpack_from(data, pos)
            name_at = pos + _ENTRY_HEAD.size
            carry_at = name_at + name_len + peer_len
            pos = carry_at + carry_len
            if pos > end:
                raise WireError("handoff truncated")
            entries.append(
                Handoff(
                    conn_id,
                    data[name_at : name_at + name_len].decode(errors="surrogateescape"),
                    data[name_at + name_len : carry_at].decode(errors="surrogateescape"),
                    data[carry_at:pos],
                    started,
                    may_park,
                )
            )
    except struct.error as exc:
        raise WireError("handoff truncated") from exc
    if pos != end:
        raise WireError(f"{end - pos} stray bytes after the handoff")
    return entries


def encode_ready(
    capacity: int, speaks_first: frozenset[str] | set[str] = frozenset(), solo: bool = False
) -> bytes:
    """`solo`: a sync worker, serving one connection at a time (any more are queued)."""
    names = b"\0".join(sorted(_names.get(n) or _name_bytes(n) for n in speaks_first))
    return b"R" + _READY.pack(capacity | (_SOLO_BIT if solo else 0)) + names


def encode_park(
    conn_id: int,
    started: int,
    carry: bytes,
    ready: bool = False,
    silent: bool = False,
    unsent: bool = False,
    close: bool = False,
    want: int = 0,
    span: tuple[int, int] = (0, 0),
    file: bool = False,
    accepted: tuple[str, str] | None = None,
) -> bytes:
    """Give a connection back (its descriptor goes beside, and with `unsent` the memfd, or
    the `file`, whose bytes `span` are to send, after it): raises WireError past
    MAX_CARRY. `accepted`: (listener, peer) of one the worker accepted itself."""
    if len(carry) > MAX_CARRY:
        raise WireError(f"{len(carry)} bytes to carry, at most {MAX_CARRY}")
    _check_span(unsent, span, file)
    if want and (not carry or ready or close or not 0 < want < 1 << 32):
        raise WireError(f"want {want}: only for a request begun (a carry), kept, and to come")
    if close and not unsent:
        raise WireError("CLOSE without UNSENT: a worker closes such a connection itself")
    if silent and unsent:
        raise WireError("SILENT with UNSENT: a connection sent an answer has had its turn")
    flags = (READY_NOW if ready else 0) | (SILENT if silent else 0)
    flags |= (UNSENT if unsent else 0) | (CLOSE if close else 0) | (FILE if file else 0)
    if accepted is None:
        return b"P" + _PARK.pack(flags, conn_id, started, want, *span) + carry
    name = _names.get(accepted[0]) or _name_bytes(accepted[0])
    peer = peer_bytes(accepted[1])
    head = _PARK.pack(flags | ACCEPTED, conn_id, started, want, *span)
    return b"P" + head + _NAMED.pack(len(name), len(peer)) + name + peer + carry


def _check_span(unsent: bool, span: tuple[int, int], file: bool) -> None:
    """Bytes to send, and a file, only with the descriptor they are in; never backwards."""
    start, end = span
    if not unsent and (start or end or file):
        raise WireError(f"bytes {start} to {end} (file: {file}) to send, and no descriptor")
    if not 0 <= start <= end < 1 << 63:
        raise WireError(f"bytes {start} to {end} to send")


def encode_done(pid: int, ids: list[int] | tuple[int, ...]) -> list[bytes]:
    """DONE records for the done pipe, in writes of at most PIPE_BUF bytes each."""
    return [
        b"".join(DONE.pack(pid, conn_id) for conn_id in ids[start : start + _DONE_PER_WRITE])
        for start in range(0, len(ids), _DONE_PER_WRITE)
    ]


def decode_done(data: bytes) -> Iterator[tuple[int, int]]:
    """(pid, conn_id) for each record read from the done pipe."""
    if len(data) % DONE.size:
        raise WireError(f"{len(data)} bytes on the done pipe: not whole records")
    return DONE.iter_unpack(data)


def encode_failed(reason: str) -> bytes:
    return b"F" + reason.encode(errors="replace")[: MAX_MESSAGE - 1]


def encode_beat() -> bytes:
    return b"B"


def encode_retire(reason: str) -> bytes:
    return b"X" + reason.encode(errors="replace")[:MAX_REASON]


def decode_to_dispatcher(data: bytes, nfds: int = 0) -> ToDispatcher:
    """Decode a worker message that came with `nfds` descriptors (only PARK has any: one,
    or two with UNSENT)."""
    kind, body = data[:1], data[1:]
    if (kind == b"P") != (nfds >= 1) or nfds > 2:
        raise WireError(f"{kind!r} message with {nfds} descriptors")
    try:
        if kind == b"R":
            (capacity,) = _READY.unpack_from(body)
            solo, capacity = bool(capacity & _SOLO_BIT), capacity & ~_SOLO_BIT
            if capacity < 1:
                raise WireError("READY with capacity 0")
            names = body[_READY.size :]
            first = frozenset(n.decode(errors="surrogateescape") for n in names.split(b"\0") if n)
            return Ready(capacity, first, solo)
        if kind == b"B" and not body:
            return Beat()
        if kind == b"P":
            flags, conn_id, started, want, start, end = _PARK.unpack_from(body)
            listener = peer = ""
            at = _PARK.size
            if flags & ACCEPTED:
                name_len, peer_len = _NAMED.unpack_from(body, at)
                name_at = at + _NAMED.size
                peer_at = name_at + name_len
                at = peer_at + peer_len
                if not name_len or peer_len > MAX_PEER or at > len(body):
                    raise WireError(f"PARK naming a listener of {name_len} bytes, peer {peer_len}")
                listener = body[name_at:peer_at].decode(errors="surrogateescape")
                peer = body[peer_at:at].decode(errors="surrogateescape")
            carry = body[at:]
            if len(carry) > MAX_CARRY:
                raise WireError(f"PARK carrying {len(carry)} bytes, at most {MAX_CARRY}")
            unsent, close = bool(flags & UNSENT), bool(flags & CLOSE)
            if unsent != (nfds == 2) or (close and not unsent) or (unsent and flags & SILENT):
                raise WireError(f"PARK with flags {flags:#x} and {nfds} descriptors")
            ready, silent = bool(flags & READY_NOW), bool(flags & SILENT)
            if want and (not carry or ready or close):
                raise WireError(f"PARK wanting {want} bytes with flags {flags:#x}")
            file = bool(flags & FILE)
            _check_span(unsent, (start, end), file)
            return Park(
                conn_id, started, carry, ready, silent, unsent, close, want, (start, end), file,
                listener, peer,
            )  # fmt: skip
    except struct.error as exc:
        raise WireError(f"malformed {kind!r} message of {len(data)} bytes") from exc
    if kind == b"F":
        return Failed(body.decode(errors="replace"))
    if kind == b"X":  # one line of a journal record, whatever a worker sends
        return Retire(body[:MAX_REASON].decode(errors="replace"))
    raise WireError(f"unknown message type {kind!r}")
