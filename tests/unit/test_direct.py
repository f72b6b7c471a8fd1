"""`accept = workers` (direct.py): a sync worker's own accepts, its seat, and what the
dispatcher makes of them. Real listening sockets, real channels; no processes: the
"worker" is an Acceptor in this process, or the far end of a fake worker's channel."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterator

import pytest
from fakepool import T0, Pool

from sockpool import channel, direct, giveback, handlers, wire, worker
from sockpool.config import Config
from sockpool.direct import DIRECT, Acceptor, Seat
from sockpool.listeners import Listener
from sockpool.spec import WorkerSpec


@pytest.fixture
def listener() -> Iterator[Listener]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)  # as the dispatcher makes it, for every process that shares it
    lst = Listener("main", sock, "127.0.0.1")
    yield lst
    sock.close()


@pytest.fixture
def acceptor(listener: Listener, pair: tuple[socket.socket, socket.socket]) -> Iterator[Acceptor]:
    theirs = pair[1]  # the worker's end of its channel (conftest.py)
    seat = Seat()
    fd = os.dup(listener.sock.fileno())  # the worker's copy, as a fork leaves it
    made = Acceptor(theirs, (("main", fd, listener.kind),), seat)
    yield made
    made.turn(False)
    made.epoll.close()
    for _, sock, _, _ in made.listeners:
        sock.close()
    seat.close()


def client(listener: Listener) -> socket.socket:
    return socket.create_connection(listener.sock.getsockname())


def test_a_seat_says_what_its_worker_holds_and_has_served() -> None:
    seat = Seat()
    try:
        assert seat.read() == (0, 0, 0.0, 0, "")
        before = time.monotonic()
        seat.took(DIRECT + 7, 1, "10.0.0.1:5")
        served, conn, since, listener, peer = seat.read()
        assert (served, conn, listener, peer) == (0, DIRECT + 7, 1, "10.0.0.1:5")
        assert before <= since <= time.monotonic()  # one clock for every process
        seat.done(served=False)  # given back: the PARK counts it
        assert seat.read() == (0, 0, 0.0, 0, "")
        seat.took(DIRECT + 8, 0, "x" * 1000)
        assert seat.read()[4] == "x" * 256  # a peer is cut, never overruns the page
        seat.done(served=True)
        assert seat.read() == (1, 0, 0.0, 0, "")
    finally:
        seat.close()


def test_a_worker_accepts_only_while_told_to_and_not_once_the_service_stops(
    acceptor: Acceptor, listener: Listener
) -> None:
    with client(listener) as c:
        assert acceptor.take() is None  # until the dispatcher's ACCEPT
        acceptor.turn(True)
        words = giveback.share_waiting()
        words[giveback.STOPPING] = 1
        try:
            assert acceptor.take() is None  # a stop leaves the backlog to systemd
        finally:
            words[giveback.STOPPING] = 0
        taken = acceptor.take()
        assert taken is not None
        handoff, conn = taken
        with conn:
            assert handoff.conn_id > DIRECT and handoff.listener == "main" and handoff.may_park
            assert handoff.peer == "{}:{}".format(*c.getsockname())
            assert acceptor.seat.read()[1] == handoff.conn_id
            conn.sendall(b"hi")
            assert c.recv(2) == b"hi"
        assert acceptor.take() is None  # nothing more waits


def test_an_idle_worker_waits_on_its_listeners_only_while_it_may_take_from_them(
    acceptor: Acceptor, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct, "RECHECK", 0.01)
    with client(listener):
        acceptor.wait()  # off: the backlog it may not take must not wake it in a loop
        assert not acceptor.armed
        acceptor.turn(True)
        acceptor.wait()
        assert acceptor.armed
        taken = acceptor.take()
        assert taken is not None
        taken[1].close()
        acceptor.turn(False)
        acceptor.wait()
        assert not acceptor.armed


def test_out_of_descriptors_a_worker_pauses_and_the_connection_waits_for_it(
    acceptor: Acceptor, listener: Listener
) -> None:
    acceptor.turn(True)
    with client(listener):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        filling: list[int] = []
        try:
            with contextlib.suppress(OSError):  # every free descriptor below the limit, taken
                while True:
                    filling.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            assert acceptor.take() is None
        finally:
            channel.close_all(filling)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert acceptor.pause.until > time.monotonic()
        assert acceptor.take() is None  # paused, not retrying in a loop
        acceptor.pause.until = 0.0
        taken = acceptor.take()
        assert taken is not None  # it waited in the backlog: nothing lost
        taken[1].close()


def test_a_backlog_no_idle_worker_took_ends_a_keep_alive_clients_turn(
    acceptor: Acceptor, listener: Listener
) -> None:
    acceptor.turn(True)
    assert not giveback.others_waiting()
    with client(listener):
        assert giveback.others_waiting()
        acceptor.turn(False)  # not accepting: that backlog is not its to make room for
        assert not giveback.others_waiting()


@pytest.fixture
def pool(listener: Listener) -> Iterator[Pool]:
    made = Pool([2, 2], listeners=[listener])
    yield made
    made.close()


def told(pool: Pool, pid: int) -> list[wire.Accept]:
    """The ACCEPTs in a worker's channel, read."""
    said = []
    while True:
        try:
            message = channel.receive(pool.ends[pid], channel.DONTWAIT)
        except BlockingIOError:
            return said
        assert message is not None
        said.append(wire.decode_to_worker(*message[:1], 0))


def test_workers_that_take_work_are_told_to_accept_and_the_listener_is_theirs(
    pool: Pool, listener: Listener
) -> None:
    assert told(pool, 1) == [wire.Accept(True)] and told(pool, 2) == [wire.Accept(True)]
    assert pool.hot.direct == {listener} and listener not in pool.hot.backlogged
    pool.hot.routes_changed([pool.procs[2]])  # worker 1 retired or recycled
    assert told(pool, 1) == [wire.Accept(False)] and told(pool, 2) == []
    pool.hot.routes_changed([])  # a stop: none accepts, the listener is the dispatcher's
    assert told(pool, 2) == [wire.Accept(False)] and pool.hot.direct == set()


def test_what_a_worker_accepted_counts_as_in_its_hands_until_its_seat_says_done(
    pool: Pool,
) -> None:
    p = pool.procs[1]
    assert p.seat is not None
    p.seat.took(DIRECT + 1, 0, "10.0.0.1:5")
    pool.hot.catch_up(T0)
    sent, name, peer = p.w.handed[DIRECT + 1]
    assert (name, peer) == ("main", "10.0.0.1:5") and sent <= time.monotonic()
    assert pool.hot.busy() == 1  # STATUS, room, the hang watch
    p.seat.done(served=True)
    pool.hot.catch_up(T0 + 0.01)
    assert p.w.handed == {} and (p.w.served, pool.hot.served) == (1, 1)


def test_a_worker_that_accepted_its_max_requests_is_recycled(pool: Pool) -> None:
    recycled: list[set[int]] = []
    pool.hot.recycle = lambda due, now: recycled.append(set(due))
    p = pool.procs[2]
    assert p.seat is not None
    p.w.max_served = 2
    for n in range(3):  # three between two reads: past the limit, not on it
        p.seat.took(DIRECT + n, 0, "peer")
        p.seat.done(served=True)
    pool.hot.read_seats(T0)
    assert recycled == [{2}]
    pool.hot.read_seats(T0 + 0.1)
    assert recycled == [{2}]  # once


@pytest.mark.parametrize("seen", [False, True])
@pytest.mark.parametrize("silent", [False, True])
def test_a_connection_a_worker_accepted_and_gave_back_is_held_under_its_own_id(
    pool: Pool, seen: bool, silent: bool
) -> None:
    p = pool.procs[1]
    assert p.seat is not None
    p.seat.took(DIRECT + 5, 0, "10.0.0.1:5")
    if seen:  # a read of its seat came between its accept and its PARK
        pool.hot.catch_up(T0)
    p.seat.done(served=False)
    a, b = socket.socketpair()
    with a:
        park = wire.Park(DIRECT + 5, 0, b"", silent=silent, listener="main", peer="10.0.0.1:5")
        pool.hot.park(p, park, b.detach(), T0 + 0.01)
        pool.hot.catch_up(T0 + 0.02)
        assert p.w.handed == {} and p.w.served == (not silent)
        [(held, _, _)] = pool.hot.parking.held.values()
        assert held[0] == DIRECT + 5 and held[2:4] == ("main", "10.0.0.1:5")


def test_a_worker_that_dies_with_a_connection_it_accepted_cut_it(pool: Pool) -> None:
    p = pool.procs[2]
    assert p.seat is not None
    p.seat.took(DIRECT + 3, 0, "peer")  # not yet read: it dies between two turns
    assert pool.hot.recover(p) == 1


def test_each_listener_is_tried_first_in_turn_so_none_starves_another(
    acceptor: Acceptor, listener: Listener
) -> None:
    other = socket.create_server(("127.0.0.1", 0))
    other.setblocking(False)
    second = Listener("admin", other, "127.0.0.1")
    fd = os.dup(other.fileno())
    acceptor.listeners.append(("admin", socket.socket(*second.kind, fileno=fd), str, second.kind))
    clients = [client(listener) for _ in range(3)] + [client(second) for _ in range(3)]
    try:
        acceptor.turn(True)
        names = []
        for _ in range(4):  # both backlogs hold three: a busy one must not go first each time
            taken = acceptor.take()
            assert taken is not None
            names.append(taken[0].listener)
            taken[1].close()
        assert names == ["main", "admin", "main", "admin"]
    finally:
        for c in clients:
            c.close()
        other.close()


# -- the worker's side, in this process: a SyncWorker over a real channel ------------------


@pytest.fixture
def sync_worker(
    acceptor: Acceptor, pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> tuple[worker.SyncWorker, socket.socket, Acceptor]:
    """(the worker, the dispatcher's end of its channel, its acceptor): told to accept."""
    monkeypatch.setattr(giveback, "_send", None)  # _Base sets them for its process
    monkeypatch.setattr(giveback, "_park_after", 0.0)
    made = worker.SyncWorker(pair[1], {None: handlers.echo}, WorkerSpec(1, {}, None, 1), -1)
    made.acceptor = acceptor
    acceptor.turn(True)
    return made, pair[0], acceptor


def test_a_worker_woken_for_a_new_connection_that_takes_a_handoff_first_passes_it_on(
    sync_worker: tuple[worker.SyncWorker, socket.socket, Acceptor], listener: Listener
) -> None:
    w, dispatcher, acceptor = sync_worker
    a, b = socket.socketpair()
    with client(listener) as new, a:
        new.sendall(b"new")
        channel.send_fd(dispatcher, wire.encode_one(7, "main", "peer", b"", 0, True), b.fileno())
        b.close()
        acceptor.wait()  # both are there: the channel, and the listener it was woken for
        assert acceptor.woken
        [(handoff, conn)] = w._next_direct(acceptor)
        conn.close()
        assert handoff.conn_id == 7  # the handoff first, as ever
        data, fds = channel.receive(dispatcher)
        channel.close_all(fds)
        park = wire.decode_to_dispatcher(data, len(fds))
        # and the new one went to the dispatcher at once, unserved, for another worker
        assert isinstance(park, wire.Park) and park.listener == "main"
        assert park.ready and park.silent and park.conn_id > DIRECT
        assert acceptor.seat.read()[1] == 0 and w.accepted is None


def test_a_park_that_fails_leaves_the_connection_with_the_worker_that_accepted_it(
    sync_worker: tuple[worker.SyncWorker, socket.socket, Acceptor], listener: Listener
) -> None:
    w, _, acceptor = sync_worker
    with client(listener):
        taken = acceptor.take()
        assert taken is not None
        handoff, conn = taken
        w.accepted = handoff
        since = acceptor.seat.read()[2]
        with conn, pytest.raises(wire.WireError):  # over MAX_CARRY: giveback.park() says False
            w.give_back(conn.fileno(), handoff.conn_id, 0, b"x" * (wire.MAX_CARRY + 1))
        # still its own, to serve and to count, and its next PARK names it
        assert acceptor.seat.read()[1] == handoff.conn_id and w.accepted is handoff
        with conn, pytest.raises(OSError):  # a channel that is gone (EBADF here)
            w.chan.close()
            w.give_back(conn.fileno(), handoff.conn_id, 0, b"")
        served, held, again, _, _ = acceptor.seat.read()
        assert (served, held, again) == (0, handoff.conn_id, since)  # its hang clock runs on


def test_after_a_reload_workers_that_accept_keep_linux_deferring_silent_clients(
    pool: Pool, listener: Listener
) -> None:
    def deferred() -> int:
        return listener.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)

    routes = list(pool.procs.values())
    pool.hot.deferred = {listener}  # its clients speak first
    pool.hot.routes_changed(routes[:1])
    assert deferred() > 0
    pool.hot.configure(Config())  # a reload's
    assert deferred() > 0
    pool.hot.routes_changed([])  # none accepts: systemd's setting again
    assert deferred() == 0


def test_a_backlog_the_workers_took_over_is_no_longer_waited_on(
    listener: Listener,
) -> None:
    made = Pool([2, 2])  # routes are set before the listener is theirs, as at a start
    try:
        made.hot.listeners.append(listener)
        made.hot.backlogged.add(listener)
        made.hot.accept(T0)  # nothing to accept: no room either, at first
        made.hot.stuck = True  # as accept() finds once STUCK_AFTER passed
        made.hot.publish_waiting()
        assert made.hot.waiting[giveback.WAITING] == 1
        seated = Pool([2, 2], listeners=[listener])
        try:
            made.hot.routes_changed(list(seated.procs.values()))  # they accept now
            assert made.hot.direct == {listener}
            assert made.hot.waiting[giveback.WAITING] == 0  # keep-alive turns go on
        finally:
            seated.close()
    finally:
        made.close()


def test_once_the_last_seat_is_gone_the_loop_waits_for_no_seat(pool: Pool) -> None:
    """With max_requests the seats are read on a timer: when the last seat goes (an async
    READY closes it) between a read and the next, the timer must go with it."""
    pool.hot.max_requests = 100
    pool.hot.catch_up(T0)  # a read: the next is due READ_EVERY on
    for p in pool.procs.values():
        assert p.seat is not None
        p.seat.close()
        p.seat = None
    pool.hot.routes_changed(list(pool.procs.values()))  # before the next turn's read
    pool.hot.catch_up(T0 + 1)
    assert pool.hot.timeout(T0 + 60, T0 + 120) == pytest.approx(60)  # no spin


def test_near_the_descriptor_limit_what_a_worker_accepts_it_keeps(
    acceptor: Acceptor, listener: Listener, pool: Pool
) -> None:
    acceptor.turn(True)
    pool.hot.nofile = 0  # RLIMIT_NOFILE as read: no room for one more
    pool.hot.turn(T0)  # no backlog of the dispatcher's: its turn looks all the same
    assert not pool.hot.may_park
    with client(listener):
        taken = acceptor.take()
        assert taken is not None
        taken[1].close()
        assert not taken[0].may_park  # as a HANDOFF without MAY_PARK says
    pool.hot.nofile = 1 << 20
    pool.hot.turn(T0 + 1)
    assert pool.hot.may_park and giveback.parking()
