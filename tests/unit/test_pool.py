"""Least-busy assignment, without processes."""

from __future__ import annotations

import socket
from collections import deque

from sockpool.pool import Worker, assign, describe_status


def worker(pid: int, capacity: int, in_flight: int = 0, **kw: object) -> Worker:
    return Worker(pid, 1, socket.socket(), socket.socket(), capacity, in_flight, **kw)


def pending(n: int) -> deque:
    return deque((i, 100 + i, "web", "peer") for i in range(n))


def test_each_goes_to_the_worker_with_most_free_capacity() -> None:
    a, b, c = worker(1, 10, 8), worker(2, 10, 2), worker(3, 10, 5)
    batches = assign(pending(6), [a, b, c])
    # b (8 free) takes until it is level with c (5 free), then they alternate.
    assert len(batches[b]) == 5 and len(batches[c]) == 1 and a not in batches
    assert (a.in_flight, b.in_flight, c.in_flight) == (8, 7, 6)


def test_full_retiring_and_unready_workers_get_nothing() -> None:
    full = worker(1, 1, 1)
    retiring = worker(2, 5, retiring=True)
    starting = worker(3, 0)
    gone = worker(4, 5, gone=True)
    queue = pending(3)
    assert assign(queue, [full, retiring, starting, gone]) == {}
    assert len(queue) == 3  # nothing taken: back-pressure, not loss


def test_assignment_stops_at_total_capacity_keeping_order() -> None:
    a, b = worker(1, 1), worker(2, 1)
    queue = pending(5)
    batches = assign(queue, [a, b])
    assert sorted(item[0] for items in batches.values() for item in items) == [0, 1]
    assert [item[0] for item in queue] == [2, 3, 4]


def test_exit_status_in_words() -> None:
    assert describe_status(0) == "exited with status 0"
    assert describe_status(3 << 8) == "exited with status 3"
    assert describe_status(9) == "killed by signal SIGKILL"
    assert describe_status(11 | 0x80) == "killed by signal SIGSEGV (core dumped)"
