"""Back-pressure: while the workers have no room, new connections wait in the kernel's backlog,
and their coming wakes nobody. The dispatcher accepts again on every turn that could have
made room, so the wake-up would only be a turn for nothing, most times one comes under load.

A real listener, the loop's real epoll and a real worker channel; no processes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import a_file
from sockpool import channel, giveback, pull, wire
from sockpool.admission import Admission
from sockpool.config import Config
from sockpool.eventloop import Loop
from sockpool.hotpath import FULL_STEAL_AFTER, STEAL_AFTER, STUCK_AFTER, HotPath
from sockpool.listeners import Listener
from sockpool.parking import FIRST_BYTE
from sockpool.process import WorkerProcess
from sockpool.states import Worker, WorkerState

PID = 1
LATER = 100.0  # seconds: the loop's own next timer, in tests of how long it waits


class Service:
    """A dispatcher's loop and hot path over one listener and one worker of capacity 1 (or
    more: an async worker's)."""

    def __init__(self, capacity: int = 1) -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        self.address = sock.getsockname()
        self.listener = Listener("main", sock, "127.0.0.1")
        self.loop = Loop()
        ours, self.worker_end = channel.pair()
        ours.setblocking(False)
        w = Worker(PID, 1, WorkerState.READY, capacity)
        self.proc = WorkerProcess(PID, ours, self.worker_end, os.memfd_create("stacks"), w)
        routes = [self.proc]
        self.hot = HotPath(
            [self.listener], Admission(Config()), {PID: self.proc}, lambda: routes,
            lambda p: None, self.loop.epoll,
        )  # fmt: skip
        self.hot.mute = self.loop.mute  # as the dispatcher wires it
        self.hot.routes_changed(routes)  # as its first look at the routes does
        sock.setblocking(False)
        self.loop.watch(sock, self._readable, edge=True)
        self.loop.watch(self.hot.done_r, self.hot.done_readable)
        self.wakes = 0
        self.clients: list[socket.socket] = []

    def _readable(self) -> None:
        """The listener's callback, as the dispatcher's, counting."""
        self.wakes += 1
        self.hot.backlogged.add(self.listener)

    def connect(self) -> None:
        """A client connects: on loopback its handshake is done when connect() returns."""
        self.clients.append(socket.create_connection(self.address))

    def woken(self) -> bool:
        """Whether the loop is woken now (poll without waiting), for the listener."""
        wakes = self.wakes
        self.loop.poll(0)
        return self.wakes > wakes

    def woken_by_completions(self) -> bool:
        """Whether the loop is woken now for the done pipe (poll without waiting)."""
        self.hot.done = False
        self.loop.poll(0)
        return self.hot.done

    def hold_one_back(self) -> None:
        """A first client fills the worker; a second waits in the backlog, and its coming
        wakes nobody."""
        self.connect()
        assert self.woken()
        self.turn()
        assert list(self.proc.w.handed) == [1]  # the worker is full now
        self.connect()
        assert not self.woken()

    def turn(self, now: float = 1.0) -> float:
        """One turn of Dispatcher.run's loop without its wait: what woke it, the turn's
        work, and before the next wait, whether completions are to wake it. Returns how
        long the loop would wait then, with no timer of its own due within LATER."""
        self.loop.poll(0)
        self.hot.turn(now)
        return self.hot.timeout(now, now + LATER)

    def serve_one(self) -> None:
        """The worker takes its connection and finishes it."""
        message = channel.receive(self.worker_end, channel.DONTWAIT)
        assert message is not None
        data, fds = message
        channel.close_all(fds)
        [handoff] = wire.decode_to_worker(data, len(fds))  # type: ignore[misc]
        os.write(self.hot.done_w, b"".join(wire.encode_done(PID, [handoff.conn_id])))

    def close(self) -> None:
        for c in self.clients:
            c.close()
        channel.close_all([item[1] for item in self.hot.pending])
        self.hot.parking.close_all("test")
        self.proc.close()
        self.worker_end.close()
        self.loop.close()
        self.listener.close()
        channel.close_all([self.hot.done_r, self.hot.done_w])


@pytest.fixture
def make_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], Service]]:
    """Services of a worker of a given capacity, closed after the test."""
    # The words a HotPath shares with its workers (giveback.share_waiting) are this
    # process's: a fresh pair, so a stop here does not tell later tests' workers to stop.
    monkeypatch.setattr(giveback, "_waiting", None)
    made: list[Service] = []

    def make(capacity: int) -> Service:
        made.append(Service(capacity))
        return made[-1]

    yield make
    for service in made:
        service.close()


@pytest.fixture
def service(make_service: Callable[[int], Service]) -> Service:
    return make_service(1)


def test_a_connection_that_no_worker_has_room_for_wakes_nobody(service: Service) -> None:
    service.hold_one_back()  # the second waits in the backlog, and we sleep on
    service.serve_one()  # ...until the worker has room: that turn accepts it
    service.turn()
    assert list(service.proc.w.handed) == [2]


def test_once_the_backlog_is_empty_a_new_connection_wakes_the_loop(service: Service) -> None:
    service.hold_one_back()
    service.serve_one()
    service.turn()  # takes the second
    service.serve_one()
    service.turn()  # room, and nobody left in the backlog
    assert not service.proc.w.handed and not service.hot.backlogged
    service.connect()
    assert service.woken()
    service.turn()
    assert list(service.proc.w.handed) == [3]


def test_a_stop_leaves_a_muted_listener_alone(service: Service) -> None:
    service.hold_one_back()
    assert service.hot.muted
    service.loop.unwatch(service.listener.sock)  # as the executor does at a stop
    service.hot.stop_accepting()
    assert not service.hot.muted
    service.loop.mute(service.listener.sock, False)  # no longer watched: nothing to resume
    service.serve_one()
    service.turn()  # nothing more is accepted; the second client stays in the backlog
    assert not service.proc.w.handed


def test_a_completion_while_a_connection_waits_wakes_the_loop(service: Service) -> None:
    service.hold_one_back()  # the second waits in the backlog
    service.serve_one()
    assert service.woken_by_completions()
    service.turn()
    assert list(service.proc.w.handed) == [2]


def test_a_completion_with_nothing_waiting_wakes_nobody_and_the_next_turn_counts_it(
    make_service: Callable[[int], Service],
) -> None:
    """Below saturation, a connection costs the dispatcher one wake-up (its accept), not a
    second for its completion: the next turn, whatever wakes it, reads completions first."""
    service = make_service(2)
    service.connect()
    assert service.woken()
    service.turn()  # accepts it, and finds the backlog empty: nothing waits
    assert list(service.proc.w.handed) == [1] and not service.hot.backlogged
    service.serve_one()
    assert not service.woken_by_completions()
    assert list(service.proc.w.handed) == [1]  # not heard of yet
    service.connect()  # the next connection wakes the loop
    assert service.woken()
    service.turn()
    assert list(service.proc.w.handed) == [2] and service.hot.served == 1


def test_at_a_stop_completions_wake_the_loop(make_service: Callable[[int], Service]) -> None:
    """A stop waits for the workers' connections to finish: it hears of each at once."""
    service = make_service(2)
    service.connect()
    assert service.woken()
    service.turn()
    assert not service.hot.done_watched
    service.loop.unwatch(service.listener.sock)  # as the executor does at a stop
    service.hot.stop_accepting()
    service.turn()
    service.serve_one()
    assert service.woken_by_completions()
    service.turn()
    assert not service.proc.w.handed


def test_completions_wake_the_loop_while_the_pipe_could_fill(
    make_service: Callable[[int], Service],
) -> None:
    """Unread completions wait in the pipe only while they cannot fill it: a worker writing
    to a full pipe would block."""
    service = make_service(2)
    service.hot.unwatched_max = 1  # as if the pipe held two records
    service.connect()
    assert service.woken()
    service.turn()  # the one connection in hand reaches the (lowered) limit
    assert service.hot.done_watched
    service.serve_one()
    assert service.woken_by_completions()


def one_in_hand(service: Service) -> None:
    """A client's connection goes to the worker, and the backlog is left empty."""
    service.connect()
    assert service.woken()
    service.turn()
    assert list(service.proc.w.handed) == [1] and not service.hot.backlogged


def one_queued(service: Service) -> None:
    """Two connections in the worker's hands, both sent at 1.0: a client's (1), and one
    held here that spoke (9), queued behind it."""
    one_in_hand(service)
    came_back(service, 9)
    service.turn()
    assert list(service.proc.w.handed) == [1, 9] and not service.hot.pending


def connection_fd(service: Service) -> int:
    """The descriptor of a connection that did not come through the listener (one held,
    or a worker's copy); its peer is closed with the service's clients."""
    ours, theirs = socket.socketpair()
    service.clients.append(theirs)
    return ours.detach()


def came_back(service: Service, conn_id: int) -> None:
    """A held connection spoke: it joins the queue for a worker, as unpark() queues it."""
    service.hot.pending.append((conn_id, connection_fd(service), "main", "peer", b"", 0))


def test_a_completion_while_a_connection_waits_here_for_room_wakes_the_loop(
    make_service: Callable[[int], Service],
) -> None:
    """A connection the dispatcher holds for a worker goes out on the turn that a
    completion makes room for it."""
    service = make_service(2)
    one_in_hand(service)
    came_back(service, 8)
    came_back(service, 9)
    service.turn()  # room for one: 9 waits
    assert list(service.proc.w.handed) == [1, 8] and [i[0] for i in service.hot.pending] == [9]
    service.serve_one()
    assert service.woken_by_completions()
    service.turn()
    assert list(service.proc.w.handed) == [8, 9] and not service.hot.pending


def test_a_completion_while_a_connection_is_queued_behind_another_wakes_the_loop(
    make_service: Callable[[int], Service],
) -> None:
    """A sync worker with queue_ahead holds one connection behind the one it serves: the
    loop hears of each completion at once, so that a worker gone idle can take the queued
    one (rebalance(): test_queue_ahead.py)."""
    service = make_service(2)
    service.proc.solo = True  # as a sync worker's READY says
    one_queued(service)
    service.serve_one()
    assert service.woken_by_completions()


def test_a_worker_that_served_max_requests_is_recycled(service: Service) -> None:
    """The turn that reads its last completion tells the policy, which replaces it."""
    due: list[set[int]] = []
    service.hot.recycle = lambda pids, now: due.append(pids)
    service.proc.w.max_served = 2
    for _ in range(2):
        assert due == []
        service.connect()
        assert service.woken()
        service.turn()
        service.serve_one()
        service.turn()  # reads the completion
    assert due == [{PID}]


def test_a_worker_whose_last_request_ends_in_a_park_is_recycled(service: Service) -> None:
    """A keep-alive connection given back between requests counts as served, as a closed
    one does: the worker that reaches max_requests so is replaced too."""
    due: list[set[int]] = []
    service.hot.recycle = lambda pids, now: due.append(pids)
    service.proc.w.max_served = 1
    service.connect()
    assert service.woken()
    service.turn()
    service.hot.park(service.proc, wire.Park(1, 0, b""), connection_fd(service), 1.0)
    assert due == [{PID}] and len(service.hot.parking) == 1
    service.hot.parking.close_all("test")


@pytest.mark.parametrize(
    ("rest", "file", "counted"),
    [("disk", True, 0), ("memfd", False, 5000), ("memfd", True, 5000)],
    ids=["a-file", "a-memfd", "a-memfd-flagged-file"],
)
def test_an_answers_rest_counts_against_max_unsent_total_unless_a_file_on_a_disk(
    service: Service, disk_path: Path, rest: str, file: bool, counted: int
) -> None:
    """A worker's PARK with an answer's rest: a download's file (FILE) holds none of the
    service's memory, and the workers are told so in the shared word that
    max_unsent_total reads; a memfd is memory, whatever the flag says."""
    service.connect()
    assert service.woken()
    service.turn()
    if rest == "disk":
        fd = a_file(disk_path, bytes(5000))
    else:
        fd = os.memfd_create("rest", os.MFD_CLOEXEC)
        os.write(fd, bytes(5000))
    msg = wire.Park(1, 0, b"", unsent=True, close=True, span=(0, 5000), file=file)
    service.hot.park(service.proc, msg, connection_fd(service), 1.0, fd)
    assert service.hot.waiting[giveback.UNSENT] == counted
    service.hot.parking.close_all("test")
    assert service.hot.waiting[giveback.UNSENT] == 0


def test_one_of_n_dispatchers_at_its_share_defers_while_another_has_room() -> None:
    """Each publishes whether its share of max_connections is full; one at its share
    refuses only once every other one says so too."""
    words = memoryview(bytearray(8 * 3)).cast("q")
    a, b, c = (Admission(Config(max_connections=2)) for _ in range(3))
    for index, admission in enumerate((a, b, c)):
        admission.join(words, index)
    a.publish(2)
    assert a.room(2) <= 0 and a.elsewhere()  # b and c have room
    b.publish(2)
    assert a.elsewhere()  # c still has
    c.publish(5)
    assert not a.elsewhere()  # all full: a refuses
    b.publish(1)
    assert a.elsewhere()
    alone = Admission(Config(max_connections=2))
    assert not alone.elsewhere()  # one dispatcher: nobody else to leave them to


def test_the_loop_does_not_wait_while_a_backlog_holds_connections_a_worker_has_room_for(
    service: Service,
) -> None:
    service.connect()
    assert service.woken()  # the backlog has a connection: the next turn takes it
    assert service.hot.timeout(1.0, 1.0 + LATER) == 0.0
    service.turn()
    assert list(service.proc.w.handed) == [1]


def test_a_connection_left_in_the_backlog_wakes_the_loop_when_it_counts_as_waiting(
    service: Service,
) -> None:
    """Back-pressure leaves it in the backlog and its coming wakes nobody: the loop wakes
    once it has waited STUCK_AFTER, to tell the workers a connection waits (giveback.py)."""
    service.hold_one_back()  # the last turn, and accept, was at 1.0
    assert service.hot.timeout(1.004, 1.004 + LATER) == pytest.approx(STUCK_AFTER - 0.004)
    later = 1.0 + STUCK_AFTER
    # It is waiting now, and said so: nothing more to wake for.
    assert service.turn(later) == pytest.approx(LATER)
    assert service.hot.waiting[giveback.WAITING] == 1


def test_after_an_accept_error_the_loop_waits_until_accepting_resumes(service: Service) -> None:
    """Not a turn at once: accept() would do nothing until then, and the loop would spin."""
    service.connect()
    assert service.woken()
    service.hot.pause.until = 1.5  # as AcceptPause sets it after EMFILE
    assert service.hot.timeout(1.0, 1.0 + LATER) == pytest.approx(0.5)
    service.hot.backlogged.clear()  # with nothing left to accept, nothing to wake for
    assert service.hot.timeout(1.0, 1.0 + LATER) == pytest.approx(LATER)


def test_room_that_connections_held_here_will_take_is_not_room_for_the_backlog(
    make_service: Callable[[int], Service],
) -> None:
    """As accept() counts it: the workers' room less the connections waiting here."""
    service = make_service(2)
    one_in_hand(service)  # room for one more, at 1.0
    came_back(service, 8)  # a held connection spoke: that room is its
    service.connect()
    assert service.woken()
    # Not at once: until a handoff may have been left unread (STEAL_AFTER, the first due).
    assert service.hot.timeout(1.0, 1.0 + LATER) == pytest.approx(STEAL_AFTER)
    service.turn()
    assert list(service.proc.w.handed) == [1, 8]  # the new one waits in the backlog


def test_with_nothing_to_do_the_loop_waits_for_its_own_timers(service: Service) -> None:
    assert service.turn() == pytest.approx(LATER)  # the backlog found empty, nothing in hand
    assert service.hot.timeout(1.0, 0.5) == 0.0  # a timer overdue: at once, never for ever


def test_a_held_connections_deadline_ends_the_wait(service: Service) -> None:
    service.turn()  # nothing in the backlog
    item = (9, connection_fd(service), "main", "peer", b"", 0)
    service.hot.parking.hold(item, FIRST_BYTE, 1.3)  # closed if silent until then
    assert service.hot.timeout(1.0, 1.0 + LATER) == pytest.approx(0.3)


def test_a_handoff_the_worker_may_leave_unread_ends_the_wait(
    make_service: Callable[[int], Service],
) -> None:
    """A worker with room for one queued behind its current one may leave it unread behind
    a long request: the loop looks again after STEAL_AFTER (rebalance())."""
    service = make_service(2)
    one_in_hand(service)  # sent at 1.0
    assert service.hot.timeout(1.0, 1.0 + LATER) == pytest.approx(STEAL_AFTER)


@pytest.mark.parametrize(
    ("capacity", "wait"),
    [(2, FULL_STEAL_AFTER), (3, STEAL_AFTER)],
    ids=["full: until a completion", "room for one more: until a read-back"],
)
def test_a_sync_worker_with_one_queued_is_looked_at_for_it_as_its_room_says(
    make_service: Callable[[int], Service], capacity: int, wait: float
) -> None:
    """A worker with no room: a handoff read back could go to no worker sooner, so the loop
    waits for the completion that makes room, which wakes it (test_a_completion_while_a_
    connection_is_queued_behind_another_wakes_the_loop), or FULL_STEAL_AFTER. With room
    for one more, what is read back could go there now: STEAL_AFTER."""
    service = make_service(capacity)
    service.proc.solo = True  # as a sync worker's READY says
    one_queued(service)
    assert service.hot.done_watched
    assert service.hot.timeout(1.0, 1.0 + LATER) == pytest.approx(wait)


def test_a_full_worker_whose_completions_wake_nobody_is_looked_at_after_steal_after(
    make_service: Callable[[int], Service],
) -> None:
    """An async worker with nothing waiting for it: its completions are read on the next
    turn, not woken for, so no completion would end the wait: STEAL_AFTER does."""
    service = make_service(2)
    one_queued(service)
    assert not service.hot.done_watched
    assert service.hot.timeout(1.0, 1.0 + LATER) == pytest.approx(STEAL_AFTER)


def test_at_a_stop_the_wait_ends_when_answers_still_going_out_must_end(
    service: Service,
) -> None:
    service.turn()
    service.hot.stop_accepting()  # they have graceful_timeout from now
    service.hot.parking.unsent[-1] = None  # type: ignore[assignment] # one still going out
    try:
        now = service.hot.send_until - 2.0
        assert service.hot.timeout(now, now + LATER) == pytest.approx(2.0)
    finally:
        del service.hot.parking.unsent[-1]


def test_with_pull_the_loop_looks_again_while_connections_wait_for_a_loop(
    service: Service,
) -> None:
    """Should a loop's wake-up record be missed (pull.py), connections waiting here are
    looked at again after pull.RECHECK."""
    service.turn()
    service.hot.pull = True  # as routes_changed() sets it when every worker pulls
    came_back(service, 8)
    assert service.hot.timeout(1.0, 1.0 + LATER) == pytest.approx(pull.RECHECK)
