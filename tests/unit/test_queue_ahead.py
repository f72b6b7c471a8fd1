"""Handoffs left unread: a sync worker with queue_ahead holds one connection queued behind the
one it serves, and an async worker's loop can be blocked by a handler. A worker not heard
from for STEAL_AFTER after a handoff (IDLE_STEAL_AFTER while a sync worker is idle) gives
back what it has not read, and gets nothing new until it is heard from again.

Real channels (SOCK_SEQPACKET socketpairs) and real descriptors; no processes: the "worker"
is the far end of its channel, read (or not) by the test.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from fakepool import T0, Pool

from sockpool import channel, wire
from sockpool.hotpath import _NEVER, FROZEN_AFTER, IDLE_STEAL_AFTER, STALL_FOR, STEAL_AFTER

SOLO = 2  # a sync worker's capacity with queue_ahead = 1: one served, one queued
LATER = T0 + STEAL_AFTER  # when a handoff sent at T0 and not heard of since is looked at


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
    pool.hot.dispatch(T0)
    assert sorted(pool.handed(1) + pool.handed(2)) == [1, 2, 3, 4]
    for pid in (1, 2):
        assert len(pool.take(pid)) == 1 and len(pool.take(pid)) == 1


def test_the_second_connection_is_queued_and_counted_as_waiting(pool: Pool) -> None:
    pool.three()
    # Least busy first: one each, then the third queues behind one of them.
    assert sorted(len(pool.handed(pid)) for pid in (1, 2)) == [1, 2]
    # The keep-alive turn (giveback.receive) ends for a queued connection as for a pending one.
    assert pool.hot.waiting[0] == 1


def test_a_connection_left_unread_behind_a_long_request_goes_to_a_worker_gone_idle(
    pool: Pool,
) -> None:
    pool.three()
    assert pool.handed(1) == [1, 3] and pool.handed(2) == [2]
    assert pool.take(1) == [1]  # worker 1 starts a long request; 3 waits in its channel
    assert pool.take(2) == [2]
    pool.hot.rebalance(T0 + 0.001)
    assert pool.handed(1) == [1, 3]  # both busy: 3 waits STEAL_AFTER, as it may be taken
    assert pool.hot.next_steal == LATER
    pool.finish(2, 2, T0 + 0.001)  # a fast one: worker 2 is idle, and the loop looks now
    assert pool.hot.next_steal == T0 + 0.001
    pool.hot.turn(T0 + 0.001)  # the loop's turn: what came back goes out first
    assert pool.handed(1) == [1] and pool.handed(2) == [3]
    assert pool.take(2) == [3]  # the idle worker got it...
    with pytest.raises(BlockingIOError):
        pool.take(1)  # ...and the busy one no longer has it


def test_a_connection_queued_a_moment_ago_stays_though_a_worker_is_idle(pool: Pool) -> None:
    pool.three()
    assert pool.take(1) == [1] and pool.take(2) == [2]
    pool.finish(2, 2, T0 + IDLE_STEAL_AFTER / 2)
    pool.hot.rebalance(T0 + IDLE_STEAL_AFTER / 2)
    assert pool.handed(1) == [1, 3]  # worker 1 may be about to take it: look again soon
    assert pool.hot.next_steal == T0 + IDLE_STEAL_AFTER


def test_it_goes_first_and_the_worker_behind_gets_nothing_until_heard_from(pool: Pool) -> None:
    pool.three()
    assert pool.take(1) == [1] and pool.take(2) == [2]
    pool.finish(2, 2, T0 + 0.001)
    pool.accept(4, T0 + 0.001)  # worker 2 is idle: it gets this one
    assert pool.handed(2) == [4] and pool.take(2) == [4]
    pool.hot.pending.append((5, os.open("/dev/null", os.O_RDONLY), "main", "peer", b"", 0))
    pool.hot.turn(LATER)
    # 3 came back and went before 5, into worker 2's queue: 4 began only a moment ago.
    assert pool.handed(2) == [4, 3] and pool.handed(1) == [1]
    # Worker 1 has room now, but it is still behind its long request: 5 waits here.
    assert [item[0] for item in pool.hot.pending] == [5] and pool.hot.free_capacity() == 0
    pool.finish(1, 1, LATER + 0.04)  # the long request ends: worker 1 is heard from
    pool.hot.dispatch(LATER + 0.04)
    assert pool.handed(1) == [5]


def test_nothing_is_read_back_from_a_worker_heard_from_since(pool: Pool) -> None:
    pool.three()
    assert pool.take(1) == [1]
    pool.finish(1, 1, T0 + 0.0001)  # worker 1 finished 1 after 3 was sent: it takes 3 next
    pool.hot.rebalance(T0 + 1)
    assert pool.handed(1) == [3] and pool.take(1) == [3]  # still in its channel: left there


def test_a_queued_connection_the_worker_already_took_stays_with_it(pool: Pool) -> None:
    pool.three()
    assert pool.take(1) == [1] and pool.take(1) == [3]  # worker 1 read both already
    pool.take(2)
    pool.finish(2, 2, T0)
    pool.hot.rebalance(LATER)
    # Nothing to read back: the dispatcher still counts it as worker 1's, as it is, and
    # worker 1 still takes work once it has room.
    assert pool.handed(1) == [1, 3] and pool.handed(2) == []
    pool.finish(1, 1, LATER)
    pool.accept(4, LATER)
    pool.accept(5, LATER)
    assert pool.handed(1) == [3, 5] and pool.handed(2) == [4]


def test_nothing_moves_without_room_elsewhere(pool: Pool) -> None:
    for conn_id in (1, 2, 3, 4):
        pool.accept(conn_id)
    assert pool.take(1) == [1] and pool.take(2) == [2]
    pool.hot.turn(LATER)
    # Both workers are behind long requests: 3 and 4 wait in the dispatcher, for whichever
    # finishes first, as they would without queue_ahead.
    assert pool.handed(1) == [1] and pool.handed(2) == [2]
    assert [item[0] for item in pool.hot.pending] == [3, 4]
    assert pool.hot.waiting[0] == 2  # and a keep-alive client's turn ends for them
    pool.finish(2, 2, LATER + 0.01)
    pool.hot.dispatch(LATER + 0.01)
    assert pool.handed(2) == [3, 4]


def test_a_stop_read_back_by_mistake_goes_back_to_the_worker(pool: Pool) -> None:
    p = pool.procs[1]
    channel.send(p.chan, wire.encode_stop())
    assert p.read_back(live=True) == []
    message = channel.receive(pool.ends[1], channel.DONTWAIT)
    assert message is not None and isinstance(wire.decode_to_worker(message[0], 0), wire.Stop)


def test_workers_of_larger_capacity_get_batches_and_keep_what_they_took() -> None:
    pool = Pool([SOLO, SOLO], solo=False)  # async workers of capacity 2: not a queue
    try:
        fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(4)]
        pool.hot.pending.extend((n, fd, "main", "peer", b"", 0) for n, fd in enumerate(fds, 1))
        pool.hot.dispatch(T0)
        assert len(pool.take(1)) == 2 and len(pool.take(2)) == 2  # one message each
        assert pool.hot.queued() == 0  # both in hand are served at once: nobody waits
        pool.hot.rebalance(LATER)  # nothing left unread: nothing comes back
        assert len(pool.handed(1)) == 2 and len(pool.handed(2)) == 2
    finally:
        pool.close()


def test_an_async_worker_whose_loop_is_blocked_loses_what_it_left_unread() -> None:
    pool = Pool([4, 4], solo=False)
    try:
        pool.accept(1)  # to worker 1, which takes it and then blocks its loop (5 ms of CPU)
        assert pool.take(1) == [1]
        pool.accept(2)  # to worker 2, which answers it at once
        assert pool.take(2) == [2]
        pool.finish(2, 2, T0 + 0.0005)
        pool.accept(3, T0 + 0.001)  # least busy: worker 2 again
        pool.accept(4, T0 + 0.001)  # a tie: worker 1, whose loop is blocked
        assert pool.handed(1) == [1, 4] and pool.handed(2) == [3]
        assert pool.take(2) == [3]
        pool.finish(2, 3, T0 + 0.0015)
        # Worker 1 has not been heard from since it was sent 1, at T0: it is looked at
        # then, but 4 is only a moment old there, and may be about to be read.
        assert pool.hot.next_steal == LATER
        pool.hot.turn(LATER)
        assert pool.handed(2) == [4] and pool.take(2) == [4]  # moved, but...
        pool.accept(5, LATER)
        assert pool.handed(1) == [1, 5]  # ...worker 1 is not passed over for that
        pool.hot.turn(LATER + STEAL_AFTER)  # 5 was left unread for STEAL_AFTER: it is
        assert pool.handed(1) == [1] and pool.handed(2) == [4, 5]
        pool.accept(6, T0 + 0.005)  # worker 1 has more room, but is still blocked
        assert pool.handed(2) == [4, 5, 6]
        pool.finish(1, 1, T0 + 0.006)  # its loop turns again
        pool.accept(7, T0 + 0.006)
        assert pool.handed(1) == [7]
    finally:
        pool.close()


def test_the_loop_looks_even_if_nothing_completes(pool: Pool) -> None:
    # Only worker 1 is ready when two connections come (worker 2 still starting): the second
    # queues behind the first. Then worker 2 is ready; nothing completes, yet the queued
    # one moves once it has waited STEAL_AFTER (the send set when to look).
    starting = pool.procs[2].w.capacity
    pool.procs[2].w.capacity = 0
    pool.accept(1)
    pool.accept(2)
    assert pool.handed(1) == [1, 2] and pool.hot.next_steal == LATER
    assert pool.take(1) == [1]  # worker 1 serves the first; the second waits in its channel
    pool.procs[2].w.capacity = starting
    pool.hot.turn(LATER)
    assert pool.handed(1) == [1] and pool.handed(2) == [2]
    assert pool.hot.next_steal == LATER + STEAL_AFTER  # for worker 2's, just sent


def test_workers_that_take_one_at_a_time_are_never_looked_at() -> None:
    pool = Pool([1, 1])  # sync workers without queue_ahead: one handoff, read at once
    try:
        pool.accept(1)
        pool.accept(2)
        assert pool.hot.next_steal == _NEVER
    finally:
        pool.close()


def test_a_worker_that_gives_a_connection_back_is_heard_from(pool: Pool) -> None:
    pool.three()
    assert pool.take(1) == [1] and pool.take(2) == [2]
    # Worker 1's client sent nothing: it gives the connection back, and takes 3 next.
    ours, client = socket.socketpair()
    pool.hot.park(pool.procs[1], wire.Park(1, 0, b"", silent=True), ours.detach(), T0 + 0.001)
    pool.hot.rebalance(LATER)
    assert pool.handed(1) == [3]
    pool.hot.parking.close_all("test")
    pool.hot.parking.close()
    client.close()


def test_a_worker_slow_to_start_serves_its_first_connection_first(pool: Pool) -> None:
    # Worker 1 has not yet taken its first connection when the second, queued behind it, is
    # looked at: it is waiting for a core. Reading both back would race its waking up: it
    # could take the second while the first is out of its channel, and a client that came
    # later would be served first. Both stay until it takes the first.
    pool.three()
    assert pool.take(2) == [2]
    pool.hot.turn(LATER)
    assert pool.handed(1) == [1, 3] and pool.handed(2) == [2]
    assert pool.hot.next_steal == LATER + STEAL_AFTER  # it looks again
    assert pool.take(1) == [1]  # it wakes up: the first comes first
    pool.hot.turn(LATER + STEAL_AFTER)  # and only the one queued behind moves
    assert pool.handed(1) == [1] and pool.handed(2) == [2, 3]
    assert pool.take(2) == [3]


def test_a_frozen_worker_keeps_its_first_and_gets_nothing_new(pool: Pool) -> None:
    # Worker 1 took nothing for FROZEN_AFTER: stopped (SIGSTOP). It keeps its first
    # connection, or it would never be heard from again and never be found hung; the one
    # queued behind goes on.
    pool.three()
    assert pool.take(2) == [2]
    frozen = T0 + FROZEN_AFTER
    pool.hot.rebalance(frozen - STEAL_AFTER)
    assert pool.hot.next_steal == frozen
    pool.hot.turn(frozen)
    assert pool.handed(1) == [1] and pool.handed(2) == [2, 3]
    assert pool.take(2) == [3]
    pool.accept(4, frozen + 0.1)  # not to worker 1, which is stalled: it waits here
    assert pool.handed(1) == [1] and [item[0] for item in pool.hot.pending] == [4]
    pool.hot.rebalance(frozen + 5)  # looked at again after STALL_FOR: it still holds just 1...
    assert pool.take(1) == [1]  # (once, in its channel)
    with pytest.raises(BlockingIOError):
        pool.take(1)
    assert pool.procs[1].w.handed[1][0] == T0  # ...and the hang check counts from T0
    pool.finish(1, 1, frozen + 5.001)  # heard from: it takes work again
    pool.accept(5, frozen + 5.001)
    assert pool.handed(1) == [4, 5]


def test_a_connection_read_back_from_the_only_worker_goes_back_to_it_after_the_stall() -> None:
    # One async worker holds a long connection (a long-poll) and, its core taken, does not
    # read the next handoff within STEAL_AFTER: read back, it waits here, the worker
    # stalled. With no other worker, the loop must wake at the stall's end for it, not
    # wait for whatever the dispatcher hears next (the long-poll's end, 30 s on).
    pool = Pool([100], solo=False)
    try:
        pool.accept(1)
        assert pool.take(1) == [1]  # the long one
        pool.accept(2)
        stalled = T0 + STEAL_AFTER
        pool.hot.turn(stalled)
        assert [item[0] for item in pool.hot.pending] == [2] and pool.handed(1) == [1]
        assert pool.hot.next_steal == stalled + STALL_FOR
        pool.hot.turn(stalled + STALL_FOR)
        assert pool.handed(1) == [1, 2] and pool.take(1) == [2]
    finally:
        pool.close()


def test_a_stall_pending_does_not_put_off_the_look_at_a_new_handoff() -> None:
    # Worker 1 stalls; the connection read back from it goes to worker 2, which must be
    # looked at STEAL_AFTER on, not at worker 1's stall's end.
    pool = Pool([100, 100], solo=False)
    try:
        pool.accept(1)
        assert pool.take(1) == [1]
        pool.procs[2].w.capacity = 0  # still starting: the second goes to worker 1 too
        pool.accept(2)
        pool.procs[2].w.capacity = 100
        stalled = T0 + STEAL_AFTER
        pool.hot.turn(stalled)
        assert pool.handed(2) == [2]
        assert pool.hot.next_steal == stalled + STEAL_AFTER
    finally:
        pool.close()


def test_a_retired_worker_leaves_what_it_did_not_take_to_the_others(pool: Pool) -> None:
    pool.three()
    assert pool.take(1) == [1] and pool.take(2) == [2]
    assert pool.hot.undelivered() == 1  # a stop waits for it: it may still move
    pool.hot.routes_changed([pool.procs[2]])  # a reload or a recycle retires worker 1
    assert pool.handed(1) == [1] and [item[0] for item in pool.hot.pending] == [3]
    with pytest.raises(BlockingIOError):
        pool.take(1)


def test_at_a_stop_a_worker_keeps_what_it_was_sent(pool: Pool) -> None:
    pool.three()
    pool.hot.routes_changed([])  # every worker retired: nobody else could take 3
    assert pool.handed(1) == [1, 3] and not pool.hot.pending


def test_near_the_descriptor_limit_nothing_is_read_back(pool: Pool) -> None:
    # Workers keep what they hold there (nothing is parked either): a read back would bring
    # descriptors into a dispatcher that has none to spare, and lose them to EMFILE.
    pool.three()
    assert pool.take(1) == [1] and pool.take(2) == [2]
    pool.hot._parking_allowed(False, T0)
    pool.hot.rebalance(LATER)
    pool.hot.routes_changed([pool.procs[2]])
    assert pool.handed(1) == [1, 3] and not pool.hot.pending
    pool.hot._parking_allowed(True, LATER + 1)  # room again: look at once
    assert pool.hot.next_steal == LATER + 1
    pool.hot.turn(LATER + 1)
    assert pool.handed(1) == [1] and pool.handed(2) == [2, 3]
