"""The hot path: accept, admit, assign to the least-busy worker, send, and count completions.

Runs once per loop turn for every connection, so it keeps to tuples, plain ints and local
names. A connection is `Pending` from accept until it is sent; the dispatcher holds its
descriptor until then. Once sent it is the worker's as soon as the worker reads it, and until
then it can be read back from the worker's queue (`recover`), so nothing is lost when a
worker dies with handoffs it never took.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from . import channel, log, wire
from .admission import Admission
from .events import Event
from .listeners import Listener
from .process import Pending, WorkerProcess

ACCEPT_BATCH = 64  # per listener per loop turn, so one busy listener cannot starve another
ACCEPT_PAUSE = 0.5  # seconds to wait after EMFILE & co. before accepting again
BUSY_LOG_INTERVAL = 60.0  # "all workers busy" (back-pressure, nothing lost)
REFUSED_LOG_INTERVAL = 10.0  # refusals and accept errors: counted, logged at most this often
_PEER_GONE = {errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET, errno.EINTR}
_NO_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

T = TypeVar("T")


def assign(pending: deque[Pending], room: dict[T, int]) -> dict[T, list[Pending]]:
    """Hand out pending connections, each to the target with the most room at that moment
    (ties go to the first listed); pops what it assigns from `pending`, changes `room`."""
    room = {t: free for t, free in room.items() if free > 0}
    batches: dict[T, list[Pending]] = {}
    while pending and room:
        best = max(room, key=room.__getitem__)  # first listed wins a tie
        batches.setdefault(best, []).append(pending.popleft())
        room[best] -= 1
        if not room[best]:
            del room[best]
    return batches


class HotPath:
    def __init__(
        self,
        listeners: list[Listener],
        admission: Admission,
        workers: dict[int, WorkerProcess],
        routable: Callable[[], list[WorkerProcess]],
        on_broken: Callable[[WorkerProcess], None],
    ) -> None:
        self.listeners = listeners
        self.admission = admission
        self.workers = workers  # every worker process, by pid (the dispatcher's table)
        self.routable = routable  # the workers that take work now (cached by the caller)
        self.on_broken = on_broken  # a channel that failed: its worker is dying
        self.pending: deque[Pending] = deque()
        self.backlogged: set[Listener] = set(listeners)  # connections may already be queued
        self.accepting = True
        self.next_id = 0
        self.served = 0
        self.paused_until = 0.0
        self.accept_errors = 0
        self.next_accept_error_log = 0.0
        self.next_busy_log = 0.0
        self.next_refused_log = 0.0
        # Every worker writes its finished connections to this one pipe (wire.DONE).
        self.done_r, self.done_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.done_r, False)

    def free_capacity(self) -> int:
        return sum(p.w.capacity - len(p.w.handed) for p in self.routable())

    def can_accept(self, now: float) -> bool:
        return bool(self.backlogged) and self.accepting and now >= self.paused_until

    def has_work(self, now: float) -> bool:
        """Connections wait in a listener's queue and workers have room for them."""
        return self.can_accept(now) and self.free_capacity() > len(self.pending)

    def accept(self, now: float) -> None:
        """Accept while workers have room (back-pressure: the rest waits in the kernel's
        backlog, nothing queues up in here); over the limits, accept only to refuse."""
        if not self.can_accept(now):
            return
        room = self.free_capacity() - len(self.pending)
        admission = self.admission
        busy = self.busy() + len(self.pending) if admission.max_total else 0
        allowed = admission.room(busy)
        admit = admission.admit if admission.max_per_source else None
        pending = self.pending
        for listener in list(self.backlogged):
            accept, name, format_peer = listener.sock._accept, listener.name, listener.format_peer
            for _ in range(ACCEPT_BATCH):
                if room <= 0 and allowed > 0:
                    break  # back-pressure: let it wait in the backlog
                try:
                    fd, addr = accept()  # socket._accept: (fd, addr), no socket object to build
                except BlockingIOError:
                    self.backlogged.discard(listener)
                    break
                except OSError as exc:
                    if exc.errno in _PEER_GONE:
                        continue
                    if exc.errno not in _NO_RESOURCES:
                        raise
                    self._pause(now, exc)
                    return
                self.next_id += 1
                if allowed <= 0 or (admit and not admit(self.next_id, addr)):
                    admission.refuse(fd)
                    continue
                pending.append((self.next_id, fd, name, format_peer(addr)))
                room -= 1
                allowed -= 1
        if room <= 0 and now >= self.next_busy_log and self.backlogged and self.busy():
            self._log_busy(now)

    def dispatch(self, now: float) -> None:
        room = {p: p.w.capacity - len(p.w.handed) for p in self.routable()}
        for target, items in assign(self.pending, room).items():
            for start in range(0, len(items), wire.MAX_FDS):
                self._send(target, items[start : start + wire.MAX_FDS], now)

    def _send(self, target: WorkerProcess, items: list[Pending], now: float) -> None:
        data = wire.encode_handoff([(cid, name, peer) for cid, _, name, peer in items])
        fds = [fd for _, fd, _, _ in items]
        try:
            channel.send(target.chan, data, fds)
        except OSError as exc:
            # Full queue or a dying worker: keep the connections, try them elsewhere.
            self.pending.extendleft(reversed(items))
            if not isinstance(exc, BlockingIOError):
                self.on_broken(target)
            return
        channel.close_all(fds)  # the message in the worker's queue holds them now
        handed = target.w.handed
        for cid, _, name, peer in items:
            handed[cid] = (now, name, peer)

    def completed(self, now: float) -> set[int] | None:
        """Read finished connections of any number of workers: the pids of those that have
        now served their max_requests (usually none), None when there was nothing to read."""
        try:
            data = os.read(self.done_r, wire.DONE_READ_SIZE)
        except BlockingIOError:
            return None
        pids = set()
        release = self.admission.release if self.admission.sources else None
        for pid, conn_id in wire.decode_done(data):
            p = self.workers.get(pid)
            if p is None or p.w.handed.pop(conn_id, None) is None:
                continue  # not a connection of that worker: ignore
            w = p.w
            w.last_heard = now
            w.served += 1
            self.served += 1
            if w.served == w.max_served:
                pids.add(pid)
            if release:
                release(conn_id)
        return pids

    def recover(self, p: WorkerProcess) -> int:
        """A worker died: take back the handoffs it never read (they go first to the next
        worker) and let go of the connections it held. Returns how many it held."""
        recovered = p.read_back()
        for conn_id, _, _, _ in recovered:
            p.w.handed.pop(conn_id, None)
        self.pending.extendleft(reversed(recovered))
        for conn_id in p.w.handed:  # still listed: they were in its hands and are gone
            self.admission.release(conn_id)
        lost = len(p.w.handed)
        p.w.handed.clear()
        return lost

    def busy(self) -> int:
        return sum(len(p.w.handed) for p in self.workers.values())

    def stop_accepting(self) -> None:
        self.accepting = False
        self.backlogged.clear()

    def held_fds(self) -> list[int]:
        return [fd for _, fd, _, _ in self.pending]

    # -- logs, rate-limited ------------------------------------------------------------------
    def _log_busy(self, now: float) -> None:
        self.next_busy_log = now + BUSY_LOG_INTERVAL
        log.event(
            Event.OVERLOAD,
            "all %d workers busy: new connections wait in the kernel backlog "
            "(logged at most once a minute)",
            len(self.workers),
            level=logging.WARNING,
        )

    def log_refused(self, now: float) -> None:
        refused = self.admission.refused_since_log
        if refused and now >= self.next_refused_log:
            self.next_refused_log = now + REFUSED_LOG_INTERVAL
            self.admission.refused_since_log = 0
            a = self.admission
            log.event(
                Event.OVERLOAD,
                "refused %d connections over the limits (max_connections=%d, "
                "max_connections_per_source=%d; logged at most every %gs)",
                refused,
                a.max_total,
                a.max_per_source,
                REFUSED_LOG_INTERVAL,
                level=logging.WARNING,
                REFUSED=refused,
            )

    def _pause(self, now: float, exc: OSError) -> None:
        """Out of descriptors or memory: retrying at once would spin, so pause; log the
        first failure and then a count at most every REFUSED_LOG_INTERVAL."""
        self.paused_until = now + ACCEPT_PAUSE
        self.accept_errors += 1
        if now >= self.next_accept_error_log:
            self.next_accept_error_log = now + REFUSED_LOG_INTERVAL
            log.event(
                Event.ACCEPT_ERROR,
                "accept failed %d times: %s; retrying every %gs (logged at most every %gs)",
                self.accept_errors,
                exc.strerror,
                ACCEPT_PAUSE,
                REFUSED_LOG_INTERVAL,
                level=logging.WARNING,
            )
            self.accept_errors = 0
