"""A HotPath over fake workers, for the hot path's decisions: each worker a real channel
(SOCK_SEQPACKET socketpair) whose far end the test reads, and real descriptors; no processes."""

from __future__ import annotations

import os
import socket

from sockpool import channel, giveback, wire
from sockpool.admission import Admission
from sockpool.completions import Ledger
from sockpool.config import Config
from sockpool.direct import Seat, listening
from sockpool.hotpath import HotPath
from sockpool.listeners import Listener
from sockpool.process import WorkerProcess
from sockpool.pull import LoopWord
from sockpool.states import Worker, WorkerState

T0 = 100.0  # the monotonic clock, some time after start-up


class Pool:
    """HotPath over fake workers: each a real channel whose far end the test reads."""

    def __init__(
        self,
        capacities: list[int],
        solo: bool = True,
        pull: bool = False,
        ledger: bool = False,
        listeners: list[Listener] | None = None,
    ) -> None:
        """`listeners`: the workers accept from them themselves (accept = workers)."""
        accepts = listening(listeners or [])
        self.procs: dict[int, WorkerProcess] = {}
        self.ends: dict[int, socket.socket] = {}
        for pid, capacity in enumerate(capacities, start=1):
            ours, theirs = channel.pair()
            ours.setblocking(False)
            w = Worker(pid, 1, WorkerState.READY, capacity)
            word = LoopWord() if pull else None
            book = Ledger() if ledger else None  # queue_ahead >= 2: completions.py
            seat = Seat() if accepts else None
            self.procs[pid] = WorkerProcess(
                pid, ours, theirs, os.memfd_create("stacks"), w, word, book, seat, accepts
            )
            self.procs[pid].solo = solo  # as its READY says
            self.ends[pid] = theirs
        routes = list(self.procs.values())
        self.hot = HotPath(
            listeners or [], Admission(Config()), self.procs, lambda: routes, self.broken
        )
        self.hot.routes_changed(routes)  # as the dispatcher does when it rebuilds the routes
        self.broken_ones: list[int] = []

    def broken(self, p: WorkerProcess) -> None:
        self.broken_ones.append(p.pid)

    def accept(self, conn_id: int, now: float = T0) -> None:
        """A connection, as the accept loop would queue it, then dispatched."""
        fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self.hot.pending.append((conn_id, fd, "main", "peer", b"", 0))
        self.hot.dispatch(now)

    def three(self) -> None:
        """Connections 1, 2 and 3: least busy first, so 1 to worker 1, 2 to worker 2, and 3
        queued behind 1 at worker 1."""
        for conn_id in (1, 2, 3):
            self.accept(conn_id)

    def take(self, pid: int) -> list[int]:
        """The worker reads one message: the conn_ids it got (their descriptors closed)."""
        message = channel.receive(self.ends[pid], channel.DONTWAIT)
        assert message is not None
        data, fds = message
        channel.close_all(fds)
        handoffs = wire.decode_to_worker(data, len(fds))
        assert isinstance(handoffs, list)
        return [h.conn_id for h in handoffs]

    def finish(self, pid: int, conn_id: int, now: float) -> None:
        os.write(self.hot.done_w, b"".join(wire.encode_done(pid, [conn_id])))
        self.hot.read_done(now)

    def handed(self, pid: int) -> list[int]:
        return list(self.procs[pid].w.handed)

    def close(self) -> None:
        for p in self.procs.values():
            p.close()  # and with the channels, what is still queued in them
        for end in self.ends.values():
            end.close()
        channel.close_all([self.hot.done_r, self.hot.done_w, *self.hot.held_fds()])
        self.hot.parking.close()
        # The word is this process's (giveback.share_waiting), as in a dispatcher: what was
        # queued here must not have the next test's receive() park for others.
        self.hot.waiting[giveback.WAITING] = 0
        self.hot.waiting[giveback.NO_PARKING] = 0
