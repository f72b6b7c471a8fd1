"""Giving a connection back (giveback.py) over a real channel, as a worker does it, and the
built-in HTTP handler's request framing (handlers.next_request)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import os
import platform
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness import a_file, tcp_pair
from sockpool import channel, config, giveback, handlers, unsent, wire, worker, wsgi
from sockpool.connection import ConnectionInfo, current_connection, set_current
from sockpool.http11 import HttpConnection, HttpLimits
from sockpool.spec import WorkerSpec

T = TypeVar("T")
NOTHING_WAITS = 3600.0  # a park_after no test may sit out: parking mid-request never waits


pytestmark = pytest.mark.usefixtures("no_descriptor_leaks")


class Worker:
    """A worker's side of the channel (worker._Base, as a forked worker sets it up) and the
    dispatcher's end, which receives what it parks; one client connection to serve."""

    def __init__(
        self, park_after: float, handler: Callable = handlers.echo, tcp: bool = False
    ) -> None:
        self.dispatcher, chan = channel.pair()
        cfg = config.build({"park_after": park_after}, {}, None)
        self.worker = worker._Base(chan, {None: handler}, WorkerSpec.of(1, cfg, ["web"]), -1)
        self.client, self.conn = tcp_pair() if tcp else socket.socketpair()
        self.conn.settimeout(60)  # as serve_sync does (idle_timeout)
        self.parked_fds: list[int] = []

    def info(self, may_park: bool = True, conn_id: int = 42) -> ConnectionInfo:
        return ConnectionInfo(conn_id, "web", "peer", may_park=may_park)

    def parked(self, timeout: float = 10.0) -> tuple[wire.ToDispatcher, int]:
        """The PARK the dispatcher received, and the descriptor that came with it."""
        self.dispatcher.settimeout(timeout)
        data, fds = channel.receive(self.dispatcher)
        self.parked_fds += fds
        message = wire.decode_to_dispatcher(data, len(fds))
        return message, fds[0]

    def nothing_parked(self) -> bool:
        try:
            self.dispatcher.recv(1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        return False

    def close(self) -> None:
        for s in (self.dispatcher, self.worker.chan, self.client, self.conn):
            s.close()
        channel.close_all(self.parked_fds)


@pytest.fixture
def make_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Worker]]:
    monkeypatch.setattr(giveback, "_send", None)  # restored after the test: worker._Base sets it
    monkeypatch.setattr(unsent, "_limit", 0)  # as are max_unsent and max_unsent_total
    monkeypatch.setattr(unsent, "_total", 0)
    monkeypatch.setattr(giveback, "_park_after", 0.0)
    monkeypatch.setattr(giveback, "_max_buffered", 0)  # and max_buffered_body's two
    monkeypatch.setattr(giveback, "_buffered_total", 0)
    monkeypatch.setattr(giveback, "_unlooked", frozenset())  # a sync worker's ready() sets it
    made: list[Worker] = []

    def make(
        park_after: float = 0.0, handler: Callable = handlers.echo, tcp: bool = False
    ) -> Worker:
        made.append(Worker(park_after, handler, tcp))
        return made[-1]

    yield make
    for w in made:
        w.close()


def serving(info: ConnectionInfo, fn: Callable[..., T], *args: Any) -> T:
    """Call fn as a handler would, with `info` as the current connection (in a context of
    its own, so it does not outlive the test)."""

    def run() -> T:
        set_current(info)
        return fn(*args)

    return contextvars.copy_context().run(run)


def in_poll(thread_id: int) -> bool:
    """The thread is blocked in poll() (what receive() waits in between requests)."""
    with open(f"/proc/self/task/{thread_id}/syscall") as f:
        number = f.read().split()[0]
    return number in _POLL_SYSCALLS.get(platform.machine(), ())


_POLL_SYSCALLS = {"x86_64": {"7", "271"}, "aarch64": {"73"}}  # poll, ppoll


# -- receive() -------------------------------------------------------------------------------
def test_receive_returns_what_has_come(make_worker) -> None:
    w = make_worker(park_after=0.0)
    info = w.info()
    w.client.sendall(b"hello")
    before = time.monotonic_ns()
    assert serving(info, giveback.receive, w.conn) == b"hello"
    assert not info.parked and w.nothing_parked()
    assert info.request_started >= before  # a request began with those bytes


@pytest.mark.parametrize("has_read", [True, False])
def test_receive_between_requests_parks_when_nothing_comes(make_worker, has_read: bool) -> None:
    w = make_worker(park_after=0.001)
    info = w.info(conn_id=2**64 - 1)
    info.has_read = has_read  # False: the handler's first read, on a client yet to speak
    with pytest.raises(giveback.Parked):
        serving(info, giveback.receive, w.conn)
    assert info.parked
    message, fd = w.parked()
    # Nothing begun: no request clock. A connection that never spoke goes back as a new
    # one (first_byte_timeout; a stop gives it a moment), not as one idle between requests.
    assert message == wire.Park(2**64 - 1, 0, b"", silent=not has_read)
    # What the dispatcher got is the connection itself.
    w.client.sendall(b"next request")
    assert os.read(fd, 100) == b"next request"
    # Parked once: it cannot be parked again, nor read as if still ours.
    assert serving(info, giveback.park, w.conn) is False


@pytest.mark.skipif(platform.machine() not in _POLL_SYSCALLS, reason="syscall numbers unknown")
@pytest.mark.parametrize("kept_alive", [False, True])
def test_receive_between_requests_waits_park_after_for_the_peer(
    make_worker, kept_alive: bool
) -> None:
    """A busy keep-alive connection whose next request comes within park_after is not
    bounced through the dispatcher: the bytes are sent only once receive() waits, the
    first time between requests as on a connection kept alive."""
    w = make_worker(park_after=NOTHING_WAITS)
    info = w.info()
    info.has_read, info.kept_alive = True, kept_alive
    assert received_once_waiting(w, info, b"came while waiting") == b"came while waiting"
    assert not info.parked and w.nothing_parked()


def test_receive_reads_before_it_waits_only_the_first_time(
    make_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between requests, the first time, what is there already (a one-shot client's end,
    or a pipelined request) costs one read and no poll; a client kept alive sends its next
    request only once answered, so from then on receive() polls before it reads."""
    polls: list[float] = []
    poller = giveback._poller

    class Counted:
        def __init__(self, fd: int) -> None:
            self.poller = poller(fd)

        def poll(self, ms: float) -> list[tuple[int, int]]:
            polls.append(ms)
            return self.poller.poll(ms)

    monkeypatch.setattr(giveback, "_poller", Counted)
    w = make_worker(park_after=NOTHING_WAITS)
    info = w.info()
    info.has_read = True
    w.client.sendall(b"first")
    assert serving(info, giveback.receive, w.conn) == b"first"
    assert polls == []
    w.client.sendall(b"second")
    assert serving(info, giveback.receive, w.conn) == b"second"
    assert polls == [NOTHING_WAITS * 1000]
    assert not info.parked and w.nothing_parked()


def test_receive_between_requests_takes_what_came_with_the_request(make_worker) -> None:
    """A client that sent its next request, or its end, along with the first: both are
    there the moment the handler asks, without waiting, and nothing parks."""
    w = make_worker(park_after=NOTHING_WAITS)
    info = w.info()
    info.has_read = True
    w.client.sendall(b"pipelined")
    w.client.shutdown(socket.SHUT_WR)
    assert serving(info, giveback.receive, w.conn) == b"pipelined"
    assert serving(info, giveback.receive, w.conn) == b""  # its end: as recv()
    assert not info.parked and w.nothing_parked()


def received_once_waiting(w: Worker, info: ConnectionInfo, payload: bytes) -> bytes:
    """What receive() returns when the client sends `payload` only once it waits in poll()
    (or closes, if it never does: the caller's assertion then fails on b"")."""
    main = threading.get_native_id()

    def send_when_waiting() -> None:
        for _ in range(10_000):
            if in_poll(main):
                w.client.sendall(payload)
                return
            time.sleep(0.001)
        w.client.close()

    sender = threading.Thread(target=send_when_waiting)
    sender.start()
    try:
        return serving(info, giveback.receive, w.conn)
    finally:
        sender.join()


@pytest.fixture
def stopping(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatcher's shared words, as they are once the service is stopping."""
    words = memoryview(bytearray(16)).cast("q")
    words[giveback.STOPPING] = 1
    monkeypatch.setattr(giveback, "_waiting", words)


@pytest.mark.skipif(platform.machine() not in _POLL_SYSCALLS, reason="syscall numbers unknown")
@pytest.mark.usefixtures("stopping")
def test_while_stopping_a_client_yet_to_speak_is_kept_and_waited_for(
    make_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given back, it could find every worker retired: the worker keeps it, and waits for
    # the first byte as the dispatcher would (STOP_FIRST_BYTE).
    monkeypatch.setattr(giveback, "STOP_FIRST_BYTE", NOTHING_WAITS)
    w = make_worker(park_after=0.0)
    info = w.info()
    assert received_once_waiting(w, info, b"just in time") == b"just in time"
    assert not info.parked and w.nothing_parked()


@pytest.mark.usefixtures("stopping")
def test_while_stopping_a_client_that_never_speaks_is_ended(
    make_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(giveback, "STOP_FIRST_BYTE", 0.01)
    w = make_worker(park_after=0.0)
    info = w.info()
    assert serving(info, giveback.receive, w.conn) == b""  # the handler ends; serve_sync closes
    assert not info.parked and w.nothing_parked()


@pytest.mark.usefixtures("stopping")
def test_while_stopping_a_keep_alive_client_keeps_its_turn(make_worker) -> None:
    # Others wait (the word says so) and its turn is over, but while stopping no turn ends:
    # given back with its next request already sent, nobody might be left to serve it.
    assert giveback._waiting is not None
    giveback._waiting[giveback.WAITING] = 1
    w = make_worker(park_after=0.0)
    info = w.info()
    info.has_read, info.turn_began = True, 0  # between requests, its turn long begun
    w.client.sendall(b"next request")
    assert serving(info, giveback.receive, w.conn) == b"next request"
    assert not info.parked and w.nothing_parked()


@pytest.mark.usefixtures("stopping")
def test_while_stopping_a_request_begun_is_kept_and_an_idle_one_still_parks(make_worker) -> None:
    w = make_worker(park_after=0.0)
    begun = w.info()
    assert serving(begun, giveback.park, w.conn, b"GET / HT") is False
    assert not begun.parked and w.nothing_parked()
    idle = w.info()
    idle.has_read = True  # between requests: the dispatcher closes it, as a stop does
    with pytest.raises(giveback.Parked):
        serving(idle, giveback.receive, w.conn)
    message, _ = w.parked()
    assert message == wire.Park(42, 0, b"")


@pytest.mark.parametrize("started", [0, 123_456_789])
def test_receive_mid_request_parks_at_once_with_the_request_so_far(
    make_worker, started: int
) -> None:
    w = make_worker(park_after=NOTHING_WAITS)
    info = w.info()
    info.request_started = started

    def rescue() -> None:  # only if receive() waited instead of parking: fail, not hang
        try:
            w.dispatcher.settimeout(30)
            w.dispatcher.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            w.client.sendall(b"!")

    rescuer = threading.Thread(target=rescue)
    rescuer.start()
    before = time.monotonic_ns()
    try:
        with pytest.raises(giveback.Parked):
            serving(info, giveback.receive, w.conn, b"GET / HTTP/1.1\r\nHo")
    finally:
        rescuer.join()
    message, _ = w.parked()
    assert isinstance(message, wire.Park) and message.carry == b"GET / HTTP/1.1\r\nHo"
    if started:  # the request's clock runs from its first byte, across parks
        assert message.started == started
    else:
        assert before <= message.started <= time.monotonic_ns()


HEAD = b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"


def test_a_body_to_come_parks_with_how_much_is_owed(make_worker) -> None:
    """Slow uploads: mid-request with `want` (a body's rest, within max_buffered_body), the
    connection goes back saying how many bytes the dispatcher waits for."""
    w = make_worker(tcp=True)
    info = w.info()
    with pytest.raises(giveback.Parked):
        serving(info, giveback.receive, w.conn, HEAD + b"abc", giveback.CHUNK, 99_997)
    message, _ = w.parked()
    assert isinstance(message, wire.Park) and (message.carry, message.want) == (
        HEAD + b"abc",
        99_997,
    )


def waiting_words(monkeypatch: pytest.MonkeyPatch, buffered: int) -> None:
    words = memoryview(bytearray(8 * 4)).cast("q")
    words[giveback.BUFFERED] = buffered
    monkeypatch.setattr(giveback, "_waiting", words)


@pytest.mark.parametrize(
    ("tcp", "held", "carry", "want"),
    [
        (False, 0, HEAD + b"abc", 99_997),
        (True, 0, HEAD + b"abc", (1 << 20) + 1),
        (True, (64 << 20) - 99_996, HEAD + b"abc", 99_997),
        (True, 0, HEAD + b"a" * 16_384, 10),
    ],
    ids=["unix-socket", "over-max_buffered_body", "over-the-total", "carry-over-max_carry"],
)
def test_a_long_body_the_dispatcher_cannot_wait_for_is_read_here(
    make_worker, monkeypatch, tcp: bool, held: int, carry: bytes, want: int
) -> None:
    """Over a UNIX socket (whose poll ignores SO_RCVLOWAT), past max_buffered_body, past
    max_buffered_body_total with what the dispatcher waits for already, or with more read
    of it than max_carry (which the dispatcher would close as too-large), a request too
    long to park whole is read in the worker, as before: it waits for the client (here, in
    vain, until request_timeout), and nothing goes back."""
    w = make_worker(tcp=tcp)
    waiting_words(monkeypatch, held)
    monkeypatch.setattr(giveback, "_request_timeout", 0.2)
    info = w.info()
    info.request_started = time.monotonic_ns()
    with pytest.raises(TimeoutError):
        serving(info, giveback.receive, w.conn, carry, giveback.CHUNK, want)
    assert not info.parked and w.nothing_parked()


def test_a_small_body_the_dispatcher_cannot_wait_for_is_parked_whole_as_before(
    make_worker,
) -> None:
    """Over a UNIX socket, a request that fits max_carry whole parks with no `want`: the
    dispatcher hands it on at its next byte, as it always did."""
    w = make_worker()
    with pytest.raises(giveback.Parked):
        serving(w.info(), giveback.receive, w.conn, b"POST / HTTP/1.1\r\n", giveback.CHUNK, 500)
    message, _ = w.parked()
    assert isinstance(message, wire.Park) and message.want == 0


def test_receive_without_may_park_just_receives(make_worker) -> None:
    """A handoff without MAY_PARK (the dispatcher near its descriptor limit): the handler
    keeps the connection, and waits for the peer as it always did."""
    w = make_worker(park_after=0.0)
    info = w.info(may_park=False)
    info.request_started = 1  # an earlier request's: request_timeout counts from the new one's
    w.client.sendall(b"data")
    before = time.monotonic_ns()
    assert serving(info, giveback.receive, w.conn) == b"data"
    assert info.request_started >= before
    w.conn.settimeout(0.05)
    with pytest.raises(TimeoutError):
        serving(info, giveback.receive, w.conn, b"partial")
    assert not info.parked and w.nothing_parked()
    assert serving(info, giveback.park, w.conn) is False


def test_receive_at_end_of_stream(make_worker) -> None:
    w = make_worker(park_after=0.0)
    w.client.shutdown(socket.SHUT_WR)
    info = w.info()
    assert serving(info, giveback.receive, w.conn) == b""
    assert not info.parked and w.nothing_parked()


# -- park() ----------------------------------------------------------------------------------
def test_park_outside_a_worker_is_refused() -> None:
    client, conn = socket.socketpair()
    with client, conn:
        assert current_connection() is None and giveback.park(conn, b"x") is False
        # A connection described as parkable, but no worker to send it: still refused.
        assert (
            serving(ConnectionInfo(1, "web", "peer", may_park=True), giveback.park, conn) is False
        )


def test_park_gives_the_connection_back_with_its_carry(make_worker) -> None:
    w = make_worker()
    info = w.info(conn_id=7)
    info.request_started = 99
    assert serving(info, giveback.park, w.conn, b"POST /x HTTP/1.1\r\n") is True
    assert info.parked
    message, fd = w.parked()
    assert message == wire.Park(7, 99, b"POST /x HTTP/1.1\r\n")
    os.write(fd, b"from the dispatcher's copy")
    assert w.client.recv(100) == b"from the dispatcher's copy"


def test_a_carry_over_the_wire_limit_is_kept_not_parked(make_worker) -> None:
    w = make_worker()
    info = w.info()
    assert serving(info, giveback.park, w.conn, b"x" * (wire.MAX_CARRY + 1)) is False
    assert not info.parked and w.nothing_parked()


def test_park_with_the_dispatcher_gone_keeps_the_connection(make_worker) -> None:
    w = make_worker()
    w.dispatcher.close()
    info = w.info()
    assert serving(info, giveback.park, w.conn) is False
    assert not info.parked


# -- unsent.send(): what a slow client has not taken goes back with the connection -----------
LONG = bytes(range(256)) * 1024  # 256 KiB


def small_buffer(w: Worker) -> None:
    """The worker's socket takes little at once: most of an answer is left over."""
    w.conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def reader(client: socket.socket) -> tuple[threading.Thread, bytearray]:
    got = bytearray()

    def read() -> None:
        while chunk := client.recv(65536):
            got.extend(chunk)

    thread = threading.Thread(target=read)
    thread.start()
    return thread, got


def answered_slowly(make_worker, monkeypatch, conn_id: int) -> tuple[Worker, ConnectionInfo]:
    """A worker that sent LONG to a client that has read none of it: send() returned, and
    the rest waits in info.unsent."""
    w = make_worker()
    monkeypatch.setattr(unsent, "_limit", 1 << 20)
    small_buffer(w)
    info = w.info(conn_id=conn_id)
    serving(info, unsent.send, w.conn, LONG)
    assert info.unsent is not None and 0 < info.unsent.size < len(LONG)
    return w, info


def test_what_the_client_does_not_take_goes_back_with_the_connection(
    make_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, info = answered_slowly(make_worker, monkeypatch, 5)
    size = info.unsent.size  # type: ignore[union-attr]
    with pytest.raises(giveback.Parked):  # its client waits for the answer: back at once
        serving(info, giveback.receive, w.conn)
    message, _ = w.parked()
    assert message == wire.Park(5, 0, b"", unsent=True, span=(0, size))
    rest = w.parked_fds[-1]
    assert info.unsent is None and info.parked
    taken = w.client.recv(len(LONG), socket.MSG_DONTWAIT)  # what the socket took, then the rest
    assert taken + os.pread(rest, len(LONG), 0) == LONG


def test_a_stream_whose_client_caught_up_goes_on_as_any_write(
    make_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next write sends first what the client takes now: once it has it all, the memfd
    is gone and the write goes out at once, not held back until the answer ends."""
    w, info = answered_slowly(make_worker, monkeypatch, 7)
    thread, got = reader(w.client)
    while info.unsent is not None:  # each write: what the client took meanwhile goes first
        serving(info, unsent.send, w.conn, b"event\n")
    serving(info, unsent.send, w.conn, b"last\n")  # straight to the socket
    assert info.unsent is None
    w.conn.shutdown(socket.SHUT_WR)
    thread.join(10)
    events = bytes(got)[len(LONG) :]
    assert bytes(got)[: len(LONG)] == LONG
    assert events == b"event\n" * (len(events) // 6) + b"last\n"


def test_a_handler_done_with_its_answer_untaken_leaves_it_and_the_close(
    make_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, info = answered_slowly(make_worker, monkeypatch, 6)
    size = info.unsent.size  # type: ignore[union-attr]
    assert serving(info, giveback.leave_rest, w.conn, info) is True
    message, _ = w.parked()
    assert message == wire.Park(6, 0, b"", unsent=True, close=True, span=(0, size))


def wsgi_answer(conn: socket.socket, body: bytes, headers: list[tuple[str, str]]) -> None:
    """The WSGI server's answer of a list application: `body` whole, with its head."""
    http = HttpConnection(HttpLimits(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert http.next_request() is not None
    response = wsgi._Response(conn, http)
    response.start_response("200 OK", headers)
    response.send([body])


@pytest.mark.parametrize("behind", [True, False], ids=["behind-a-rest", "a-long-head"])
def test_a_long_answer_is_left_whole_though_it_goes_after_its_head(
    make_worker, monkeypatch: pytest.MonkeyPatch, behind: bool
) -> None:
    """The WSGI server sends a long body after its head, not joined to it; what the client
    has not taken of either is left all the same (the worker does not wait for the
    client: its socket's timeout would end the test), behind the rest of an answer before
    it (a pipelined request), or of a head the socket could not take whole; and the
    client gets it all, in order."""
    body = os.urandom(300_000)
    if behind:
        w, info = answered_slowly(make_worker, monkeypatch, 7)
        headers: list[tuple[str, str]] = []
    else:
        w = make_worker()
        small_buffer(w)
        info = w.info()
        headers = [("X-Long", "y" * 60_000)]
    monkeypatch.setattr(unsent, "_limit", 16 << 20)
    w.conn.settimeout(0.05)
    serving(info, wsgi_answer, w.conn, body, headers)
    assert info.unsent is not None
    thread, got = reader(w.client)
    serving(info, giveback.send_unsent, w.conn, info)
    w.conn.shutdown(socket.SHUT_WR)
    thread.join(10)
    head, _, rest = bytes(got).removeprefix(LONG if behind else b"").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nContent-Length: 300000" in head
    assert rest == body


def test_past_max_unsent_the_worker_sends_it_all_itself_in_order(
    make_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first answer's rest fits in max_unsent, the second answer not behind it: what
    waits goes first, then the rest, all in order."""
    w = make_worker()
    monkeypatch.setattr(unsent, "_limit", 65536)
    small_buffer(w)
    info = w.info()
    first = b"a" * 20000
    serving(info, unsent.send, w.conn, first)
    assert info.unsent is not None
    thread, got = reader(w.client)
    serving(info, unsent.send, w.conn, LONG)
    if info.unsent is not None:  # the last of it may wait once more: the worker sends it
        serving(info, giveback.send_unsent, w.conn, info)
    w.conn.shutdown(socket.SHUT_WR)
    thread.join(10)
    assert bytes(got) == first + LONG and w.nothing_parked()


def test_a_file_that_ends_early_adds_nothing_to_what_waits(tmp_path) -> None:
    """A file shorter than its Content-Length is the application's error (ValueError), and
    what waits stays whole and in order: nothing of the file, nothing lost."""
    short = tmp_path / "short"
    short.write_bytes(b"0123456789")
    rest = unsent.Unsent()
    fd = os.open(short, os.O_RDONLY)
    try:
        rest.add(b"head:")
        with pytest.raises(ValueError, match="ended before"):
            rest.add_file(fd, 0, 100)
        rest.add_file(fd, 2, 3)
        rest.add(b":end")
        assert rest.size == 12 and os.pread(rest.fd, 100, 0) == b"head:234:end"
    finally:
        os.close(fd)
        rest.close()


def sending_a_file(
    make_worker,
    monkeypatch: pytest.MonkeyPatch,
    where: Path,
    limit: int = 1 << 20,
    flags: int = os.O_RDONLY,
    conn_id: int = 42,
) -> tuple[Worker, ConnectionInfo, int]:
    """A worker whose socket takes little at once, under max_unsent `limit`, and LONG in a
    file in `where` for it to send (the test closes its descriptor)."""
    w = make_worker()
    monkeypatch.setattr(unsent, "_limit", limit)
    small_buffer(w)
    return w, w.info(conn_id=conn_id), a_file(where, LONG, flags)


def test_a_files_rest_goes_back_as_the_file_whatever_its_length(
    make_worker, monkeypatch: pytest.MonkeyPatch, disk_path: Path
) -> None:
    """A download longer than max_unsent: nothing is copied, the dispatcher gets the file
    (a descriptor of its own: the application closes its file) and the bytes still to
    send, from where the client's share ends to the answer's Content-Length."""
    w, info, fd = sending_a_file(make_worker, monkeypatch, disk_path, 4096, conn_id=9)
    serving(info, unsent.send_file, w.conn, fd, 100, len(LONG) - 200)
    rest = info.unsent
    assert rest is not None and rest.file and rest.size == len(LONG) - 100
    os.close(fd)  # the application's close(): the rest is still there to send
    serving(info, unsent.send, w.conn, b"")  # the answer's end: nothing more to add
    assert info.unsent is rest
    assert serving(info, giveback.leave_rest, w.conn, info) is True
    message, _ = w.parked()
    assert message == wire.Park(
        9, 0, b"", unsent=True, close=True, span=(rest.sent, rest.size), file=True
    )
    taken = w.client.recv(len(LONG), socket.MSG_DONTWAIT)
    assert 100 + len(taken) == rest.sent
    rest_bytes = os.pread(w.parked_fds[-1], rest.size - rest.sent, rest.sent)
    assert taken + rest_bytes == LONG[100:-100]


def test_more_behind_a_files_rest_waits_for_it_in_the_worker(
    make_worker, monkeypatch: pytest.MonkeyPatch, disk_path: Path
) -> None:
    """Bytes cannot join the application's file (here one it could write to): a last
    part written after it sends the file's rest, then itself, in order, from the worker,
    and the file is left as it was."""
    w, info, fd = sending_a_file(make_worker, monkeypatch, disk_path, flags=os.O_RDWR)
    try:
        serving(info, unsent.send_file, w.conn, fd, 0, len(LONG))
        assert info.unsent is not None and info.unsent.file
        thread, got = reader(w.client)
        serving(info, unsent.send, w.conn, b"trailer")
    finally:
        os.close(fd)
    if info.unsent is not None:  # what the socket did not take of the trailer, now alone
        assert not info.unsent.file and info.unsent.size <= len(b"trailer")
        serving(info, giveback.send_unsent, w.conn, info)
    w.conn.shutdown(socket.SHUT_WR)
    thread.join(10)
    assert bytes(got) == LONG + b"trailer" and w.nothing_parked()
    assert (disk_path / "download").read_bytes() == LONG


@pytest.mark.parametrize("where", ["deleted", "tmpfs"])
def test_a_file_the_dispatcher_would_hold_in_memory_is_copied_as_bytes_are(
    make_worker, monkeypatch: pytest.MonkeyPatch, disk_path: Path, where: str
) -> None:
    """A temporary file (deleted: only descriptors keep it), or one in tmpfs, held by the
    dispatcher would be the service's memory (or disk) that no limit counts: its rest is
    copied into a memfd while it fits max_unsent, as bytes are, not handed over as the
    file."""
    folder = disk_path
    if where == "tmpfs":
        if not Path("/dev/shm").is_dir():
            pytest.skip("no /dev/shm here")
        folder = Path(tempfile.mkdtemp(dir="/dev/shm"))
    w, info, fd = sending_a_file(make_worker, monkeypatch, folder)
    try:
        if where == "deleted":
            (folder / "download").unlink()
        assert unsent.pinned(fd)
        serving(info, unsent.send_file, w.conn, fd, 0, len(LONG))
    finally:
        os.close(fd)
        if where == "tmpfs":
            shutil.rmtree(folder)
    rest = info.unsent
    assert rest is not None and not rest.file and rest.size < len(LONG)
    taken = w.client.recv(len(LONG), socket.MSG_DONTWAIT)
    assert taken + os.pread(rest.fd, len(LONG), 0) == LONG
    info.unsent = None
    rest.close()


def test_a_file_on_a_disk_is_not_pinned(disk_path: Path) -> None:
    fd = a_file(disk_path, LONG)
    try:
        assert not unsent.pinned(fd)
    finally:
        os.close(fd)


def test_a_file_cut_short_behind_its_rest_sends_nothing_twice(
    make_worker, monkeypatch: pytest.MonkeyPatch, disk_path: Path
) -> None:
    """The file shrank after the worker kept its rest: the answer's end finds it short
    (ValueError, the application's error, as for a file short from the start), and the
    rest is dropped, not given back to be sent again from where the client's share
    ended before."""
    w, info, fd = sending_a_file(make_worker, monkeypatch, disk_path)
    try:
        serving(info, unsent.send_file, w.conn, fd, 0, len(LONG))
        rest = info.unsent
        assert rest is not None and rest.file
        cut = rest.sent + 10  # the next write sends 10 bytes, then finds the end
        got = bytearray()
        with contextlib.suppress(BlockingIOError):
            while len(got) < rest.sent:
                got += w.client.recv(65536, socket.MSG_DONTWAIT)
        os.truncate(disk_path / "download", cut)
        with pytest.raises(ValueError, match="ended before"):
            serving(info, unsent.send, w.conn, b"")
    finally:
        os.close(fd)
    assert info.unsent is None
    w.conn.shutdown(socket.SHUT_WR)
    w.client.settimeout(5)
    while data := w.client.recv(65536):
        got += data
    assert bytes(got) == LONG[:cut]


def test_with_max_unsent_0_a_file_is_sent_by_the_worker(
    make_worker, monkeypatch: pytest.MonkeyPatch, disk_path: Path
) -> None:
    """max_unsent = 0 leaves nothing to the dispatcher, a file's rest included."""
    w, info, fd = sending_a_file(make_worker, monkeypatch, disk_path, 0)
    thread, got = reader(w.client)
    try:
        serving(info, unsent.send_file, w.conn, fd, 0, len(LONG))
    finally:
        os.close(fd)
    assert info.unsent is None
    w.conn.shutdown(socket.SHUT_WR)
    thread.join(10)
    assert bytes(got) == LONG and w.nothing_parked()


def test_a_handler_that_closes_its_connection_with_its_answer_untaken_is_told(
    make_worker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What waited is lost with the connection: a warning names flush(), and the memfd
    goes (no descriptor left open)."""
    w = make_worker()
    monkeypatch.setattr(unsent, "_limit", 1 << 20)
    small_buffer(w)

    def closes(conn: socket.socket, info: ConnectionInfo) -> None:
        unsent.send(conn, LONG)
        conn.close()

    info = w.info()
    contextvars.copy_context().run(w.worker.serve_sync, closes, w.conn, info)
    assert "call sockpool.flush(conn) before closing it" in caplog.text
    assert info.unsent is None and w.nothing_parked()


@pytest.mark.parametrize(
    ("may_park", "limit", "held"), [(False, 1 << 20, 0), (True, 0, 0), (True, 1 << 20, 900_000)]
)
def test_a_connection_that_may_not_go_back_keeps_its_answer(
    make_worker, monkeypatch: pytest.MonkeyPatch, may_park: bool, limit: int, held: int
) -> None:
    """Near the dispatcher's descriptor limit (no MAY_PARK), with max_unsent 0, or with the
    dispatcher holding so much already that this one would take it past max_unsent_total
    (1 MiB here), the worker waits for the client as sendall() does."""
    w = make_worker()
    monkeypatch.setattr(unsent, "_limit", limit)
    monkeypatch.setattr(unsent, "_total", 1 << 20)
    words = memoryview(bytearray(8 * 3)).cast("q")
    words[giveback.UNSENT] = held
    monkeypatch.setattr(giveback, "_waiting", words)
    small_buffer(w)
    info = w.info(may_park=may_park)
    thread, got = reader(w.client)
    serving(info, unsent.send, w.conn, LONG)
    assert info.unsent is None
    w.conn.shutdown(socket.SHUT_WR)
    thread.join(10)
    assert bytes(got) == LONG and w.nothing_parked()


# -- the async side --------------------------------------------------------------------------
def test_park_async_sends_what_was_written_then_parks_with_what_was_buffered(
    make_worker,
) -> None:
    w = make_worker()
    info = w.info()

    async def handler() -> bool:
        set_current(info)
        reader, writer = await asyncio.open_connection(sock=w.conn.dup())
        reader.feed_data(b" the next request, pipelined")
        writer.write(b"the response")
        return await giveback.park_async(reader, writer, b"carried:")

    assert contextvars.copy_context().run(asyncio.run, handler()) is True
    assert info.parked
    assert w.client.recv(100) == b"the response"  # sent whole before the connection left
    message, fd = w.parked()
    # unread bytes: the dispatcher hands it on at once, not when the client sends more
    assert message == wire.Park(42, message.started, b"carried: the next request, pipelined", True)
    w.client.sendall(b"more")
    assert os.read(fd, 100) == b"more"


@pytest.mark.parametrize("has_read", [True, False])
def test_read_parks_an_idle_async_connection(make_worker, has_read: bool) -> None:
    w = make_worker(park_after=0.001)
    info = w.info()
    info.has_read = has_read  # False: the first read, on a client yet to speak (as receive)

    async def handler() -> bytes:
        set_current(info)
        reader, writer = await asyncio.open_connection(sock=w.conn.dup())
        return await giveback.read(reader, writer)

    with pytest.raises(giveback.Parked):
        contextvars.copy_context().run(asyncio.run, handler())
    message, _ = w.parked()
    assert message == wire.Park(42, 0, b"", silent=not has_read)


# -- READY names the listeners whose clients speak first -------------------------------------
def test_ready_names_the_listeners_whose_handler_waits_for_the_client(make_worker) -> None:
    def banner(conn: socket.socket, info: ConnectionInfo) -> None:
        conn.sendall(b"220 ready\r\n")

    w = make_worker(handler=banner)
    w.worker.spec = WorkerSpec(1, {"smtp": "m:banner", "web": "m:http"}, "m:banner", 1)
    w.worker.handlers = {None: banner, "web": handlers.http_hello}
    w.worker.ready(3)
    data, fds = channel.receive(w.dispatcher)
    assert wire.decode_to_dispatcher(data, len(fds)) == wire.Ready(3, frozenset({"web"}))


def test_the_built_in_handlers_declare_that_their_clients_speak_first() -> None:
    for name in ("echo", "echo_async", "http_hello", "http_hello_async"):
        assert giveback.speaks_first(getattr(handlers, name)), name


# -- a sync worker does not look first where the handler's first read is receive() ------------
@pytest.mark.parametrize("solo", [True, False])
def test_a_sync_worker_looks_at_a_new_connection_only_for_a_handler_that_reads_otherwise(
    make_worker, solo: bool
) -> None:
    @giveback.client_speaks_first
    def own(conn: socket.socket, info: ConnectionInfo) -> None:
        conn.recv(100)

    # A user's wrapper of a built-in handler that reads first itself: functools.wraps copies
    # the function's attributes, and must not carry over what its first read is.
    @functools.wraps(handlers.echo)
    def wrapped(conn: socket.socket, info: ConnectionInfo) -> None:
        if conn.recv(100) == b"token\n":
            handlers.echo(conn, info)

    @dataclasses.dataclass  # eq without frozen: an object that cannot be hashed
    class Greeter:
        greeting: bytes

        def __call__(self, conn: socket.socket, info: ConnectionInfo) -> None:
            conn.sendall(self.greeting + conn.recv(100))

    table = {
        "echo": handlers.echo,
        "wsgi": wsgi.make_handler(lambda environ, start_response: []),
        "own": own,
        "wrapped": wrapped,
        "greeter": giveback.client_speaks_first(Greeter(b"hi ")),
    }
    targets = {name: f"m:{name}" for name in table}
    w = make_worker()
    w.worker.spec = WorkerSpec(1, targets, None, 1, handoff=dict.fromkeys(targets))
    w.worker.handlers = table
    w.worker.ready(2, solo=solo)  # solo: a sync worker's READY
    channel.receive(w.dispatcher)
    looks = {
        name for name in targets if w.worker.may_be_silent(wire.Handoff(1, name, "", may_park=True))
    }
    # An async worker's look waits without holding a thread: it looks at all of them.
    assert looks == ({"own", "wrapped", "greeter"} if solo else set(targets))
    assert giveback._unlooked == ({"echo", "wsgi"} if solo else frozenset())


@pytest.mark.parametrize("how", ["end", "reset"])
def test_receive_gives_back_a_connection_that_ends_without_a_byte_where_none_looked(
    make_worker, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(giveback, "_unlooked", frozenset({"web"}))
    w = make_worker(tcp=True)
    if how == "reset":  # RST: a load balancer's health check, often
        w.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.client.close()
    else:
        w.client.shutdown(socket.SHUT_WR)
    with pytest.raises(giveback.Parked):
        serving(w.info(), giveback.receive, w.conn)
    message, _ = w.parked()
    # As the worker's look gives it back: the dispatcher closes it, and nobody served it.
    assert message == wire.Park(42, 0, b"", silent=True)


def test_a_connection_handed_over_with_a_whole_request_has_spoken(
    make_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its request came with the handoff (`carried`): no end or wait after it is a silent
    new connection's, whether or not the worker looked."""
    monkeypatch.setattr(giveback, "_unlooked", frozenset({"web"}))
    w = make_worker()
    w.client.shutdown(socket.SHUT_WR)
    info = w.info()
    info.carried = b"GET / HTTP/1.1\r\n\r\n"  # served from there, then the next read
    assert serving(info, giveback.receive, w.conn) == b""  # the handler's end: served
    w = make_worker(park_after=0.001)
    info = w.info()
    info.carried = b"GET / HTTP/1.1\r\n\r\n"
    with pytest.raises(giveback.Parked):  # nothing more: idle, not a new connection
        serving(info, giveback.receive, w.conn)
    message, _ = w.parked()
    assert message == wire.Park(42, 0, b"", silent=False)


def test_receive_returns_the_end_where_the_worker_looked_or_after_the_first_bytes(
    make_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = make_worker()
    w.client.shutdown(socket.SHUT_WR)
    assert serving(w.info(), giveback.receive, w.conn) == b""  # looked at: "web" is not unlooked
    monkeypatch.setattr(giveback, "_unlooked", frozenset({"web"}))
    w = make_worker()
    w.client.sendall(b"ping")
    w.client.shutdown(socket.SHUT_WR)
    info = w.info()
    assert serving(info, giveback.receive, w.conn) == b"ping"
    assert serving(info, giveback.receive, w.conn) == b""  # an echo connection's end
    assert w.nothing_parked()


# -- handlers.next_request -------------------------------------------------------------------
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize(
    ("buf", "keep", "used"),
    [
        (GET, True, len(GET)),
        (POST, True, len(POST)),
        (GET + GET[:5], True, len(GET)),  # pipelined: the next request's bytes stay
        (POST + GET, True, len(POST)),
        (b"GET / HTTP/1.0\r\n\r\n", False, 18),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False, 37),
    ],
)
def test_a_whole_request(buf: bytes, keep: bool, used: int) -> None:
    response, keep_open, took = handlers.next_request(buf)
    assert (keep_open, took) == (keep, used)
    assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(b"hello\n")


@pytest.mark.parametrize("buf", [b"", b"GET", GET[:-1], POST[:-1], b"x" * handlers.MAX_HEAD])
def test_an_incomplete_request(buf: bytes) -> None:
    assert handlers.next_request(buf) is None


@pytest.mark.parametrize(
    "buf",
    [
        b"GET /\r\n\r\n",
        b"GET / SMTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"x" * (handlers.MAX_HEAD + 1),  # no end of head in sight
        b"GET / HTTP/1.1\r\nX: " + b"y" * handlers.MAX_HEAD,
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nContent-Length: \xef\xbc\x95\r\n\r\n",  # a fullwidth 5
        b"GET / HTTP/1.1\nHost: x\n\n",  # bare LFs: was never answered, until its timeout
    ],
)
def test_a_bad_request(buf: bytes) -> None:
    with pytest.raises(handlers.BadRequest) as err:
        handlers.next_request(buf)
    assert err.value.response.startswith(b"HTTP/1.1 400 ")


def test_a_body_the_hello_handler_would_buffer_past_its_limit_is_refused_at_once() -> None:
    head = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n"
    assert handlers.next_request(head % handlers.MAX_BODY) is None  # read, then skipped
    for length in (b"%d" % (handlers.MAX_BODY + 1), b"9" * 5000):  # past int()'s 4,300 digits
        with pytest.raises(handlers.TooLarge) as err:
            handlers.next_request(head.replace(b"%d", length))
        assert err.value.response.startswith(b"HTTP/1.1 413 ")
    assert handlers.next_request(head.replace(b"%d", b"0" * 5000) + b"x") is not None  # 0


def test_the_same_length_twice_is_one_length() -> None:
    buf = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    assert handlers.next_request(buf)[2] == len(buf)


# -- a request's clock survives being handed over ---------------------------------------------
def run_handed_over(w: Worker, handler: Callable, info: ConnectionInfo) -> None:
    """Serve a connection the dispatcher handed over with carried bytes, as a worker does
    (sync: the handler reads info.carried; async: the worker feeds it to the reader)."""
    set_current(info)
    if not asyncio.iscoroutinefunction(handler):
        handler(w.conn, info)
        return

    async def serve() -> None:
        reader, writer = await asyncio.open_connection(sock=w.conn.dup())
        reader.feed_data(info.carried)
        await handler(reader, writer)

    asyncio.run(serve())


@pytest.mark.parametrize(
    "handler",
    [
        handlers.http_hello,
        handlers.http_hello_async,
    ],
)
def test_a_slow_request_handed_over_again_keeps_its_start(make_worker, handler) -> None:
    """A slowloris request parked, handed over when one more byte came, and parked again:
    request_timeout counts from its first byte, so `started` must not move."""
    w = make_worker(park_after=0.001)
    started = time.monotonic_ns() - 20 * 10**9  # began 20 s ago
    info = ConnectionInfo(9, "web", "peer", carried=b"GET / HT", request_started=started)
    info.may_park = True
    w.client.sendall(b"T")  # the byte that woke it in the dispatcher
    with pytest.raises(giveback.Parked):
        contextvars.copy_context().run(run_handed_over, w, handler, info)
    message, _ = w.parked()
    assert message == wire.Park(9, started, b"GET / HTT")


def test_the_handler_api_is_importable_from_sockpool() -> None:
    import sockpool

    for name in ("client_speaks_first", "park", "receive", "park_async", "read", "Parked"):
        assert getattr(sockpool, name) is getattr(giveback, name)
