"""Completions reported a few at a time (completions.py): the rule, the worker that follows
it, the page it shares with the dispatcher, and what the hot path makes of that page: a
connection finished and unreported frees its room at the dispatcher's next turn, and one
finished by a worker killed before reporting it was not cut.

Real channels, pipes and a real forked writer for the shared page; no worker processes."""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Iterator

import pytest
from fakepool import T0, Pool

from sockpool import channel, giveback, handlers, wire, worker
from sockpool.completions import SENT, Ledger, report_now
from sockpool.hotpath import STEAL_AFTER
from sockpool.spec import WorkerSpec

QUEUE_AHEAD = 3
CAPACITY = 1 + QUEUE_AHEAD


@pytest.mark.parametrize(
    ("waiting", "queued", "expected"),
    [
        (1, 3, False),  # kept full: two more to go before its last
        (2, 2, False),
        (3, 3, True),  # as many as it queues
        (2, 1, True),  # the next is the last one it was sent
        (1, 0, True),  # nothing behind it: it would be idle until the dispatcher heard
    ],
)
def test_when_a_worker_reports(waiting: int, queued: int, expected: bool) -> None:
    assert report_now(waiting, QUEUE_AHEAD, queued) is expected


# -- the worker's side ---------------------------------------------------------------------


class Worker:
    """A SyncWorker with a ledger over a real channel and done pipe, in this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(giveback, "_send", None)  # _Base sets them for its process
        monkeypatch.setattr(giveback, "_park_after", 0.0)
        self.dispatcher_end, self.end = channel.pair()
        self.done_r, done_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        spec = WorkerSpec(1, {}, None, 1, queue_ahead=QUEUE_AHEAD)
        self.w = worker.SyncWorker(self.end, {None: handlers.echo}, spec, done_w)
        self.w.ledger = self.ledger = Ledger()

    def sent(self, n: int) -> None:
        """The dispatcher's count of handoffs sent to it."""
        self.ledger.words[SENT] = n

    def reported(self) -> list[int]:
        try:
            data = os.read(self.done_r, 4096)
        except BlockingIOError:
            return []
        return [conn_id for _, conn_id in wire.decode_done(data)]

    def close(self) -> None:
        channel.close_all([self.done_r, self.w.done_pipe])
        self.dispatcher_end.close()
        self.end.close()
        self.ledger.close()


@pytest.fixture
def w(monkeypatch: pytest.MonkeyPatch) -> Iterator[Worker]:
    made = Worker(monkeypatch)
    yield made
    made.close()


def test_a_worker_kept_full_reports_as_it_starts_its_last_connection(w: Worker) -> None:
    w.sent(4)  # one served, three queued
    for conn_id in (1, 2):
        w.w.taken = conn_id
        w.w._completed(conn_id)
        assert w.reported() == []  # more queued behind it: no wake-up for the dispatcher
    assert w.ledger.pending() == [1, 2]
    w.w.taken = 3
    w.w._completed(3)  # the next is the last one it was sent
    assert w.reported() == [1, 2, 3] and w.ledger.pending() == []


def test_a_worker_with_nothing_queued_reports_at_once(w: Worker) -> None:
    w.sent(1)
    w.w.taken = 1
    w.w._completed(7)
    assert w.reported() == [7] and w.ledger.pending() == []


def test_a_worker_about_to_wait_reports_first(w: Worker) -> None:
    w.sent(5)  # the count says more are queued, but the dispatcher read them back
    w.w.taken = 2
    w.w._completed(1)
    assert w.reported() == []
    seen_while_waiting: list[int] = []

    def dispatcher() -> None:  # what the worker reported before it needed the STOP, if any
        select.select([w.done_r], [], [], 5)
        seen_while_waiting.extend(w.reported())
        channel.send(w.dispatcher_end, wire.encode_stop())

    threading.Thread(target=dispatcher).start()
    assert w.w._next() is None  # it waited for the STOP...
    assert seen_while_waiting == [1]  # ...with its completion reported before it did


def test_a_worker_told_to_stop_reports_what_it_noted(w: Worker) -> None:
    w.ledger.add(9)
    channel.send(w.dispatcher_end, wire.encode_stop())
    before = signal.getsignal(signal.SIGTERM)
    try:
        w.w.run()
    finally:
        signal.signal(signal.SIGTERM, before)
    assert w.reported() == [9]


# -- the page, shared ----------------------------------------------------------------------


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
    finally:
        ledger.close()
    assert ledger.waiting() == 0  # closed: nothing noted, not an error


# -- the dispatcher's side -----------------------------------------------------------------


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


def test_a_completion_noted_and_not_reported_frees_its_room_at_the_next_turn(
    pool: Pool,
) -> None:
    for conn_id in range(1, 6):
        pool.accept(conn_id)  # 1, 3, 5 to worker 1; 2, 4 to worker 2
    assert pool.handed(1) == [1, 3, 5]
    assert pool.take(1) == [1]
    pool.procs[1].ledger.add(1)  # finished 1 and took 3, reporting neither yet
    assert pool.take(1) == [3]
    later = T0 + STEAL_AFTER
    pool.hot.turn(later)  # whatever woke the dispatcher
    assert pool.handed(1) == [3, 5] and pool.hot.served == 1
    assert pool.procs[1].w.last_heard == later  # heard from: at work, not stuck
    pool.finish(1, 1, later)  # the record that reports it comes later: ignored
    assert pool.hot.served == 1


def test_a_worker_knows_what_is_queued_behind_it_from_the_dispatchers_count(
    pool: Pool,
) -> None:
    for conn_id in (1, 2, 3):
        pool.accept(conn_id)  # 1 and 3 to worker 1
    ledger = pool.procs[1].ledger
    assert pool.take(1) == [1]
    assert ledger.queued(taken=1) == 1  # 3 waits behind 1
    pool.hot.rebalance(T0 + STEAL_AFTER)  # unheard: 3 is read back, and no longer queued
    assert [item[0] for item in pool.hot.pending] == [3]
    assert ledger.queued(taken=1) == 0


@pytest.mark.parametrize(("solo", "keeps"), [(True, True), (False, False)])
def test_only_a_sync_worker_keeps_its_ledger_once_ready(solo: bool, keeps: bool) -> None:
    # queue_ahead is the generation's, sync or async: the READY says which the worker is,
    # and an async one's page would only cost the hot path a count on every handoff.
    pool = Pool([CAPACITY], ledger=True)
    try:
        p = pool.procs[1]
        channel.send(pool.ends[1], wire.encode_ready(CAPACITY, set(), solo))
        p.next_event(T0)
        assert (p.ledger is not None) is keeps
    finally:
        pool.close()
