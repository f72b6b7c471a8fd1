"""The dispatcher's picture of its workers: pure bookkeeping, no I/O.

A connection is `Pending` from accept until it is sent to a worker; the dispatcher holds its
descriptor until then. Once sent, it is the worker's as soon as the worker reads it, and
until then the dispatcher can read it back from the worker's queue (see dispatcher.py).
"""

from __future__ import annotations

import os
import signal
import socket
from collections import deque
from dataclasses import dataclass, field

from .config import Config
from .worker import WorkerSpec

# (conn_id, fd, listener name, peer): a tuple, because millions are made on the hot path
Pending = tuple[int, int, str, str]


@dataclass
class Generation:
    """Workers started from one configuration; a reload starts the next one."""

    number: int
    config: Config
    spec: WorkerSpec
    start_failures: int = 0  # consecutive workers that died before READY
    last_failure: str = ""
    recycling: list[Worker] = field(default_factory=list)  # to retire as replacements get ready

    @property
    def max_start_failures(self) -> int:
        return self.config.workers + 4


@dataclass(eq=False)
class Worker:
    pid: int
    generation: int
    chan: socket.socket  # our end of the channel
    inbox: socket.socket  # a copy of the worker's end: what it never read can be read back
    capacity: int = 0  # 0 until READY
    in_flight: int = 0  # sent and not reported done
    # conn_id -> (when sent, listener, peer), oldest first: for hang reports and limits
    handed: dict[int, tuple[float, str, str]] = field(default_factory=dict)
    retiring: bool = False  # told to stop, or being killed: gets no more work
    gone: bool = False  # its channel closed: waiting to be reaped
    served: int = 0
    failure: str = ""  # what it said when it could not start
    stacks: int = -1  # memfd its faulthandler writes to
    last_heard: float = 0.0  # monotonic time of its last message
    max_served: int = 0  # recycle after this many connections (0: never)
    recycling: bool = False  # a replacement is starting; retire once it is ready
    killed_for: str = ""  # why we killed it: "hung"; "retired" once told to stop
    dump_asked: float = 0.0  # when we asked for its stacks (hang), 0 if not
    hung_on: tuple[int, float, str, str] = (0, 0.0, "", "")  # conn_id, since, listener, peer
    retire_deadline: float = 0.0  # told to stop: killed if still there by then

    @property
    def ready(self) -> bool:
        return self.capacity > 0

    @property
    def free(self) -> int:
        if self.retiring or self.gone:
            return 0
        return max(0, self.capacity - self.in_flight)


def assign(pending: deque[Pending], workers: list[Worker]) -> dict[Worker, list[Pending]]:
    """Hand out pending connections, each to the worker with the most free capacity
    at that moment (ties go to the first listed); mutates `pending` and `in_flight`."""
    room = {w: free for w in workers if (free := w.free) > 0}
    batches: dict[Worker, list[Pending]] = {}
    while pending and room:
        best = max(room, key=room.__getitem__)  # first listed wins a tie
        batches.setdefault(best, []).append(pending.popleft())
        best.in_flight += 1
        room[best] -= 1
        if not room[best]:
            del room[best]
    return batches


def describe_status(code: int) -> str:
    """A waitpid status in words, for the journal."""
    if os.WIFSIGNALED(code):
        sig = os.WTERMSIG(code)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        core = " (core dumped)" if os.WCOREDUMP(code) else ""
        return f"killed by signal {name}{core}"
    return f"exited with status {os.waitstatus_to_exitcode(code)}"
