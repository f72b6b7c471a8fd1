"""The handoff wire format between dispatcher and workers: pure encode/decode, no I/O.

Every message is one SOCK_SEQPACKET datagram: a type byte, then a fixed layout.
Descriptors travel beside the bytes as SCM_RIGHTS; a HANDOFF carries exactly one entry per
descriptor, in order, so a connection never gets separated from its metadata.

Dispatcher -> worker
    HANDOFF  b"H" count:u16 then count x (conn_id:u64 name_len:u8 peer_len:u16 name peer)
    STOP     b"S"                        finish what you hold, then exit
Worker -> dispatcher
    READY    b"R" capacity:u32           handler imported, can take `capacity` at once
    FAILED   b"F" reason (utf-8)         could not start; why, for the dispatcher's log
    BEAT     b"B"                        heartbeat: an async worker's loop still turns
Workers -> dispatcher, on one pipe all workers share
    DONE     pid:u32 conn_id:u64         a finished connection: capacity is free again

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

MAX_FDS = 253  # SCM_MAX_FD: the kernel's limit of descriptors in one message
MAX_NAME = 255  # bytes of a listener name (a u8 length); start-up refuses longer names
MAX_PEER = 240  # bytes of a peer carried, the rest cut; AF_UNIX's longest is 108

_COUNT = struct.Struct("!H")
_ENTRY_HEAD = struct.Struct("!QBH")
# The receive buffer holds the largest handoff there can be (253 entries, each with the
# longest name and peer: 128,021 bytes), so encoding never fails on size. It stays under
# glibc's 128 KiB mmap threshold, past which each receive's buffer costs an mmap (~5x).
MAX_MESSAGE = _COUNT.size + 1 + MAX_FDS * (_ENTRY_HEAD.size + MAX_NAME + MAX_PEER)
_READY = struct.Struct("!I")
DONE = struct.Struct("!IQ")
DONE_READ_SIZE = DONE.size * (65536 // DONE.size)  # whole records per read
_DONE_PER_WRITE = select.PIPE_BUF // DONE.size


class WireError(ValueError):
    """A message that does not follow the format: the receiver drops it and its descriptors."""


@dataclass(frozen=True, slots=True)
class Handoff:
    conn_id: int
    listener: str
    peer: str


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Ready:
    capacity: int


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str


@dataclass(frozen=True, slots=True)
class Beat:
    pass


ToWorker = list[Handoff] | Stop
ToDispatcher = Ready | Failed | Beat


def encode_handoff(entries: list[tuple[int, str, str]]) -> bytes:
    """Encode (conn_id, listener, peer) entries; the caller sends one descriptor per entry.

    Runs on the dispatcher's hot path, so no peer can make it raise: a peer is carried as
    the bytes Python decoded it from (surrogateescape), cut at MAX_PEER. It raises only for
    a batch the caller got wrong, or a name over MAX_NAME bytes, which start-up refuses.
    """
    if not entries:
        raise WireError("a handoff needs at least one connection")
    if len(entries) > MAX_FDS:
        raise WireError(f"{len(entries)} connections in one handoff, at most {MAX_FDS}")
    parts = [b"H", _COUNT.pack(len(entries))]
    pack = _ENTRY_HEAD.pack
    for conn_id, listener, peer in entries:
        name = _names.get(listener) or _name_bytes(listener)
        try:
            addr = peer.encode(errors="surrogateescape")[:MAX_PEER]
        except UnicodeEncodeError:  # a surrogate no decoder made: escape it, never fail
            addr = peer.encode(errors="backslashreplace")[:MAX_PEER]
        parts += (pack(conn_id, len(name), len(addr)), name, addr)
    return b"".join(parts)


_names: dict[str, bytes] = {}  # listener names, encoded once: a handful per process


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


def decode_to_worker(data: bytes, nfds: int) -> ToWorker:
    """Decode a dispatcher message that came with `nfds` descriptors."""
    if data == b"S":
        if nfds:
            raise WireError(f"STOP came with {nfds} descriptors")
        return Stop()
    if data[:1] != b"H" or len(data) < 3:
        raise WireError(f"unknown message type {data[:1]!r}")
    (count,) = _COUNT.unpack_from(data, 1)
    if count != nfds:
        raise WireError(f"handoff lists {count} connections but carries {nfds} descriptors")
    entries = []
    pos = 3
    try:
        for _ in range(count):
            conn_id, name_len, peer_len = _ENTRY_HEAD.unpack_from(data, pos)
            pos += _ENTRY_HEAD.size
            name = data[pos : pos + name_len]
            pos += name_len
            peer = data[pos : pos + peer_len]
            pos += peer_len
            if len(name) != name_len or len(peer) != peer_len:
                raise WireError("handoff truncated")
            entries.append(
                Handoff(
                    conn_id,
                    name.decode(errors="surrogateescape"),
                    peer.decode(errors="surrogateescape"),
                )
            )
    except struct.error as exc:
        raise WireError("handoff truncated") from exc
    if pos != len(data):
        raise WireError(f"{len(data) - pos} stray bytes after the handoff")
    return entries


def encode_ready(capacity: int) -> bytes:
    return b"R" + _READY.pack(capacity)


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


def decode_to_dispatcher(data: bytes) -> ToDispatcher:
    """Decode a worker message (workers never send descriptors)."""
    kind, body = data[:1], data[1:]
    try:
        if kind == b"R":
            (capacity,) = _READY.unpack(body)
            if capacity < 1:
                raise WireError("READY with capacity 0")
            return Ready(capacity)
        if kind == b"B" and not body:
            return Beat()
    except struct.error as exc:
        raise WireError(f"malformed {kind!r} message of {len(data)} bytes") from exc
    if kind == b"F":
        return Failed(body.decode(errors="replace"))
    raise WireError(f"unknown message type {kind!r}")
