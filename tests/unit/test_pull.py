"""`pull = true` (pull.py): an async worker takes a new connection only while its loop waits
for I/O, one per wait; the rest wait in the dispatcher, and a loop that starts to wait while
they do wakes it. The dispatcher's side over fake workers (fakepool), the worker's side with
a real selector and real pipes; no processes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from fakepool import T0, Pool

from harness import wait_until
from sockpool import giveback, wire
from sockpool.hotpath import STEAL_AFTER
from sockpool.pull import WAKE, LoopWord, WaitingSelector

pytestmark = pytest.mark.usefixtures("no_descriptor_leaks")


@pytest.fixture
def pool() -> Iterator[Pool]:
    made = Pool([10, 10], solo=False, pull=True)
    yield made
    made.close()


def wait(pool: Pool, pid: int) -> None:
    """Worker `pid`'s loop begins to wait in select() (its selector's first step)."""
    word = pool.procs[pid].word
    assert word is not None
    word.word[0] += 1 + (word.word[0] % 2)  # the next odd number: a new wait


def run(pool: Pool, pid: int) -> None:
    """Its loop stops waiting: it runs."""
    word = pool.procs[pid].word
    assert word is not None
    word.word[0] += word.word[0] % 2


def queue(pool: Pool, *ids: int) -> None:
    for conn_id in ids:
        fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        pool.hot.pending.append((conn_id, fd, "main", "peer", b"", 0))


def test_the_pool_pulls_once_every_worker_that_takes_work_does(pool: Pool) -> None:
    assert pool.hot.pull
    pool.procs[2].solo = True  # a sync worker, as its READY says: it never marks a wait
    pool.hot.routes_changed(list(pool.procs.values()))
    assert not pool.hot.pull


def test_a_word_takes_while_its_loop_waits_and_once_per_wait() -> None:
    word = LoopWord()
    try:
        assert word.takes() == 0  # running
        word.word[0] = 1
        assert word.takes() == 1  # waiting
        word.fed = 1
        assert word.takes() == 0  # fed in this wait
        word.word[0] = 2
        assert word.takes() == 0
        word.word[0] = 3
        assert word.takes() == 3  # a new wait
    finally:
        word.close()
    assert word.takes() == 0  # its worker is gone: it takes nothing, and raises nothing


def test_while_no_loop_waits_connections_wait_here_and_are_counted(pool: Pool) -> None:
    queue(pool, 1, 2)
    pool.hot.dispatch(T0)
    assert pool.handed(1) == pool.handed(2) == []
    assert len(pool.hot.pending) == 2
    assert pool.hot.waiting[giveback.WAITING] == 2  # a loop that starts to wait wakes us


def test_a_loop_that_waits_takes_one_connection_per_wait(pool: Pool) -> None:
    queue(pool, 1, 2, 3)
    wait(pool, 2)
    pool.hot.dispatch(T0)
    assert pool.handed(2) == [1] and pool.take(2) == [1]
    pool.hot.dispatch(T0)  # the same wait: nothing more
    assert pool.handed(2) == [1]
    run(pool, 2)
    wait(pool, 2)
    pool.hot.dispatch(T0)
    assert pool.handed(2) == [1, 2] and pool.take(2) == [2]
    assert [item[0] for item in pool.hot.pending] == [3]
    assert pool.handed(1) == []  # its loop never waited


def test_of_the_loops_that_wait_the_least_busy_goes_first(pool: Pool) -> None:
    pool.procs[1].w.handed.update({7: (T0, "main", ""), 8: (T0, "main", "")})
    queue(pool, 1)
    wait(pool, 1)
    wait(pool, 2)
    pool.hot.dispatch(T0)
    assert pool.handed(2) == [1]
    queue(pool, 2)
    pool.hot.dispatch(T0)
    assert pool.handed(1) == [7, 8, 2]  # 2's wait is fed: 1 is next, busy or not


def test_a_full_worker_gets_nothing_though_its_loop_waits() -> None:
    made = Pool([1], solo=False, pull=True)
    try:
        made.procs[1].w.handed[9] = (T0, "main", "")
        queue(made, 1)
        wait(made, 1)
        made.hot.dispatch(T0)
        assert made.handed(1) == [9] and len(made.hot.pending) == 1
    finally:
        made.close()


def test_a_loop_that_begins_to_wait_while_waiting_goes_out_is_seen(pool: Pool) -> None:
    # It looked at WAITING before the dispatcher published it (so it wakes nobody), after
    # the dispatcher's first look at its word: the second look finds it.
    publish = pool.hot.publish_waiting

    def loop_begins_to_wait() -> None:
        publish()
        if pool.procs[1].word.takes() == 0:  # type: ignore[union-attr]
            wait(pool, 1)

    pool.hot.publish_waiting = loop_begins_to_wait  # type: ignore[method-assign]
    queue(pool, 1)
    pool.hot.dispatch(T0)
    assert pool.handed(1) == [1] and not pool.hot.pending
    assert pool.hot.waiting[giveback.WAITING] == 0


def test_free_capacity_is_one_place_per_worker_with_room(pool: Pool) -> None:
    # accept() takes that many, less those waiting here: the rest stay in the kernel's
    # backlog, where another dispatcher may take them.
    assert pool.hot.free_capacity() == 2
    pool.procs[1].w.handed.update({n: (T0, "main", "") for n in range(10)})  # full
    assert pool.hot.free_capacity() == 1


def test_a_failed_send_leaves_the_wait_unfed(pool: Pool) -> None:
    pool.ends[1].close()  # its worker is gone: the send fails
    queue(pool, 1)
    wait(pool, 1)
    pool.hot.dispatch(T0)
    assert set(pool.broken_ones) == {1} and [item[0] for item in pool.hot.pending] == [1]
    assert pool.procs[1].word.takes() != 0  # type: ignore[union-attr]


def test_a_handoff_read_back_unread_leaves_the_loop_free_to_take_it_again(pool: Pool) -> None:
    # Not scheduled for STEAL_AFTER, the worker has its handoff read back (rebalance()).
    # Its loop may still be in the wait it was fed in: epoll woke it, found nothing, and
    # sleeps on. That wait must count as unfed, or it never takes anything again.
    pool.procs[1].w.handed[7] = (T0, "main", "")  # one it took before
    queue(pool, 1)
    wait(pool, 1)
    pool.hot.dispatch(T0)
    assert pool.handed(1) == [7, 1]
    pool.hot.rebalance(T0 + STEAL_AFTER)
    assert pool.handed(1) == [7] and [item[0] for item in pool.hot.pending] == [1]
    pool.hot.dispatch(T0 + STEAL_AFTER)
    assert pool.handed(1) == [7, 1] and pool.take(1) == [1]


def test_a_wake_record_names_no_connection(pool: Pool) -> None:
    queue(pool, 1)
    wait(pool, 1)
    pool.hot.dispatch(T0)
    os.write(pool.hot.done_w, wire.DONE.pack(1, WAKE))
    pool.hot.read_done(T0)
    assert pool.handed(1) == [1] and pool.hot.served == 0


# -- the worker's side ---------------------------------------------------------------------------


@pytest.fixture
def waiting(monkeypatch: pytest.MonkeyPatch) -> memoryview:
    """The dispatcher's shared words (giveback.WAITING), this test's own."""
    words = memoryview(bytearray(16)).cast("q")
    monkeypatch.setattr(giveback, "_waiting", words)
    return words


class Loop:
    """A WaitingSelector watching a pipe the test writes to, and the done pipe it wakes the
    dispatcher through."""

    def __init__(self) -> None:
        self.word = LoopWord()
        self.io_r, self.io_w = os.pipe()
        self.done_r, self.done_w = os.pipe()
        os.set_blocking(self.done_r, False)
        self.free = True  # the worker could start another connection (may_take)
        self.selector = WaitingSelector(self.word, self.done_w, 4242, lambda: self.free)
        self.selector.register(self.io_r, 1)  # EVENT_READ

    def wakes(self) -> list[tuple[int, int]]:
        try:
            return list(wire.decode_done(os.read(self.done_r, 4096)))
        except BlockingIOError:
            return []

    def close(self) -> None:
        self.selector.close()
        self.word.close()
        for fd in (self.io_r, self.io_w, self.done_r, self.done_w):
            os.close(fd)


@pytest.fixture
def loop() -> Iterator[Loop]:
    made = Loop()
    yield made
    made.close()


def wait_in_thread(loop: Loop) -> threading.Thread:
    """The loop waits (select with a timeout) until the test writes to its pipe."""
    waiter = threading.Thread(target=loop.selector.select, args=(10.0,))
    waiter.start()
    wait_until(lambda: loop.word.takes() != 0, "the loop to wait")
    return waiter


@pytest.mark.parametrize("connections_waiting", [0, 2])
def test_a_wait_is_marked_in_the_word_and_wakes_the_dispatcher_only_while_connections_wait(
    loop: Loop, waiting: memoryview, connections_waiting: int
) -> None:
    waiting[giveback.WAITING] = connections_waiting
    waiter = wait_in_thread(loop)
    try:
        marked = loop.word.word[0]
    finally:
        os.write(loop.io_w, b"x")
        waiter.join()
    assert marked == 1
    assert loop.wakes() == ([(4242, WAKE)] if connections_waiting else [])
    assert loop.word.word[0] == 2 and loop.word.takes() == 0  # running again


def test_a_select_that_returns_at_once_is_no_wait(loop: Loop, waiting: memoryview) -> None:
    # Callbacks ready to run (a zero timeout), or I/O already there (the request of the
    # connection just taken, about to run): the loop is not free for another connection.
    waiting[giveback.WAITING] = 1
    assert loop.selector.select(0) == []
    os.write(loop.io_w, b"x")
    assert len(loop.selector.select(10.0)) == 1
    assert loop.word.word[0] == 0 and loop.wakes() == []


@pytest.mark.parametrize("free", [True, False])
def test_a_worker_that_could_not_start_another_neither_marks_its_waits_nor_wakes_anyone(
    loop: Loop, waiting: memoryview, free: bool
) -> None:
    # Full, stopping, or its loop waiting on a sync handler in the executor's thread.
    waiting[giveback.WAITING] = 1
    loop.free = free
    assert loop.selector.select(0.01) == []  # a real wait, nothing came
    assert loop.word.word[0] == (2 if free else 0)
    assert loop.wakes() == ([(4242, WAKE)] if free else [])
