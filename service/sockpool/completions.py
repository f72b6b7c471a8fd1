"""A sync worker's finished connections, reported a few at a time (`queue_ahead` of 2 or more).

A completion written to the done pipe wakes the dispatcher whenever connections wait for a
worker, which under load is always: a wake-up and two context switches per connection, on
the cores the workers and clients need. A worker with N connections queued behind the one it
serves can report N at once instead, when it is about to start its last one, and the
dispatcher refills its queue in one turn. A worker with nothing queued behind the one it
finished reports at once, as without a queue, so one that runs out of work is never left
idle for a report not made; below saturation that is every connection.

Until it reports them, it notes them in a page of memory it shares with the dispatcher
(Ledger), which the dispatcher reads only once the worker has exited: then nothing races
it, and a worker killed with completions unreported is not said to have cut connections it
had served. Its running total tells rebalance() the worker is at work meanwhile (any value
read will do there: it only has to change). And the dispatcher counts there what it sent,
less what it read back: against what it took, that tells the worker whether anything is
queued behind it, without a system call. That count is a hint, read without ordering: a
worker that reads it stale reports at once, or finds its channel empty and then reports.
"""

from __future__ import annotations

import mmap

MAX_QUEUE_AHEAD = 8  # queued connections a sync worker may hold (config.queue_ahead's limit)
# The page's words: all it noted (not those it reported at once), how many of them are not
# yet reported, the handoffs the dispatcher sent it and did not read back, and the ids.
_TOTAL, _COUNT, SENT, _IDS = 0, 1, 2, 3


class Ledger:
    """One worker's page, made before the fork: the worker writes it, the dispatcher reads
    `total` while it lives and `pending()` once it has exited."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE)
        self.words = memoryview(self._map).cast("q")

    # -- the worker's side ------------------------------------------------------------------
    def add(self, conn_id: int) -> int:
        """Note one finished connection; how many now wait to be reported. Its id is in
        place before the count says so: a worker killed in between has served it anyway."""
        words = self.words
        count = words[_COUNT]
        words[_IDS + count] = conn_id
        words[_COUNT] = count + 1
        words[_TOTAL] += 1
        return count + 1

    def waiting(self) -> int:
        return self.words[_COUNT]

    def queued(self, taken: int) -> bool:
        """Whether handoffs wait in the channel, by the dispatcher's count (a hint)."""
        return self.words[SENT] > taken

    def pending(self) -> list[int]:
        """Finished and not yet reported: the worker's to report, and the dispatcher's to
        count as served once the worker has exited."""
        return self.words[_IDS : _IDS + self.words[_COUNT]].tolist()

    def clear(self) -> None:
        """After they were written to the done pipe. A worker killed before this reports
        them twice, and the dispatcher ignores a connection it no longer counts."""
        self.words[_COUNT] = 0

    # -- the dispatcher's side --------------------------------------------------------------
    @property
    def total(self) -> int:
        return self.words[_TOTAL]

    def close(self) -> None:
        self.words.release()
        self._map.close()


def report_now(waiting: int, queue_ahead: int, queued: bool) -> bool:
    """Whether a sync worker reports its `waiting` completions as it finishes one: at once
    when nothing is `queued` behind it (it would be idle until the dispatcher heard), and
    once it has finished as many as it queues: it is about to start the last connection it
    was sent (if the dispatcher kept it full), and the next should be on their way."""
    return not queued or waiting >= queue_ahead
