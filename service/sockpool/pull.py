"""`pull = true`: an async worker takes a new connection only while its loop waits for I/O.

By default the dispatcher sends a connection to the async worker with the most room, and
the worker's loop starts it at its next turn. When handlers burn CPU in the loop, that turn
may come only after a slow request has run, and a fast request handed over meanwhile waits
behind it, while another worker's loop sits idle. With `pull`, each worker's loop says when
it waits in select(), in one word of memory it shares with the dispatcher (LoopWord). A new
connection goes only to a loop that waits, one per wait; the rest wait in the dispatcher
for the first loop that does, whichever worker it is. It costs a round trip per connection
through the dispatcher, so it is a setting for CPU-bound handlers, not the default.

The word counts the loop's waits: odd while it waits in select(), even while it runs. A
loop that starts to wait while connections wait for one (giveback's shared WAITING word)
writes a DONE record with the connection id WAKE to the done pipe, which wakes the
dispatcher. The dispatcher publishes WAITING and then reads the words again
(hotpath.HotPath.dispatch), so one of the two sees the other. Python has no memory fence,
and x86 may let a store wait behind a later load, so in theory both could miss; the
dispatcher then looks again after RECHECK (hotpath.HotPath.timeout).
"""

from __future__ import annotations

import mmap
import os
import selectors
from collections.abc import Callable
from typing import Any

from . import giveback, wire

WAKE = 0  # a DONE record's conn_id that names no connection (ids start at 1): a loop waits
RECHECK = 0.005  # seconds: while connections wait here, look at the words at least this often


_NEVER_WAITS = memoryview(bytearray(8)).cast("q")


class LoopWord:
    """One worker's word, made before the fork: the worker writes it, the dispatcher reads it."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE)
        self.word = memoryview(self._map).cast("q")
        self.fed = -1  # the dispatcher's: the wait it last sent a connection to (one per wait)

    def takes(self) -> int:
        """The dispatcher's question: the wait to feed (0: none), when the loop waits in
        select() and has not been sent a connection since it began to."""
        wait = self.word[0]
        return wait if wait & 1 and wait != self.fed else 0

    def close(self) -> None:
        """Unmapped; a look at it after this finds a loop that never waits, not an error in
        the dispatcher's loop (its worker is gone, or going)."""
        if self.word is _NEVER_WAITS:
            return
        self.word.release()
        self._map.close()
        self.word = _NEVER_WAITS


class WaitingSelector(selectors.EpollSelector):
    """The worker's selector for its asyncio loop: marks each wait in the shared word, and
    wakes the dispatcher when connections wait for a loop. A select() with a zero timeout
    is not a wait: the loop has callbacks ready to run. Nor is one that would return at
    once: the request of the connection just taken is usually there already, and a loop
    about to run it (for 5 ms of CPU, say) is no place for the next connection. Nor one
    while the worker could not start another (may_take): full, stopping, or waiting on a
    sync handler in its executor's one thread."""

    def __init__(
        self, word: LoopWord, done_pipe: int, pid: int, may_take: Callable[[], bool]
    ) -> None:
        super().__init__()
        self._word = word.word
        self._wake = wire.DONE.pack(pid, WAKE)
        self._done = done_pipe
        self._may_take = may_take  # the worker's: not full, stopping or computing

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if (timeout is not None and timeout <= 0) or not self._may_take():
            return super().select(timeout)
        ready = super().select(0)
        if ready:
            return ready
        word = self._word
        word[0] += 1  # odd: waiting. Before the look at WAITING: see the module's docstring
        if giveback.others_waiting():
            os.write(self._done, self._wake)
        try:
            return super().select(timeout)
        finally:
            word[0] += 1
