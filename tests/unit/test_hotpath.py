"""Least-busy assignment and exit statuses in words, without processes."""

from __future__ import annotations

from collections import deque

from sockpool.hotpath import assign
from sockpool.process import describe_status


def pending(n: int) -> deque:
    return deque((i, 100 + i, "web", "peer") for i in range(n))


def test_each_goes_to_the_worker_with_most_free_capacity() -> None:
    room = {"a": 10 - 8, "b": 10 - 2, "c": 10 - 5}  # capacity 10, 8/2/5 in flight
    batches = assign(pending(6), room)
    # b (8 free) takes until it is level with c (5 free), then they alternate.
    assert len(batches["b"]) == 5 and len(batches["c"]) == 1 and "a" not in batches
    in_flight = {w: 10 - room[w] + len(batches.get(w, [])) for w in room}
    assert (in_flight["a"], in_flight["b"], in_flight["c"]) == (8, 7, 6)


def test_full_workers_get_nothing() -> None:
    queue = pending(3)
    assert assign(queue, {"full": 0, "over": -1}) == {}
    assert len(queue) == 3  # nothing taken: back-pressure, not loss


def test_assignment_stops_at_total_capacity_keeping_order() -> None:
    queue = pending(5)
    batches = assign(queue, {"a": 1, "b": 1})
    assert sorted(item[0] for items in batches.values() for item in items) == [0, 1]
    assert [item[0] for item in queue] == [2, 3, 4]


def test_exit_status_in_words() -> None:
    assert describe_status(0) == "exited with status 0"
    assert describe_status(3 << 8) == "exited with status 3"
    assert describe_status(9) == "killed by signal SIGKILL"
    assert describe_status(11 | 0x80) == "killed by signal SIGSEGV (core dumped)"
