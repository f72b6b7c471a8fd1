"""Completions reported a few at a time (completions.py): the rule, the ledger a worker
shares with the dispatcher, and what the hot path makes of it: a worker at work is not
taken for a stuck one, and one killed with completions unreported did not cut them.

Real channels and a real forked writer for the shared page; no worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from fakepool import T0, Pool

from sockpool.completions import Ledger, report_now
from sockpool.hotpath import STEAL_AFTER

QUEUE_AHEAD = 3
CAPACITY = 1 + QUEUE_AHEAD


@pytest.mark.parametrize(("waiting", "expected"), [(1, False), (2, False), (3, True), (4, True)])
def test_a_worker_with_work_queued_reports_once_it_has_finished_as_many_as_it_queues(
    waiting: int, expected: bool
) -> None:
    assert report_now(waiting, QUEUE_AHEAD, queued=True) is expected


@pytest.mark.parametrize("waiting", [1, 2])
def test_a_worker_with_nothing_queued_reports_at_once(waiting: int) -> None:
    assert report_now(waiting, QUEUE_AHEAD, queued=False)


def test_what_a_worker_notes_is_read_by_the_dispatcher_once_it_has_exited() -> None:
    ledger = Ledger()
    try:
        pid = os.fork()
        if pid == 0:  # the worker: finishes 7 and 9, reports them, then finishes 12
            ledger.add(7)
            ledger.add(9)
            ledger.clear()
            ledger.add(12)
            os._exit(0)
        os.waitpid(pid, 0)
        assert ledger.pending() == [12] and ledger.waiting() == 1
        assert ledger.total == 3  # all it finished, reported or not
    finally:
        ledger.close()


@pytest.fixture
def pool() -> Iterator[Pool]:
    made = Pool([CAPACITY, CAPACITY], ledger=True)
    yield made
    made.close()


def test_a_worker_killed_with_completions_unreported_cut_only_what_it_was_serving(
    pool: Pool,
) -> None:
    for conn_id in (1, 2, 3):
        pool.accept(conn_id)  # least busy first: 1 and 3 to worker 1, 2 to worker 2
    assert pool.handed(1) == [1, 3]
    assert pool.take(1) == [1] and pool.take(1) == [3]
    pool.procs[1].ledger.add(1)  # served 1, not yet reported; killed while serving 3
    assert pool.hot.recover(pool.procs[1]) == 1  # only 3 was cut
    assert pool.handed(1) == [] and pool.hot.served == 1


def test_a_worker_that_finishes_connections_is_not_read_back_until_it_stops(
    pool: Pool,
) -> None:
    for conn_id in range(1, 6):
        pool.accept(conn_id)  # 1, 3, 5 to worker 1; 2, 4 to worker 2
    assert pool.handed(1) == [1, 3, 5]
    assert pool.take(1) == [1]
    pool.procs[1].ledger.add(1)  # finished 1 and took 3, reporting neither yet
    assert pool.take(1) == [3]
    later = T0 + STEAL_AFTER
    pool.hot.rebalance(later)
    assert pool.handed(1) == [1, 3, 5]  # at work: 5 may wait for it
    assert pool.hot.next_steal == later + STEAL_AFTER
    pool.hot.rebalance(later + STEAL_AFTER)  # nothing finished since: 3 holds it up
    assert pool.handed(1) == [1, 3] and [item[0] for item in pool.hot.pending] == [5]


def test_a_worker_knows_what_is_queued_behind_it_from_the_dispatchers_count(
    pool: Pool,
) -> None:
    for conn_id in (1, 2, 3):
        pool.accept(conn_id)  # 1 and 3 to worker 1
    ledger = pool.procs[1].ledger
    assert pool.take(1) == [1]
    assert ledger.queued(taken=1)  # 3 waits behind 1: report 1 later, with others
    pool.hot.rebalance(T0 + STEAL_AFTER)  # unheard: 3 is read back, and no longer queued
    assert [item[0] for item in pool.hot.pending] == [3]
    assert not ledger.queued(taken=1)  # so it reports 1 at once, as it finishes
