"""A sync worker's finished connections, reported a few at a time (`queue_ahead` of 2 or more).

A completion written to the done pipe wakes the dispatcher whenever connections wait for a
worker, which under load is always: a wake-up and two context switches per connection, on
the cores the workers and clients need. A worker with connections queued behind the one it
serves reports what it finished once it has finished as many as it queues, or as it starts
the last one it was sent, and the dispatcher refills its queue in one turn. With nothing
queued behind the one it finished, it reports at once, as without a queue, so it is never
left idle for a report not made; below saturation that is every connection.

Until it reports them, it notes them in a page of memory it shares with the dispatcher
(Ledger). The dispatcher reads the page on every turn (hotpath.read_ledgers), without a
system call, so a connection finished and unreported frees its room, its admission and the
hang clock at the dispatcher's next wake-up, whatever wakes it: only the wake-up is saved.
No ordering between the processes is needed: every id that was ever in the page is a
finished connection's, so one read stale or half-written is still right to count, and the
record that reports it later is ignored. After a worker's death the page says what it had
finished, so it is not said to have cut those.

The dispatcher counts in the page the handoffs it sent and did not read back: against what
the worker took, that tells it whether anything is queued behind it. A hint, read without
ordering: a worker that reads it stale reports at once, or finds its channel empty and
then reports.
"""

from __future__ import annotations

import mmap

MAX_QUEUE_AHEAD = 8  # queued connections a sync worker may hold (config.queue_ahead's limit)
# The page's words: how many finished connections are noted and not yet reported, the
# handoffs the dispatcher sent and did not read back, and the noted ones' ids.
_COUNT, SENT, _IDS = 0, 1, 2


_NOTHING = memoryview(bytearray(8 * _IDS)).cast("q")  # a closed ledger's words


class Ledger:
    """One worker's page, made before the fork: the worker notes its completions, the
    dispatcher reads them (`pending()`) and keeps the count of handoffs (SENT)."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE)
        self.words = memoryview(self._map).cast("q")

    # -- the worker's side ------------------------------------------------------------------
    def add(self, conn_id: int) -> int:
        """Note one finished connection; how many now wait to be reported. Its id is in
        place before the count says so."""
        words = self.words
        count = words[_COUNT]
        words[_IDS + count] = conn_id
        words[_COUNT] = count + 1
        return count + 1

    def waiting(self) -> int:
        return self.words[_COUNT]

    def queued(self, taken: int) -> int:
        """How many handoffs wait in the channel, by the dispatcher's count (a hint)."""
        return self.words[SENT] - taken

    def pending(self) -> list[int]:
        """Finished and not yet reported: the worker's to report, the dispatcher's to count
        as finished."""
        return self.words[_IDS : _IDS + self.words[_COUNT]].tolist()

    def clear(self) -> None:
        """After they were written to the done pipe. A worker killed before this reports
        them twice, and the dispatcher ignores a connection it no longer counts."""
        self.words[_COUNT] = 0

    def close(self) -> None:
        """Unmapped; a look at it after this (its worker is gone, the routes not yet
        rebuilt) finds nothing noted, not an error in the dispatcher's loop. Once."""
        if self.words is _NOTHING:
            return
        self.words.release()
        self._map.close()
        self.words = _NOTHING


def report_now(waiting: int, queue_ahead: int, queued: int) -> bool:
    """Whether a sync worker reports its `waiting` completions as it finishes one: at once
    when nothing is `queued` behind it (it would be idle until the dispatcher heard), when
    the next is the last one it was sent, and once it has finished as many as it queues.
    Either way, the next ones should be on their way while it serves that last one."""
    return queued <= 1 or waiting >= queue_ahead
