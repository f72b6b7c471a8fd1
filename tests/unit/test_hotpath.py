"""Least-busy assignment and exit statuses in words, without processes."""

from __future__ import annotations

from collections import deque

import pytest

from sockpool import wire
from sockpool.hotpath import assign, batches
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


def item(conn_id: int, carry: bytes = b"") -> tuple:
    return (conn_id, 100 + conn_id, "web", "peer", carry, 7 if carry else 0)


@pytest.mark.parametrize(
    "carrying",
    [set(), {0}, {5, 64, 65, 199}, set(range(0, 300, 2)), set(range(300))],
    ids=["none", "first", "some", "half", "all"],
)
@pytest.mark.parametrize("count", [0, 1, 63, 64, 65, 128, 300])
def test_batches_split_a_share_into_handoffs(count: int, carrying: set[int]) -> None:
    items = [item(i, b"partial" if i in carrying else b"") for i in range(count)]
    out = batches(items)
    assert all(1 <= len(batch) <= wire.MAX_BATCH for batch in out)
    # A connection that carries bytes travels alone, so no message outgrows MAX_MESSAGE.
    assert all(len(batch) == 1 for batch in out if any(i[4] for i in batch))
    # Nothing lost, nothing doubled, and the plain ones keep their order.
    flat = [i for batch in out for i in batch]
    assert sorted(flat) == sorted(items)
    assert [i for i in flat if not i[4]] == [i for i in items if not i[4]]
    # As few messages as those rules allow.
    plain = sum(1 for i in items if not i[4])
    assert len(out) == -(-plain // wire.MAX_BATCH) + (count - plain)


def test_exit_status_in_words() -> None:
    assert describe_status(0) == "exited with status 0"
    assert describe_status(3 << 8) == "exited with status 3"
    assert describe_status(9) == "killed by signal SIGKILL"
    assert describe_status(11 | 0x80) == "killed by signal SIGSEGV (core dumped)"
