"""Connections the dispatcher holds until they speak: deadlines, and Parking over real
socketpairs (the peer's end is the client)."""

from __future__ import annotations

import contextlib
import os
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import a_file, tcp_pair
from sockpool import giveback, parking
from sockpool.parking import FIRST_BYTE, IDLE, REQUEST, Parking, deadline_for

NEVER = float("inf")
TIMEOUTS = (10.0, 60.0, 30.0)  # first byte, idle, request


pytestmark = pytest.mark.usefixtures("no_descriptor_leaks")


# -- deadline_for ----------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "limit"), [(FIRST_BYTE, 10.0), (IDLE, 60.0), (REQUEST, 30.0)])
def test_each_kind_has_its_own_timeout(kind: str, limit: float) -> None:
    assert deadline_for(kind, 1000.0, 0, TIMEOUTS) == 1000.0 + limit


@pytest.mark.parametrize("kind", [FIRST_BYTE, IDLE, REQUEST])
def test_a_timeout_of_0_never_closes(kind: str) -> None:
    timeouts = tuple(0.0 if k == kind else 5.0 for k in (FIRST_BYTE, IDLE, REQUEST))
    assert deadline_for(kind, 1000.0, 900 * 10**9, timeouts) == NEVER


def test_a_request_runs_from_when_it_began() -> None:
    """However often it was parked since: 30 s from its first byte, not from now."""
    assert deadline_for(REQUEST, 1000.0, 990 * 10**9, TIMEOUTS) == 1020.0
    assert deadline_for(REQUEST, 1000.0, 0, TIMEOUTS) == 1030.0  # no start known: from now
    assert deadline_for(REQUEST, 1000.0, 2000 * 10**9, TIMEOUTS) == 1030.0  # never later
    # The other kinds ignore `started`.
    assert deadline_for(IDLE, 1000.0, 990 * 10**9, TIMEOUTS) == 1060.0


# -- Parking ---------------------------------------------------------------------------------
class Held:
    """A Parking and the client ends of the connections it holds."""

    def __init__(self) -> None:
        self.released: list[int] = []
        self.parking = Parking(self.released.append)
        self.clients: dict[int, socket.socket] = {}
        self.servers: list[int] = []  # the dispatcher's descriptors that came back to us

    def connect(self, conn_id: int, carry: bytes = b"", started: int = 0, at: int = -1) -> tuple:
        """A connection as accept() gives it (on descriptor `at`, if given)."""
        client, server = socket.socketpair()
        self.clients[conn_id] = client
        fd = server.detach()
        if at >= 0:
            os.dup2(fd, at, inheritable=False)
            os.close(fd)
            fd = at
        return (conn_id, fd, "web", "peer", carry, started)

    def hold(self, item: tuple, kind: str, deadline: float = NEVER) -> None:
        self.parking.hold(item, kind, deadline)

    def ready(self) -> list[tuple]:
        items = self.parking.ready()
        self.servers += [item[1] for item in items]
        return items

    def is_closed(self, conn_id: int) -> bool:
        """The client sees the server's end closed: end of stream, or a reset."""
        client = self.clients[conn_id]
        client.settimeout(5)
        try:
            while client.recv(100):
                pass
        except ConnectionResetError:
            pass
        return True

    def is_open(self, conn_id: int) -> bool:
        try:
            self.clients[conn_id].recv(1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        return False

    def close(self) -> None:
        self.parking.close_all("test over")
        self.parking.close()
        for client in self.clients.values():
            client.close()
        for fd in self.servers:
            os.close(fd)


@pytest.fixture
def held() -> Iterator[Held]:
    h = Held()
    yield h
    h.close()


def test_a_connection_that_speaks_is_handed_over_with_its_carry(held: Held) -> None:
    item = held.connect(1, b"GET / HT", 77)
    held.hold(item, REQUEST, 100.0)
    assert held.ready() == [] and len(held.parking) == 1 and held.parking.in_flight == 1
    held.clients[1].sendall(b"TP/1.1\r\n\r\n")
    assert held.ready() == [item]
    assert len(held.parking) == 0 and held.parking.in_flight == 0
    assert held.parking.next_deadline() == NEVER  # its deadline went with it
    assert held.released == [] and not held.parking.closed
    os.write(item[1], b"still connected")
    assert held.clients[1].recv(100) == b"still connected"


def test_a_peer_that_closes_without_data_is_closed_and_counted(held: Held) -> None:
    item = held.connect(4)
    held.hold(item, IDLE, 100.0)
    held.clients[4].close()
    del held.clients[4]
    assert held.ready() == []
    assert len(held.parking) == 0 and held.parking.closed == {"peer-closed": 1}
    assert held.released == [4]
    with pytest.raises(OSError):
        os.fstat(item[1])  # the dispatcher's descriptor is closed


def test_a_peer_that_sends_then_closes_is_still_served(held: Held) -> None:
    """A client that sends its request and half-closes (`nc -N`) gets its answer."""
    item = held.connect(5)
    held.hold(item, FIRST_BYTE, 100.0)
    held.clients[5].sendall(b"ping\n")
    held.clients[5].shutdown(socket.SHUT_WR)
    assert held.ready() == [item]
    assert not held.parking.closed and held.released == []
    assert os.read(item[1], 100) == b"ping\n"


@pytest.mark.parametrize(("kind", "served"), [(REQUEST, True), (IDLE, False), (FIRST_BYTE, False)])
def test_a_half_close_of_a_request_begun_is_its_end_to_serve(
    held: Held, kind: str, served: bool
) -> None:
    """A client that sent part of its request, waited, then ended it with a FIN (a slow
    pipe into `nc -N`): its handler reads the end and answers. Between requests, or before
    any, the FIN only says the client is done."""
    item = held.connect(6, b"abc" if kind == REQUEST else b"")
    held.hold(item, kind, 100.0)
    held.clients[6].shutdown(socket.SHUT_WR)
    assert held.ready() == ([item] if served else [])
    assert held.parking.closed == ({} if served else {"peer-closed": 1})
    if served:
        os.write(item[1], b"got abc")  # the answer still reaches it
        assert held.clients[6].recv(100) == b"got abc"


def test_a_reset_of_a_request_begun_is_closed(held: Held) -> None:
    item = held.connect(7, b"abc")
    held.hold(item, REQUEST, 100.0)
    held.clients[7].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    held.clients[7].close()
    del held.clients[7]
    assert held.ready() == [] and held.parking.closed == {"peer-closed": 1}


def test_expire_closes_what_is_past_its_deadline_with_its_reason(held: Held) -> None:
    items = {
        1: (held.connect(1), FIRST_BYTE, 10.0),
        2: (held.connect(2), IDLE, 20.0),
        3: (held.connect(3, b"GET", 1), REQUEST, 30.0),
        4: (held.connect(4), IDLE, NEVER),
    }
    for item, kind, deadline in items.values():
        held.hold(item, kind, deadline)
    assert held.parking.next_deadline() == 10.0
    held.parking.expire(9.9)
    assert len(held.parking) == 4 and not held.parking.closed
    held.parking.expire(20.0)  # a deadline that is now counts as past
    assert held.parking.closed == {"first-byte": 1, "idle": 1}
    assert held.released == [1, 2]
    assert held.is_closed(1) and held.is_closed(2) and held.is_open(3) and held.is_open(4)
    assert held.parking.next_deadline() == 30.0
    held.parking.expire(1e12)
    assert held.parking.closed == {"first-byte": 1, "idle": 1, "request": 1}
    assert len(held.parking) == 1 and held.is_open(4)
    assert held.parking.next_deadline() == NEVER


def test_a_stale_deadline_never_closes_a_connection_held_again(held: Held) -> None:
    """Held until 10, handed over, parked again (same descriptor) until 20: its old heap
    entry must not close it at 10."""
    item = held.connect(1)
    held.hold(item, IDLE, 10.0)
    held.clients[1].sendall(b"x")
    assert held.parking.ready() == [item]
    assert os.read(item[1], 1) == b"x"  # a worker served it and parked it again
    held.hold(item, IDLE, 20.0)
    held.parking.expire(15.0)
    assert held.is_open(1) and not held.parking.closed and len(held.parking) == 1
    assert held.parking.next_deadline() == 20.0
    held.parking.expire(20.0)
    assert held.is_closed(1) and held.parking.closed == {"idle": 1}


def test_a_stale_deadline_never_closes_another_connection_on_the_same_fd(held: Held) -> None:
    """Connection 1 is handed over and closed by its worker; connection 2 gets the same
    descriptor number and is held longer: connection 1's old deadline leaves it alone."""
    first = held.connect(1)
    held.hold(first, FIRST_BYTE, 10.0)
    held.clients[1].sendall(b"x")
    assert held.parking.ready() == [first]
    second = held.connect(2, at=first[1])  # dup2() closes first's descriptor
    held.hold(second, FIRST_BYTE, 40.0)
    held.parking.expire(15.0)
    assert held.is_open(2) and not held.parking.closed and len(held.parking) == 1
    assert held.parking.next_deadline() == 40.0


def test_close_idle_closes_only_connections_with_no_request(held: Held) -> None:
    held.hold(held.connect(1), FIRST_BYTE, 10.0)
    held.hold(held.connect(2), IDLE, 10.0)
    held.hold(held.connect(3, b"GET", 1), REQUEST, 10.0)
    held.hold(held.connect(4), IDLE, NEVER)
    assert held.parking.close_idle() == 2
    assert held.parking.closed == {"stopping": 2} and sorted(held.released) == [2, 4]
    assert held.is_closed(2) and held.is_closed(4)
    assert held.is_open(1) and held.is_open(3) and len(held.parking) == 2


def test_in_flight_counts_held_connections_that_owe_a_request(held: Held) -> None:
    parking = held.parking
    new, idle, partial = held.connect(1), held.connect(2), held.connect(3, b"GE", 1)
    held.hold(new, FIRST_BYTE, 10.0)
    held.hold(idle, IDLE, 10.0)
    held.hold(partial, REQUEST, 10.0)
    assert (len(parking), parking.in_flight) == (3, 2)
    parking.expire(10.0)  # closing lowers it
    assert (len(parking), parking.in_flight) == (0, 0)
    held.hold(held.connect(4), FIRST_BYTE)
    held.clients[4].sendall(b"x")
    assert len(held.ready()) == 1  # handing over lowers it
    assert (len(parking), parking.in_flight) == (0, 0)
    held.hold(held.connect(5), REQUEST)
    held.clients[5].close()
    del held.clients[5]
    assert held.ready() == []  # so does the peer going away
    assert (len(parking), parking.in_flight) == (0, 0)


def test_the_heap_rebuilt_when_mostly_stale_keeps_every_deadline(held: Held) -> None:
    """A busy keep-alive connection parks over and over and leaves a stale heap entry each
    time; the heap is rebuilt from what is held, and no deadline is lost."""
    parking = held.parking
    early, never, late = held.connect(1), held.connect(2), held.connect(3)
    held.hold(early, IDLE, 50.0)
    held.hold(never, IDLE, NEVER)
    held.hold(late, REQUEST, 500.0)
    busy = held.connect(4)
    for round_ in range(1500):
        held.hold(busy, IDLE, 100.0 + round_)
        held.clients[4].sendall(b"x")
        assert parking.ready() == [busy]
        assert os.read(busy[1], 1) == b"x"
    held.hold(busy, IDLE, 60.0)
    assert len(parking.deadlines) < 1500  # rebuilt, not 1,500 stale entries
    assert parking.next_deadline() == 50.0
    parking.expire(59.0)
    assert held.is_closed(1) and held.is_open(4) and held.is_open(3)
    parking.expire(60.0)
    assert held.is_closed(4) and held.is_open(3) and held.is_open(2)
    assert parking.next_deadline() == 500.0
    parking.expire(500.0)
    assert held.is_closed(3) and held.is_open(2)
    assert parking.closed == {"idle": 2, "request": 1}
    assert parking.next_deadline() == NEVER and len(parking) == 1


def test_close_all_closes_every_held_connection(held: Held) -> None:
    for conn_id, kind in enumerate([FIRST_BYTE, IDLE, REQUEST]):
        held.hold(held.connect(conn_id), kind, 10.0)
    assert held.parking.close_all("exit") == 3
    assert held.parking.closed == {"exit": 3} and sorted(held.released) == [0, 1, 2]
    assert all(held.is_closed(conn_id) for conn_id in range(3))
    assert (len(held.parking), held.parking.in_flight) == (0, 0)


def test_the_heap_the_loop_watches_is_the_one_kept_after_a_rebuild(held: Held) -> None:
    watched = held.parking.deadlines  # what dispatcher.py tests each turn: `deadlines[0][0]`
    busy = held.connect(1)
    for round_ in range(1500):
        held.hold(busy, IDLE, 100.0 + round_)
        held.clients[1].sendall(b"x")
        assert held.parking.ready() == [busy]
        assert os.read(busy[1], 1) == b"x"
    held.hold(busy, IDLE, 5.0)  # due long before any stale entry
    assert held.parking.next_deadline() == 5.0
    assert watched and watched[0][0] == 5.0


# -- an answer's rest, sent for a worker (UNREAD) ---------------------------------------------
ANSWER = bytes(range(256)) * 4096  # 1 MiB: more than a socketpair's buffers take at once


def memfd(data: bytes) -> int:
    """An answer's rest as a worker leaves it."""
    fd = os.memfd_create("answer", os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


def leave(
    held: Held,
    item: tuple,
    rest: int,
    span: tuple[int, int] | None = None,
    stall: float = 5.0,
    work: bool = False,
    file: bool = False,
) -> None:
    """Parking.send() as the hot path calls it for a PARK with UNSENT: the bytes `span`
    of `rest` (by default all of it), then "after"."""
    span = (0, os.fstat(rest).st_size) if span is None else span
    held.parking.send(item, rest, span, file, "after", stall, work)


def is_closed_fd(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def read_all(client: socket.socket, size: int, held: Held) -> bytes:
    """Read `size` bytes, letting the parking send more each time the client has taken some."""
    got = bytearray()
    client.settimeout(5)
    while len(got) < size:
        held.ready()
        got += client.recv(65536)
    held.ready()  # the last of it went: that is seen on the next turn
    return bytes(got)


def test_an_answer_is_sent_as_the_client_takes_it_then_goes_on(held: Held) -> None:
    words = memoryview(bytearray(8 * 3)).cast("q")
    held.parking.words = words  # as the dispatcher's: the workers see what it holds
    item = held.connect(1)
    rest = memfd(ANSWER)
    leave(held, item, rest)
    assert words[giveback.UNSENT] == len(ANSWER)
    assert (len(held.parking), held.parking.in_flight) == (1, 0)
    assert rest in held.parking.fds() and item[1] in held.parking.fds()
    assert read_all(held.clients[1], len(ANSWER), held) == ANSWER
    assert held.parking.sent == [(item, "after")]  # for the hot path to settle
    assert len(held.parking) == 0 and is_closed_fd(rest) and words[giveback.UNSENT] == 0
    assert held.released == [] and not held.parking.closed
    os.write(item[1], b"still connected")  # it was not closed: the hot path decides
    assert held.clients[1].recv(100) == b"still connected"
    os.close(item[1])


def test_only_what_the_client_has_not_taken_is_sent(held: Held) -> None:
    """A worker that sent some of its memfd before it gave the connection back (a stream
    that caught up) says where the rest begins."""
    item = held.connect(6)
    leave(held, item, memfd(b"taken already|the rest"), (14, 22))
    held.ready()
    held.clients[6].settimeout(5)
    assert held.clients[6].recv(100) == b"the rest"
    held.ready()
    assert held.parking.sent == [(item, "after")]
    os.close(item[1])


def test_an_answer_not_taken_within_its_stall_is_closed_as_unread(held: Held) -> None:
    item = held.connect(2)
    rest = memfd(ANSWER)
    leave(held, item, rest, work=True)
    assert held.parking.in_flight == 1  # a request comes after it: a stop waits for it
    deadline = held.parking.next_deadline()
    held.parking.expire(deadline)
    assert held.parking.closed == {"unread": 1} and held.released == [2]
    assert held.parking.in_flight == 0 and is_closed_fd(rest) and not held.parking.sent
    assert held.is_closed(2)


def test_the_stall_clock_starts_again_whenever_the_client_takes_some(held: Held) -> None:
    item = held.connect(3)
    leave(held, item, memfd(ANSWER))
    held.ready()
    first = held.parking.next_deadline()
    with contextlib.suppress(BlockingIOError):
        while held.clients[3].recv(65536, socket.MSG_DONTWAIT):  # all the buffers held
            pass
    held.ready()
    assert held.parking.next_deadline() > first and not held.parking.sent


def test_an_answer_to_a_client_gone_is_dropped(held: Held) -> None:
    item = held.connect(4)
    rest = memfd(ANSWER)
    leave(held, item, rest)
    held.clients.pop(4).close()
    held.ready()
    assert held.parking.closed == {"peer-closed": 1} and held.released == [4]
    assert is_closed_fd(rest) and not held.parking.sent and len(held.parking) == 0


def test_only_a_memfd_or_a_file_is_sent_from(held: Held) -> None:
    """A pipe could block the dispatcher's one loop: what is not a regular file is refused."""
    item = held.connect(5)
    r, w = os.pipe()
    leave(held, item, r, (0, 10), file=True)
    assert held.parking.closed == {"peer-closed": 1} and is_closed_fd(r)
    assert len(held.parking) == 0
    os.close(w)


def test_a_files_rest_is_sent_from_the_file_and_holds_none_of_our_memory(
    held: Held, disk_path: Path
) -> None:
    """A download's rest: the application's file itself, the bytes the worker names (a
    Content-Length shorter than the file, say). It is not counted against
    max_unsent_total: it is the page cache's, not ours."""
    words = memoryview(bytearray(8 * 4)).cast("q")
    held.parking.words = words
    item = held.connect(7)
    rest = a_file(disk_path, ANSWER)
    leave(held, item, rest, (1000, len(ANSWER) - 24), file=True)
    assert words[giveback.UNSENT] == 0 and rest in held.parking.fds()
    assert read_all(held.clients[7], len(ANSWER) - 1024, held) == ANSWER[1000:-24]
    assert held.parking.sent == [(item, "after")] and is_closed_fd(rest)
    assert not held.parking.closed and words[giveback.UNSENT] == 0
    os.close(item[1])


def test_a_file_flag_on_a_memfd_counts_it_all_the_same(held: Held) -> None:
    """FILE is the worker's word: a memfd (or any file only a descriptor keeps, or one in
    tmpfs) is memory, and counted against max_unsent_total whatever the flag says."""
    words = memoryview(bytearray(8 * 4)).cast("q")
    held.parking.words = words
    item = held.connect(9)
    rest = memfd(ANSWER)
    leave(held, item, rest, file=True)
    assert words[giveback.UNSENT] == len(ANSWER)
    assert read_all(held.clients[9], len(ANSWER), held) == ANSWER
    assert words[giveback.UNSENT] == 0
    os.close(item[1])


def test_a_client_that_takes_all_at_once_gets_a_slice_per_loop_turn(
    held: Held, disk_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client as fast as loopback (nginx in front) never fills its socket: one loop turn
    sends it SEND_SLICE, and the next turn the next slice, so the loop's other connections
    are not kept waiting while a long file goes out. (A slice of 64 KiB here: far less
    than any host's TCP send buffer takes at once.)"""
    monkeypatch.setattr(parking, "SEND_SLICE", SLICE)
    client, server = tcp_pair()  # TCP: a send buffer that grows to megabytes
    held.clients[10] = client
    item = (10, server.detach(), "web", "peer", b"", 0)
    rest = a_file(disk_path, ANSWER)
    leave(held, item, rest, file=True)
    sent = []
    for _ in range(3):
        before = held.parking.unsent[item[1]].offset
        wait_until_writable(item[1])
        held.ready()
        sent.append(held.parking.unsent[item[1]].offset - before)
        drain(client, sent[-1])
    assert sent == [SLICE] * 3
    assert read_all(client, len(ANSWER) - 3 * SLICE, held) == ANSWER[3 * SLICE :]
    assert held.parking.sent == [(item, "after")]
    os.close(item[1])


SLICE = 64 << 10


def wait_until_writable(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    assert poller.poll(5000)


def drain(client: socket.socket, size: int) -> None:
    """The client takes `size` bytes, as fast as they come."""
    client.settimeout(5)
    got = 0
    while got < size:
        got += len(client.recv(size - got))


def test_a_file_that_ends_before_its_answer_does_closes_the_connection(
    held: Held, disk_path: Path
) -> None:
    """A file cut short after the worker left it (a log rotated, say): the client gets what
    there is, then the connection's end, and cannot take the next answer for this one's
    rest. Counted as `short-file`."""
    item = held.connect(8)
    rest = a_file(disk_path, ANSWER)
    leave(held, item, rest, (0, 2 * len(ANSWER)), file=True)
    client, got = held.clients[8], bytearray()
    client.settimeout(5)
    while held.ready() == [] and (data := client.recv(65536)):
        got += data
    assert bytes(got) == ANSWER
    assert held.parking.closed == {"short-file": 1} and held.released == [8]
    assert is_closed_fd(rest) and not held.parking.sent and len(held.parking) == 0


# -- a body waited for in the kernel's buffer (a slow upload) ---------------------------------
BODY = 300_000  # a body's rest: over max_carry, under max_buffered_body


def tcp_item(held: Held, conn_id: int) -> tuple[tuple, socket.socket]:
    """A loopback TCP connection held as a parked request (SO_RCVLOWAT is TCP's), and our
    own socket object on the dispatcher's descriptor, to look at its options."""
    client, server = tcp_pair()
    held.clients[conn_id] = client
    item = (conn_id, server.detach(), "web", "peer", b"POST / HTTP/1.1\r\n...", 1)
    return item, socket.socket(fileno=item[1])


def low_water(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def readable(held: Held, timeout: float = 5.0) -> list[tuple]:
    """ready(), once the parking's epoll has something to report (or `timeout`)."""
    select.select([held.parking.epoll.fileno()], [], [], timeout)
    return held.ready()


def test_a_body_waited_for_goes_to_a_worker_once_it_has_all_come(held: Held) -> None:
    """Nothing is handed on while the body comes, and the workers are told how much is
    waited for; once it is all in the buffer, the connection goes on with it, its low-water
    mark back at one byte (a worker's poll for its next request must not wait for more)."""
    words = memoryview(bytearray(8 * 4)).cast("q")
    held.parking.words = words
    item, sock = tcp_item(held, 1)
    try:
        held.parking.hold(item, REQUEST, NEVER, BODY)
        assert low_water(sock) == BODY and words[giveback.BUFFERED] == BODY
        client = held.clients[1]
        client.sendall(b"x" * (BODY - 1))
        assert readable(held, 0.2) == []  # one byte short
        client.sendall(b"x")
        assert readable(held) == [item]
        assert low_water(sock) == 1 and words[giveback.BUFFERED] == 0
        assert len(sock.recv(BODY, socket.MSG_WAITALL)) == BODY
    finally:
        sock.detach()


def test_a_wake_before_the_body_has_come_waits_on_while_bytes_come(held: Held) -> None:
    """TCP's poll reports such a connection early whenever the window it advertised is
    nearly used up (here, a report as that one is): it is watched again while each report
    finds more bytes than the last, and goes to a worker at one that finds none (the
    buffer can take no more: a worker reads it)."""
    item, sock = tcp_item(held, 1)
    try:
        held.parking.hold(item, REQUEST, NEVER, BODY)
        held.clients[1].sendall(b"x" * 1000)
        held.parking.seen(item[1], select.EPOLLIN)
        assert held.ready() == [] and len(held.parking) == 1
        held.parking.seen(item[1], select.EPOLLIN)  # nothing more came
        assert held.ready() == [item] and low_water(sock) == 1
    finally:
        sock.detach()


def test_a_client_that_ends_its_body_early_goes_to_a_worker_to_be_told(held: Held) -> None:
    """A half-close before the body is whole: the handler reads the end and answers."""
    item, sock = tcp_item(held, 1)
    try:
        held.parking.hold(item, REQUEST, NEVER, BODY)
        held.clients[1].sendall(b"x" * 1000)
        held.clients[1].shutdown(socket.SHUT_WR)
        assert readable(held) == [item]
    finally:
        sock.detach()


def test_a_want_past_what_the_kernel_takes_is_waited_for_up_to_its_cap(held: Held) -> None:
    """A PARK may say up to 2**32 - 1 bytes (a u32): SO_RCVLOWAT is an int, and the kernel
    caps it far lower. The connection is held all the same, and the dispatcher lives."""
    item, sock = tcp_item(held, 1)
    try:
        held.parking.hold(item, REQUEST, NEVER, 2**32 - 1)
        assert len(held.parking) == 1 and 1 < low_water(sock) < 2**31
    finally:
        sock.detach()


def test_a_body_not_whole_by_its_deadline_is_closed_and_no_longer_counted(held: Held) -> None:
    words = memoryview(bytearray(8 * 4)).cast("q")
    held.parking.words = words
    item, _ = tcp_item(held, 1)
    held.parking.hold(item, REQUEST, 5.0, BODY)
    held.parking.expire(6.0)
    assert held.parking.closed == {REQUEST: 1} and words[giveback.BUFFERED] == 0
    assert held.is_closed(1)
