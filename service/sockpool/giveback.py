"""Giving a connection back to the dispatcher: the handler's side of ready-work dispatch.

A worker should only ever hold a connection that has work for it. Between requests, or in
the middle of a request whose next bytes have not come, a handler gives the connection back
with `park()` (or lets `receive()` / `read()` do it). The dispatcher watches it and hands it,
with the bytes already read (`info.carried`) and the same connection id, to the least-busy
worker once the peer sends more; or closes it after `idle_timeout` (between requests) or
`request_timeout` (a request begun). A keep-alive client therefore never holds a worker
while it thinks, and a client that trickles bytes holds one only while a byte is in hand.

    @sockpool.client_speaks_first
    def handler(conn, info):
        buf = info.carried
        while data := sockpool.receive(conn, buf):  # parks the connection when idle
            ...
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .connection import ConnectionInfo, _current, current_connection

if TYPE_CHECKING:  # imported by the async functions that use it: see read()
    import asyncio

CHUNK = 65536
F = TypeVar("F", bound=Callable[..., Any])

# Set by the worker process (worker.py): sends a PARK message with the descriptor, and how
# long to wait for the next request before parking. Outside a worker, nothing parks.
# (fd, conn_id, started, carry, ready, silent, unsent, close, want): unsent, an
# unsent.Unsent or None
_send: Callable[..., None] | None = None
_park_after = 0.0
_request_timeout = 0.0  # a request's time from its first byte: parked, or read (handlers.py)
_max_carry = 0  # a request within this many bytes may be parked whole (handlers.py)
_max_buffered = 0  # max_buffered_body: a body still to come the dispatcher may wait for
_buffered_total = 0  # max_buffered_body_total: all it waits for at once (0: no limit)
# Listeners whose new connections a sync worker hands its handler without looking first
# (worker.py, ready()): there receive() gives back one that ends, or is reset, without a
# byte too (_unlooked_first).
_unlooked: frozenset[str] = frozenset()
# One word of memory the dispatcher shares with every worker it forks: how many ready
# connections wait for a worker. While any wait, a worker does not linger on a keep-alive
# connection (nor keep serving one that is quick to ask again): it parks it, so the
# connections take turns and none starves. Nobody waits: it lingers, and saves the trip.
# Its second word: set once the service is stopping (hotpath.stop_accepting). Nobody may be
# left to take a connection given back with a request to serve, so a worker keeps those,
# and no keep-alive client's turn ends (its next request may be on its way already).
# Its third: the bytes of answers the dispatcher holds to send for workers (parking.py),
# against max_unsent_total (unsent.py). Its fourth: the bytes of request bodies it waits
# for (receive()'s `want`), against max_buffered_body_total. Its fifth: set while the
# dispatcher is near its descriptor limit: what a worker accepted itself (direct.py) it
# then keeps, as a HANDOFF without MAY_PARK says for the rest.
_waiting: memoryview | None = None
_backlogs: select.poll | None = None  # `accept = workers`: the listeners it accepts from
WAITING, STOPPING, UNSENT, BUFFERED, NO_PARKING = 0, 1, 2, 3, 4  # the words' places
TURN_NS = 1_000_000  # see _turn_over()
STOP_FIRST_BYTE = 1.0  # seconds a stop gives a client that has not spoken yet


def share_waiting() -> memoryview:
    """The dispatcher's end of the shared word (call before forking workers)."""
    global _waiting
    if _waiting is None:
        _waiting = memoryview(mmap.mmap(-1, mmap.PAGESIZE)).cast("q")
    return _waiting


def others_waiting() -> bool:
    """Connections wait for a worker: in the dispatcher, or (`accept = workers`) in a
    backlog of this worker's listeners that no idle worker took (direct.Acceptor)."""
    if _waiting is not None and _waiting[WAITING] > 0:
        return True
    return _backlogs is not None and bool(_backlogs.poll(0))


def stopping() -> bool:
    return _waiting is not None and _waiting[STOPPING] > 0


def parking() -> bool:
    """Whether a connection a worker accepted itself may be given back (NO_PARKING)."""
    return _waiting is None or not _waiting[NO_PARKING]


def room_for(word: int, size: int, limit: int, total: int) -> bool:
    """Whether the dispatcher may take `size` bytes more for a slow client: an answer's
    rest (UNSENT, unsent.py) or a body to wait for (BUFFERED), within `limit` each and,
    with what it holds already (its shared `word`), `total` (0: no limit). That is read as
    it was a moment ago, so workers that ask at once may go past the total by a few."""
    if not 0 < size <= limit:
        return False
    return not total or (0 if _waiting is None else _waiting[word]) + size <= total


def _bufferable(conn: socket.socket, carry: bytes, want: int) -> bool:
    """Whether the dispatcher may hold a request begun (`carry`, within max_carry, or it
    would close it as too-large) for `want` more bytes in the connection's receive buffer
    (parking.py: SO_RCVLOWAT, which only TCP's poll honours), within max_buffered_body and
    max_buffered_body_total."""
    return (
        len(carry) <= _max_carry
        and conn.family in _TCP
        and room_for(BUFFERED, want, _max_buffered, _buffered_total)
    )


_TCP = (socket.AF_INET, socket.AF_INET6)


class Parked(Exception):
    """The connection went back to the dispatcher: raised by receive() and read() to end the
    handler (sockpool catches it). Nothing more may be done with the connection."""


def client_speaks_first(handler: F) -> F:
    """Declare that this handler's clients send first (HTTP, echo, most request/response
    protocols): the dispatcher then hands a new connection over only once it has data.
    Protocols where the server speaks first (an SMTP banner) must not declare it."""
    handler.client_speaks_first = True  # type: ignore[attr-defined]
    return handler


def speaks_first(handler: object) -> bool:
    return bool(getattr(handler, "client_speaks_first", False))


# reads_first_with_receive()'s handlers, held weakly: wsgi.make_handler() makes a new one
# at each call (the tests make many).
_RECEIVE_FIRST: weakref.WeakSet[Callable[..., object]] = weakref.WeakSet()


def reads_first_with_receive(handler: F) -> F:
    """sockpool's own sync handlers: their first read of a new connection is receive(),
    which gives it back when nothing comes, as the sync worker's look before the handler
    would (worker.py, _readable()). The worker skips that look, a system call per
    connection, and receive() also gives back one that ends, or is reset, without a byte
    (_unlooked). Noted in a registry, not on the function: functools.wraps copies a
    function's attributes to its wrapper, which may read first with a plain recv() and would
    then wait for a silent client in the worker."""
    _RECEIVE_FIRST.add(handler)
    return handler


def first_read_is_receive(handler: object) -> bool:
    try:
        return handler in _RECEIVE_FIRST
    except TypeError:  # a callable object that cannot be hashed (a dataclass's): not ours
        return False


def waits_for_data(handoff: str | None, handler_speaks_first: bool) -> bool:
    """Whether a listener's new connections wait for data before a worker serves them: as
    its `handoff` setting says, else as its handler declares (client_speaks_first). The
    dispatcher holds them (hotpath.accept); a worker gives back one that came unchecked."""
    return handoff == "ready" if handoff else handler_speaks_first


def within(idle: float | None, left: float | None) -> float | None:
    """How long the next wait for a request's bytes, read in the worker rather than parked,
    may last: `idle` (idle_timeout), and no more than `left` of request_timeout (None: no
    limit), as the dispatcher holds a parked request to it. TimeoutError once nothing is
    left: else a client trickling a request would hold its worker for ever."""
    if left is None:
        return idle
    if left <= 0:
        raise TimeoutError("the request was not read whole within request_timeout")
    return left if idle is None else min(idle, left)


def request_left(info: ConnectionInfo | None) -> float | None:
    """What is left of request_timeout since the request's first byte, for a request read
    in the worker (within()); None: no limit, or no request begun."""
    limit = _request_timeout
    if not limit or info is None or not info.request_started:
        return None
    return limit - (time.monotonic_ns() - info.request_started) / 1e9


def began(info: ConnectionInfo | None) -> None:
    """A request began now: one whose first bytes came with the last (pipelined), read
    before its own read would have marked it. Its request_timeout counts from here, not
    from the request before it (request_left(), and the dispatcher's if it is parked)."""
    if info is not None:
        info.request_started = time.monotonic_ns()


def recv_within(conn: socket.socket, left: float | None) -> bytes:
    """conn.recv() waiting no longer than within() its own timeout and `left` allow."""
    if left is None:
        return conn.recv(CHUNK)
    timeout = conn.gettimeout()
    conn.settimeout(within(timeout, left))
    try:
        return conn.recv(CHUNK)
    finally:
        conn.settimeout(timeout)


async def read_within(
    reader: asyncio.StreamReader, idle: float | None, left: float | None
) -> bytes:
    """recv_within() for an async handler: reader.read() waiting no longer than within()
    `idle` and `left` allow."""
    import asyncio  # here: sync workers and the dispatcher never load it

    async with asyncio.timeout(within(idle, left)):
        return await reader.read(CHUNK)


def _parkable(info: ConnectionInfo | None) -> bool:
    return info is not None and info.may_park and not info.parked and _send is not None


def _give_back(
    info: ConnectionInfo,
    fd: int,
    carry: bytes,
    unread: bytes = b"",
    first: bool = False,
    close: bool = False,
    want: int = 0,
) -> bool:
    """Send the connection back with `carry` (a request begun, whole once `want` more
    bytes have come, if more than 0) and `unread` (bytes that
    came in but nobody looked at: the dispatcher then hands it on at once). `first`: the
    handler's first read found nothing, so the connection may never have spoken: the
    dispatcher holds it as a new one (first_byte_timeout; a stop lets it speak), not as
    one idle between requests. An answer's rest the client has not taken (info.unsent,
    unsent.py) goes with it, for the dispatcher to send first; `close`: and then close it."""
    assert _send is not None
    if (first or carry or unread) and stopping():
        return False  # a request to serve: the stop may have retired every other worker
    # A request begun: its first byte's time. Bytes nobody looked at with no carry are a
    # new one's, come now.
    if carry:
        started = info.request_started or time.monotonic_ns()
    else:
        started = time.monotonic_ns() if unread else 0
    unsent = info.unsent
    # Sent an answer (a banner), it is no new connection: held as idle once it is sent.
    silent = first and not (carry or unread) and unsent is None
    try:
        _send(fd, info.conn_id, started, carry + unread, bool(unread), silent, unsent, close, want)
    except (OSError, ValueError):  # the channel is gone, or the carry is over the wire's limit
        return False
    info.parked = True
    if unsent is not None:  # the dispatcher's now
        info.unsent = None
        unsent.close()
    return True


def leave_rest(
    conn: socket.socket, info: ConnectionInfo, unread: bytes = b"", close: bool = True
) -> bool:
    """The handler is done with its answer, and its client has not taken all of it: the
    dispatcher sends the rest, then closes the connection (`close`), or holds it for its
    next request, `unread` (what came of it already) going to a worker once the rest is
    sent. False: the worker must (send_unsent())."""
    return _parkable(info) and _give_back(info, conn.fileno(), b"", unread, close=close)


def send_unsent(conn: socket.socket, info: ConnectionInfo) -> None:
    """What waits in info.unsent, sent by the worker itself, waiting for the client as
    sendall() does: the connection could not go back with it, or there is more than
    max_unsent to send."""
    unsent, info.unsent = info.unsent, None
    if unsent is not None:
        unsent.flush(conn)


def park(conn: socket.socket, carry: bytes = b"") -> bool:
    """Give a sync handler's connection back to the dispatcher, with `carry`: the bytes
    already read that belong to the next request. After True, return without touching the
    connection again. False when it cannot be parked (outside sockpool, or the dispatcher
    is near its descriptor limit): the handler keeps it, as before."""
    info = current_connection()
    return _parkable(info) and _give_back(info, conn.fileno(), carry)  # type: ignore[arg-type]


def receive(conn: socket.socket, carry: bytes = b"", size: int = CHUNK, want: int = 0) -> bytes:
    """`conn.recv(size)` for a handler that would rather not wait. Between requests
    (`carry` empty) it waits up to `park_after` for the peer; mid-request (`carry` holds the
    request so far) it does not wait. Either way, when nothing comes it parks the connection
    with `carry` and raises Parked. Between requests, while other connections wait for a
    worker, it parks at once. b"" at end of stream, as recv(), but for an end or a reset
    before the connection's first byte where the worker did not look first
    (reads_first_with_receive): parked too.

    `want`, mid-request: the request is whole once this many more bytes have come (a body
    of known length). The dispatcher then waits for them all (up to max_buffered_body, on
    TCP) before a worker gets the connection again, so a slow upload holds no worker; where
    it cannot, a request too long to park whole is read here, as recv() would.

    On every keep-alive request's path, so written flat: a microsecond here is a few
    per cent of a request."""
    info = _current.get(None)
    if info is None or not info.may_park or info.parked or _send is None:
        if carry:  # mid-request, and it cannot wait in the dispatcher: as long as it would
            return recv_within(conn, request_left(info))
        data = conn.recv(size)
        if data:  # as below: a request's first bytes
            began(info)
        return data
    fd = conn.fileno()
    if info.unsent is not None:  # its client has not taken the answer: it waits for that
        return _park_or_recv(conn, info, carry, size, want=want)  # (pipelined: hotpath.park)
    wait_first = False
    if not carry and info.has_read:  # between requests
        # The turn first: with `accept = workers` others_waiting() may be a system call.
        if _turn_over(info) and others_waiting() and not stopping():
            return _park_or_recv(conn, info, b"", size)  # its turn is over
        # The first time, read first (below): a client that sends one request and ends it
        # (echo; a request with its FIN) has often sent the end along, and one read then
        # does what a poll and a read would. A client that asked again is kept alive, and
        # sends its next request only once it has the answer: that one is rarely here yet.
        wait_first, info.kept_alive = info.kept_alive, True
    if wait_first:  # kept alive: wait up to park_after, then read
        if not _poller(fd).poll(_park_after * 1000):
            return _park_or_recv(conn, info, b"", size)  # it is idle
        data = os.read(fd, size)  # readable: this does not wait
    else:
        try:
            try:
                data = (
                    os.read(fd, size)
                    if conn.gettimeout() is not None
                    else _recv_dontwait(conn, size)
                )
            except BlockingIOError:
                if carry or not _poller(fd).poll(_park_after * 1000):
                    return _park_or_recv(conn, info, carry, size, _unspoken(info), want)
                data = os.read(fd, size)
        except ConnectionError:
            if not _unlooked_first(info):
                raise
            data = b""  # reset before its first byte: ended, as below
    if data:
        if not info.has_read:
            info.has_read, info.turn_began = True, time.monotonic_ns()
        if not carry:
            info.request_started = time.monotonic_ns()  # the first bytes of a new request
    elif not info.has_read and _unlooked_first(info):  # (the usual end: no call)
        # It ended without a byte: the dispatcher closes it, unserved, as after the look.
        return _park_or_recv(conn, info, b"", size, True)
    return data


def _unspoken(info: ConnectionInfo) -> bool:
    """Nothing of it has come to this worker yet: neither read here nor handed over with
    it (a request the dispatcher read whole, `carried`)."""
    return not (info.has_read or info.carried)


def _unlooked_first(info: ConnectionInfo) -> bool:
    """The first read of a connection that has sent nothing, on a listener whose sync
    worker did not look at it first (_unlooked): an end or a reset there is the look's to
    give back, unserved, not the handler's."""
    return _unspoken(info) and info.listener in _unlooked  # (any carry: read, or carried)


def _turn_over(info: ConnectionInfo) -> bool:
    """Others wait: a connection that keeps asking keeps its worker for TURN, then queues
    again behind them. Long enough to spread the trip through the dispatcher over many
    requests, short enough that none waits long for its turn."""
    return time.monotonic_ns() - info.turn_began > TURN_NS


def _recv_dontwait(conn: socket.socket, size: int) -> bytes:
    """A socket in blocking mode: MSG_DONTWAIT makes this one read not wait. (One with a
    timeout, the usual case, is non-blocking underneath, and os.read() does not wait: its
    recv() would poll for the whole timeout first.)"""
    return conn.recv(size, socket.MSG_DONTWAIT)


def _poller(fd: int) -> select.poll:
    """A poll object for this descriptor number, made once: the number is all it holds, so
    it serves whichever connection has the number now (one thread serves one at a time)."""
    poller = _pollers.get(fd)
    if poller is None:
        poller = _pollers[fd] = select.poll()
        poller.register(fd, select.POLLIN)
    return poller


_pollers: dict[int, select.poll] = {}


def _park_or_recv(
    conn: socket.socket,
    info: ConnectionInfo,
    carry: bytes,
    size: int,
    first: bool = False,
    want: int = 0,
) -> bytes:
    """Park (raising Parked), or where that fails, wait for the peer as recv() does; while
    stopping, a client yet to speak gets STOP_FIRST_BYTE, as one the dispatcher holds. A
    request that needs `want` more bytes the dispatcher may not wait for is parked whole
    (woken at each byte) if it fits max_carry; if not, it is read here."""
    if want and not _bufferable(conn, carry, want):
        if len(carry) + want > _max_carry:
            send_unsent(conn, info)
            return recv_within(conn, request_left(info))
        want = 0
    if _give_back(info, conn.fileno(), carry, first=first, want=want):
        raise Parked
    send_unsent(conn, info)  # it stays here: the answer first, then the wait
    if first and stopping() and not _poller(conn.fileno()).poll(STOP_FIRST_BYTE * 1000):
        return b""  # never spoke: the end, as the dispatcher would close it
    if carry:  # mid-request: as long as the dispatcher would have held it
        return recv_within(conn, request_left(info))
    return conn.recv(size)


async def park_async(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, carry: bytes = b""
) -> bool:
    """park() for an async handler: waits until everything written has been sent, then
    gives the connection back with `carry` plus what the reader had buffered. Buffered bytes
    are work nobody has looked at: the dispatcher hands such a connection on at once."""
    return await _park_async(reader, writer, carry)


async def _park_async(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, carry: bytes, first: bool = False
) -> bool:
    info = current_connection()
    if not _parkable(info):
        return False
    assert info is not None
    transport = writer.transport
    transport.set_write_buffer_limits(0)  # drain() returns once the buffer is empty
    await writer.drain()
    if not _parkable(info) or writer.is_closing():
        return False
    transport.pause_reading()
    unread = bytes(reader._buffer)  # asyncio has no public peek at what it buffered
    if reader.at_eof() and not unread:  # the peer is done: nothing to park for
        transport.resume_reading()
        return False
    sock = transport.get_extra_info("socket")
    if not _give_back(info, sock.fileno(), carry, unread, first):
        transport.resume_reading()
        return False
    transport.abort()  # closes our copy only: the PARK message holds the connection now
    return True


async def read(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, carry: bytes = b""
) -> bytes:
    """`reader.read()` for an async handler: waits up to `park_after` for the peer, then
    parks the connection with `carry` and raises Parked. b"" at end of stream."""
    import asyncio  # here, not at the top: sync workers and the dispatcher never load it

    info = current_connection()
    if not _parkable(info):
        if carry:  # mid-request, and it cannot wait in the dispatcher: as long as it would
            return await read_within(reader, None, request_left(info))
        data = await reader.read(CHUNK)
        if data:  # as below: a request's first bytes
            began(info)
        return data
    assert info is not None
    others = not carry and info.has_read and not reader._buffer and not reader.at_eof()
    others = others and _turn_over(info) and others_waiting() and not stopping()  # as receive()
    if others and await _park_async(reader, writer, carry):
        raise Parked
    try:
        async with asyncio.timeout(_park_after):
            data = await reader.read(CHUNK)
    except TimeoutError:
        first = not info.has_read
        if await _park_async(reader, writer, carry, first):
            raise Parked from None
        if carry:  # as _park_or_recv(): as long as the dispatcher would have held it
            return await read_within(reader, None, request_left(info))
        try:  # as _park_or_recv()
            async with asyncio.timeout(STOP_FIRST_BYTE if first and stopping() else None):
                data = await reader.read(CHUNK)
        except TimeoutError:
            return b""
    if data:
        # The first read of a handoff returns the carried bytes the worker fed the reader:
        # their request began when the handoff says, not now.
        carried = info.carried and not info.has_read
        if not info.has_read:
            info.has_read, info.turn_began = True, time.monotonic_ns()
        if not carry and not carried:
            info.request_started = time.monotonic_ns()
    return data
