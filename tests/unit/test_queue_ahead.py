"""Queue-ahead: a sync worker holds one connection queued behind the one it serves, and the
dispatcher moves that one to a worker with room when it waits behind a long request.

Real channels (SOCK_SEQPACKET socketpairs) and real descriptors; no processes: the "worker"
is the far end of its channel, read (or not) by the test.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from sockpool import channel, wire
from sockpool.admission import Admission
from sockpool.config import Config
from sockpool.hotpath import STEAL_AFTER, HotPath
from sockpool.process import WorkerProcess
from sockpool.states import Worker, WorkerState

SOLO = 2  # a sync worker's capacity with queue_ahead = 1: one served, one queued


class Pool:
    """HotPath over fake workers: each a real channel whose far end the test reads."""

    def __init__(self, capacities: list[int], solo: bool = True) -> None:
        self.procs: dict[int, WorkerProcess] = {}
        self.ends: dict[int, socket.socket] = {}
        for pid, capacity in enumerate(capacities, start=1):
            ours, theirs = channel.pair()
            ours.setblocking(False)
            w = Worker(pid, 1, WorkerState.READY, capacity)
            self.procs[pid] = WorkerProcess(pid, ours, theirs, os.memfd_create("stacks"), w)
            self.procs[pid].solo = solo  # as its READY says
            self.ends[pid] = theirs
        routes = list(self.procs.values())
        self.hot = HotPath([], Admission(Config()), self.procs, lambda: routes, self.broken)
        self.hot.routes_changed(routes)  # as the dispatcher does when it rebuilds the routes
        self.hot.rebalance(0.0)  # and the loop's turn just after: nothing queued yet
        self.broken_ones: list[int] = []

    def broken(self, p: WorkerProcess) -> None:
        self.broken_ones.append(p.pid)

    def accept(self, conn_id: int, now: float) -> None:
        """A connection, as the accept loop would queue it, then dispatched."""
        fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self.hot.pending.append((conn_id, fd, "main", "peer", b"", 0))
        self.hot.dispatch(now)

    def take(self, pid: int) -> list[int]:
        """The worker reads one message: the conn_ids it got (their descriptors closed)."""
        message = channel.receive(self.ends[pid], channel.DONTWAIT)
        assert message is not None
        data, fds = message
        channel.close_all(fds)
        handoffs = wire.decode_to_worker(data, len(fds))
        assert isinstance(handoffs, list)
        return [h.conn_id for h in handoffs]

    def finish(self, pid: int, conn_id: int, now: float) -> None:
        os.write(self.hot.done_w, b"".join(wire.encode_done(pid, [conn_id])))
        self.hot.completed(now)

    def handed(self, pid: int) -> list[int]:
        return list(self.procs[pid].w.handed)

    def close(self) -> None:
        for p in self.procs.values():
            p.close()  # and with the channels, what is still queued in them
        for end in self.ends.values():
            end.close()
        channel.close_all([self.hot.done_r, self.hot.done_w])


@pytest.fixture
def pool() -> Iterator[Pool]:
    made = Pool([SOLO, SOLO])
    yield made
    made.close()


def test_a_sync_worker_gets_each_connection_in_a_message_of_its_own(pool: Pool) -> None:
    # Four connections in one turn, two per worker: one message each, so the second one
    # each worker holds stays in its channel, where it can still be read back.
    fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(4)]
    pool.hot.pending.extend((n, fd, "main", "peer", b"", 0) for n, fd in enumerate(fds, 1))
    pool.hot.dispatch(0.0)
    assert sorted(pool.handed(1) + pool.handed(2)) == [1, 2, 3, 4]
    for pid in (1, 2):
        assert len(pool.take(pid)) == 1 and len(pool.take(pid)) == 1


def test_the_second_connection_is_queued_and_counted_as_waiting(pool: Pool) -> None:
    for conn_id in (1, 2, 3):
        pool.accept(conn_id, 0.0)
    # Least busy first: one each, then the third queues behind one of them.
    assert sorted(len(pool.handed(pid)) for pid in (1, 2)) == [1, 2]
    # The keep-alive turn (giveback.receive) ends for a queued connection as for a pending one.
    assert pool.hot.waiting[0] == 1


def test_a_queued_connection_moves_only_to_an_idle_worker(pool: Pool) -> None:
    pool.accept(1, 0.0)  # to worker 1
    pool.accept(2, 0.0)  # to worker 2
    pool.accept(3, 0.0)  # queued behind 1 at worker 1
    assert pool.handed(1) == [1, 3] and pool.handed(2) == [2]
    assert pool.take(1) == [1]  # worker 1 starts a long request; 3 waits in its channel
    assert pool.take(2) == [2]
    pool.hot.rebalance(1.0)
    # Worker 2 has room, but is busy: its request may be as long. Nothing moves.
    assert pool.handed(1) == [1, 3] and pool.handed(2) == [2]
    pool.finish(2, 2, 1.0)  # worker 2 is idle now
    pool.hot.rebalance(1.0)
    assert pool.handed(1) == [1] and pool.handed(2) == [3]
    assert pool.take(2) == [3]  # the idle worker got it...
    with pytest.raises(BlockingIOError):
        pool.take(1)  # ...and the busy one no longer has it


def test_an_idle_worker_takes_a_queued_connection_at_once(pool: Pool) -> None:
    pool.accept(1, 0.0)
    pool.accept(2, 0.0)
    pool.accept(3, 0.0)  # queued behind 1 at worker 1
    assert pool.take(1) == [1] and pool.take(2) == [2]
    pool.finish(2, 2, 0.0001)  # worker 2 idle: nothing can serve 3 sooner
    pool.hot.rebalance(0.0001)
    assert pool.handed(1) == [1] and pool.handed(2) == [3]


def test_a_queued_connection_the_worker_already_took_stays_with_it(pool: Pool) -> None:
    for conn_id in (1, 2, 3):
        pool.accept(conn_id, 0.0)
    assert pool.take(1) == [1] and pool.take(1) == [3]  # worker 1 read both already
    pool.take(2)
    pool.finish(2, 2, 0.0)
    pool.hot.rebalance(1.0)
    # Nothing to read back: the dispatcher still counts it as worker 1's, as it is.
    assert pool.handed(1) == [1, 3] and pool.handed(2) == []


def test_nothing_moves_without_room_elsewhere(pool: Pool) -> None:
    for conn_id in (1, 2, 3, 4):
        pool.accept(conn_id, 0.0)
    pool.hot.rebalance(1.0)
    assert pool.handed(1) == [1, 3] and pool.handed(2) == [2, 4]


def test_a_stop_read_back_by_mistake_goes_back_to_the_worker(pool: Pool) -> None:
    p = pool.procs[1]
    channel.send(p.chan, wire.encode_stop())
    assert p.read_back(one=True) == []
    message = channel.receive(pool.ends[1], channel.DONTWAIT)
    assert message is not None and isinstance(wire.decode_to_worker(message[0], 0), wire.Stop)


def test_workers_of_larger_capacity_get_batches_and_never_lose_one_to_rebalance() -> None:
    pool = Pool([SOLO, SOLO], solo=False)  # async workers of capacity 2: not a queue
    try:
        fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(4)]
        pool.hot.pending.extend((n, fd, "main", "peer", b"", 0) for n, fd in enumerate(fds, 1))
        pool.hot.dispatch(0.0)
        assert len(pool.take(1)) == 2 and len(pool.take(2)) == 2  # one message each
        assert pool.hot.queued() == 0  # both in hand are served at once: nobody waits
        pool.hot.rebalance(1.0)  # and nothing is read back from an async worker
        assert len(pool.handed(1)) == 2 and len(pool.handed(2)) == 2
    finally:
        pool.close()


def test_a_queued_connection_is_looked_at_without_any_completion(pool: Pool) -> None:
    # Only worker 1 is ready when two connections come (worker 2 still starting): the second
    # queues behind the first. Then worker 2 is ready; nothing completes, yet the queued
    # one moves once it has waited STEAL_AFTER (the send set when to look).
    starting = pool.procs[2].w.capacity
    pool.procs[2].w.capacity = 0
    pool.accept(1, 0.0)
    pool.accept(2, 0.0)
    assert pool.handed(1) == [1, 2] and pool.hot.next_steal == pytest.approx(STEAL_AFTER)
    assert pool.take(1) == [1]  # worker 1 serves the first; the second waits in its channel
    pool.procs[2].w.capacity = starting
    pool.hot.rebalance(STEAL_AFTER)
    assert pool.handed(1) == [1] and pool.handed(2) == [2]


def test_a_worker_that_gives_its_connection_back_takes_a_queued_one(pool: Pool) -> None:
    for conn_id in (1, 2, 3):
        pool.accept(conn_id, 0.0)
    assert pool.take(1) == [1] and pool.take(2) == [2]
    assert pool.handed(1) == [1, 3]
    # Worker 2's client sent nothing: it gives the connection back (no completion).
    ours, client = socket.socketpair()
    pool.hot.park(pool.procs[2], wire.Park(2, 0, b"", silent=True), ours.detach(), 0.001)
    assert pool.hot.next_steal == 0.001  # worker 2 is idle: look at once
    pool.hot.rebalance(0.001)
    assert pool.handed(1) == [1] and pool.handed(2) == [3]
    pool.hot.parking.close_all("test")
    pool.hot.parking.close()
    client.close()
