"""The hot path: accept, admit, assign to the least-busy worker, send, and count completions.

Runs once per loop turn for every connection, so it keeps to tuples, plain ints and local
names. A connection is `Pending` from accept until it is sent; the dispatcher holds its
descriptor until then. Once sent it is the worker's as soon as the worker reads it, and until
then it can be read back from the worker's queue (`recover`), so nothing is lost when a
worker dies with handoffs it never took.

Ready work only: on a listener whose handler waits for the client to speak first, a new
connection with nothing to read yet is held in `parking` instead, and so is a connection a
worker gives back (PARK); either joins `pending` once it is readable. While workers have
room, new connections go to them unchecked, and a worker gives back one that stays silent:
the FIONREAD that tells is then the worker's system call, not the dispatcher's.
"""

from __future__ import annotations

import fcntl
import logging
import operator
import os
import resource
import select
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import TypeVar

from . import channel, giveback, log, proxyproto, pull, wire
from .admission import Admission
from .completions import SENT
from .config import Config
from .direct import READ_EVERY
from .events import Event
from .listeners import NO_RESOURCES, PEER_GONE, AcceptPause, Listener
from .parking import (
    FIRST_BYTE,
    IDLE,
    PROXY,
    REQUEST,
    SHORT_FILE,
    UNREAD,
    Parking,
    deadline_for,
    waiting_bytes,
)
from .process import Pending, WorkerProcess

ACCEPT_BATCH = 64  # per listener per loop turn, so one busy listener cannot starve another
BUSY_LOG_INTERVAL = 60.0  # "all workers busy" (back-pressure, nothing lost)
REFUSED_LOG_INTERVAL = 10.0  # refusals and closes: counted, logged at most this often
_LOGGED_CLOSES = {
    "first-byte", "idle", "request", "too-large", PROXY, "proxy-invalid", "proxy-untrusted",
    UNREAD, SHORT_FILE,
}  # fmt: skip
FD_RESERVE = 128  # descriptors kept free of connections: workers' channels, logs, reloads
_NEVER = float("inf")
_ACCEPTED = (0.0, "", "")  # _served(): a connection given back that its worker accepted
_BUSY = operator.itemgetter(0)  # (connections in hand, wait, word, worker): _feed_loops()
# `accept = workers`: Linux holds a new connection back from accept() until its first bytes
# (or about this long) on a listener whose clients speak first, so a worker that accepts
# one seldom finds it silent and gives it back (direct.py).
DEFER_SECONDS = 1

# A sync worker (`p.solo`, from its READY) serves one connection at a time and, with
# `queue_ahead` (spec.py), queues more: each connection goes to it alone, so a queued one
# can be read back. An async worker reads its channel whenever its loop turns.
# A worker not heard from this long after a handoff may have left it unread: behind a long
# request, or in a loop that a handler blocks. rebalance() reads it back for another worker.
# Far longer than a fast connection takes, so churn moves nothing.
STEAL_AFTER = 0.002
# Sooner while a sync worker is idle: a connection queued behind a long request need not wait
# out STEAL_AFTER when a worker could start it now (mixed load: the fast requests' tail).
IDLE_STEAL_AFTER = 0.0005
# While no worker has room, reading a handoff back gets it started no sooner: a completion
# (reported: completions.py) must make room first, and one wakes the loop when it watches
# for them (watch_done()). So the loop then waits for one, or this long, not for
# STEAL_AFTER: longer than a kernel tick (4 ms at HZ=250). Sleeps that ended before the
# next tick cost the dispatcher about 8 us a connection in a VM under saturated churn with
# queue_ahead (HISTORY.md in bench/results; likely the kernel programming the CPU's timer).
# A stall's end (STALL_FOR), which gives room no completion announces, may come this much
# late: 10 ms on half a second.
FULL_STEAL_AFTER = 0.01
# A worker found with handoffs unread gets nothing new until it is heard from, or this long:
# an async worker serving only long-lived connections may have nothing to report for hours,
# so after a loop blocked for a moment it must not be passed over for good.
STALL_FOR = 0.5
# A sync worker that has not taken the first of its handoffs this long is frozen (SIGSTOP),
# not just waiting for a core: only then are its handoffs read back with it unstarted. Any
# sooner, and its waking up between two reads back would let the second overtake the first.
FROZEN_AFTER = 0.1
# A listener's backlog that back-pressure has kept from any accept this long counts as
# waiting (publish_waiting): long enough that churn, which accepts at every completion,
# never sets it off and makes workers hand back connections for nothing.
STUCK_AFTER = 0.01

T = TypeVar("T")
# A PROXY protocol listener's: its version, who may send the header, how its peers read.
Proxied = tuple[str, "proxyproto.Trusted", Callable[[object], str]]


def _unmutable(source: socket.socket | int, muted: bool) -> None:
    """HotPath.mute without a loop (the unit tests): nothing is watched."""


def _no_policy(due: set[int], now: float) -> None:
    """HotPath.recycle without a dispatcher (the unit tests): nobody recycles workers."""


def serving_capacity(p: WorkerProcess) -> int:
    """Connections a worker serves at once: a sync worker's other places are a queue."""
    return 1 if p.solo else p.w.capacity


class _Anyone:
    """Trusted already: checked when it was accepted."""

    def allows(self, addr: object) -> bool:
        return True


_ANYONE: proxyproto.Trusted = _Anyone()  # type: ignore[assignment]


def batches(items: list[Pending]) -> list[list[Pending]]:
    """Split one worker's share into handoff messages: at most wire.MAX_BATCH each, and a
    connection carrying bytes travels alone, so no message outgrows wire.MAX_MESSAGE."""
    for item in items:
        if item[4]:
            break
    else:
        if 0 < len(items) <= wire.MAX_BATCH:
            return [items]  # the usual case: a few plain connections
    plain = [item for item in items if not item[4]]
    out = [plain[i : i + wire.MAX_BATCH] for i in range(0, len(plain), wire.MAX_BATCH)]
    if len(plain) < len(items):
        out += [[item] for item in items if item[4]]
    return out


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
        epoll: select.epoll | None = None,
    ) -> None:
        self.listeners = listeners
        self.deferred: set[Listener] = set()  # new connections wait for data (dispatcher sets)
        self.admission = admission
        self.waiting = giveback.share_waiting()  # workers read it: see giveback.py
        self.parking = Parking(admission.release, epoll, self.waiting)
        self.timeouts = (0.0, 0.0, 0.0)  # first byte, idle, request (configure())
        self.max_carry = 0
        self.graceful = 30.0  # graceful_timeout (configure())
        self.send_until = _NEVER  # stopping: answers left to send go on until then (sending())
        # Listeners whose connections start with a PROXY header: (version, who may send it).
        self.proxied: dict[Listener, Proxied] = {}
        # conn_id -> (version, kind, due, the header's bytes so far, the balancer's address:
        # a LOCAL header's client, for the per-source limit): _proxy_header()
        self.headers: dict[int, tuple[str, str, float, bytes, object]] = {}
        self.proxy_timeout = 3.0
        self.may_park = True  # False near the descriptor limit: workers keep what they hold
        self.stopping = False
        self.next_fd_log = 0.0
        self.came_back = 0  # held connections that joined the queue since accept() ran
        self.read_limits()
        self.next_closed_log = 0.0
        self.closed_logged: Counter[str] = Counter()
        self.workers = workers  # every worker process, by pid (the dispatcher's table)
        self.routable = routable  # the workers that take work now (cached by the caller)
        self.on_broken = on_broken  # a channel that failed: its worker is dying
        # Workers that have served max_requests, as completions and parks tell: the
        # dispatcher's policy recycles them (the dispatcher sets it).
        self.recycle: Callable[[set[int], float], None] = _no_policy
        self.pending: deque[Pending] = deque()
        self.backlogged: set[Listener] = set(listeners)  # connections may already be queued
        self.left: set[Listener] = set()  # backlogs left to another of N (_leave_to_others)
        # Backlogged listeners whose new connections wake nobody (accept()), and the done
        # pipe while completions need wake nobody (watch_done()): the dispatcher sets mute to
        # its loop's Loop.mute.
        self.muted: set[Listener] = set()
        self.mute: Callable[[socket.socket | int, bool], None] = _unmutable
        self.accepting = True
        # `accept = workers` (direct.py): the listeners workers accept from now, which this
        # loop leaves alone; whether any worker has a seat to read (every turn), and when
        # it reads them next without one (with max_requests: READ_EVERY).
        self.direct: set[Listener] = set()
        self.seated = False
        self.next_seat_read = _NEVER
        self.max_requests = 0  # (configure())
        self.next_id = 0  # the last connection's id: they start at 1 (0 is pull.WAKE)
        self.served = 0
        self.pause = AcceptPause("accept")  # after EMFILE & co.
        self.next_busy_log = 0.0
        self.next_refused_log = 0.0
        # Every worker writes its finished connections to this one pipe (wire.DONE).
        self.done = False  # the done pipe is readable (done_readable())
        self.done_watched = True  # its completions wake the loop (watch_done())
        self.next_steal = _NEVER  # when rebalance() may next find an unread handoff
        self.may_queue = True  # a worker may leave handoffs unread (routes_changed())
        self.pull = False  # the workers that take work pull them (routes_changed(), pull.py)
        self.last_routes: list[WorkerProcess] = []
        self.ledgered: list[WorkerProcess] = []  # routes that note completions (routes_changed)
        self.accepted_at = 0.0  # the last turn that accepted a connection
        self.stuck = False  # a backlog has had no accept for STUCK_AFTER (accept())
        self.done_r, self.done_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.done_r, False)
        # Unread completions wait in the pipe while nothing needs them (watch_done()); a
        # worker writing to a full pipe would block. So past half the records it holds (64
        # KiB usually, one page for a user over fs.pipe-user-pages-soft) in workers' hands,
        # completions wake the loop again: each unread one is a connection still in hand.
        records = fcntl.fcntl(self.done_r, fcntl.F_GETPIPE_SZ) // wire.DONE.size
        self.unwatched_max = max(1, records // 2)

    def configure(self, config: Config) -> None:
        self.timeouts = (config.first_byte_timeout, config.idle_timeout, config.request_timeout)
        self.max_carry = config.max_carry
        self.graceful = config.graceful_timeout
        self.proxy_timeout = config.proxy_timeout
        self.max_requests = config.max_requests
        self.proxied = {}
        for lst in self.listeners:
            if version := config.proxy_protocol_for(lst.name):
                trusted = proxyproto.Trusted(config.proxy_allow_for(lst.name))
                self.proxied[lst] = (version, trusted, lst.format_peer)
        self.defer_accept()  # a reload may have turned PROXY on or off, here or in another of N

    def defer_accept(self) -> None:
        """TCP_DEFER_ACCEPT on each listener, as who reads a new connection first wants it:
        the PROXY header's reader (proxy_timeout), a worker that accepts for a client that
        speaks first (DEFER_SECONDS: direct.py), or else systemd's own setting. At every
        reload and change of who accepts."""
        for lst in self.listeners:
            if lst in self.proxied:
                proxyproto.defer_accept(lst.sock, self.proxy_timeout)
            elif lst in self.direct and lst in self.deferred:
                proxyproto.defer_accept(lst.sock, DEFER_SECONDS)
            elif lst.defer_accept is not None:
                proxyproto.restore_accept(lst.sock, lst.defer_accept)

    def restore_listeners(self) -> None:
        """At exit: the sockets stay systemd's, with its settings, for the next start (which
        would take what a PROXY listener, or workers that accept, left for systemd's own)."""
        for lst in self.listeners:
            if lst.defer_accept is not None and (lst in self.proxied or lst in self.direct):
                proxyproto.restore_accept(lst.sock, lst.defer_accept)

    def free_capacity(self) -> int:
        """Free places in the workers that take work. (Loops, not sum() over a generator:
        this runs on every loop turn, and a generator costs more than the sum.) With `pull`,
        one per worker that has room: a connection waits here only to be the next a loop
        takes, the rest in the backlog, where another dispatcher may take them."""
        free = 0
        if self.pull:
            for p in self.routable():
                free += len(p.w.handed) < p.w.capacity
            return free
        for p in self.routable():
            w = p.w
            if w.last_heard >= p.stalled_at:  # not one that left handoffs unread
                free += w.capacity - len(w.handed)
        return free

    def timeout(self, now: float, due: float) -> float:
        """How long the loop may wait for events before its next turn: not at all while
        connections wait in a listener's backlog and workers have room for them; else until
        `due` (the loop's own timers) or the first of the hot path's deadlines (rebalance()'s
        no sooner than FULL_STEAL_AFTER while no worker has room and a completion would wake
        the loop). It watches the done pipe or not first (watch_done()). One call before each
        wait, of which churn makes one for every connection or two (bench.turns counts a
        turn's calls)."""
        self.watch_done()
        # accept() would take from a backlog now (and may: not paused, not stopping)
        takes = bool(self.backlogged) and self.accepting and now >= self.pause.until
        steal = self.next_steal
        if takes or steal < due:
            free = self.free_capacity()
            if takes and free > len(self.pending):
                return 0.0
            if not free and self.done_watched:  # see FULL_STEAL_AFTER
                steal = max(steal, now + FULL_STEAL_AFTER)
        due = min(due, self.parking.next_deadline(), steal)
        if self.stopping and self.parking.unsent:  # answers still being sent: until when
            due = min(due, self.send_until)
        if self.pull and self.pending:  # should a loop's wake-up be missed (pull.py)
            due = min(due, now + pull.RECHECK)
        due = min(due, self.next_seat_read)
        # A backlog left waiting becomes `stuck` (accept() finds out) STUCK_AFTER after the
        # last accept: not while accept() would return at once (paused after EMFILE, or
        # stopping), or the loop would spin until it runs again.
        if takes and not self.stuck:
            due = min(due, self.accepted_at + STUCK_AFTER)
        if self.backlogged and self.pause.until > now:
            due = min(due, self.pause.until)  # accepting resumes then
        return max(0.0, due - now)

    def fd_limit(self) -> int:
        """Connections that may hold a descriptor here at once: every connection in flight
        can be parked back, so all count against it (accept() checks)."""
        return self.nofile - FD_RESERVE - 4 * len(self.workers)

    def read_limits(self) -> None:
        """RLIMIT_NOFILE, read again every second (prlimit can change it under us): not on
        every loop turn, where the system call would cost more than the check."""
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def accept(self, now: float) -> None:
        """Accept while workers have room (back-pressure: the rest waits in the kernel's
        backlog, nothing queues up in here); over the limits, accept only to refuse. On a
        listener whose connections are held until they speak, a silent one takes no room:
        accepting goes on until enough have spoken to fill the workers."""
        if not (self.accepting and now >= self.pause.until):
            return
        room = self.free_capacity() - len(self.pending)
        # Connections the workers gave back queue up here once they speak again, and could
        # keep `room` at nothing for ever: on a listener held until it speaks, as many new
        # ones as came back since the last turn queue with them, however full the queue.
        # Or keep-alive clients would starve the backlog.
        came_back, self.came_back = self.came_back, 0
        admission = self.admission
        held = self.held()
        allowed = admission.room(held)
        if allowed <= 0 and admission.full is not None and admission.elsewhere():
            self._leave_to_others()
            return
        admit = admission.admit if admission.max_per_source else None
        pending, parking, deferred = self.pending, self.parking, self.deferred
        first_id = self.next_id
        fd_room = self.fd_room(held, now)
        for listener in list(self.backlogged):
            accept, name, format_peer = listener.sock._accept, listener.name, listener.format_peer
            proxied = self.proxied.get(listener)
            hold = listener in deferred and fd_room > 0
            floor = came_back if hold else 0
            for n in range(ACCEPT_BATCH):
                if room <= 0 and allowed > 0 and n >= floor:
                    # Back-pressure: let it wait in the backlog. Every turn accepts from it
                    # again while it is backlogged: a new connection need wake nobody, which
                    # under load would be a turn for nothing most times one comes.
                    if listener not in self.muted:
                        self.muted.add(listener)
                        self.mute(listener.sock, True)
                    break
                try:
                    fd, addr = accept()  # socket._accept: (fd, addr), no socket object to build
                except BlockingIOError:
                    self.backlogged.discard(listener)
                    if listener in self.muted:  # nothing left: the next one must wake us
                        self.muted.discard(listener)
                        self.mute(listener.sock, False)
                    break
                except OSError as exc:
                    if exc.errno in PEER_GONE:
                        continue
                    if exc.errno not in NO_RESOURCES:
                        raise
                    self.pause(now, exc)
                    return
                self.next_id += 1
                if proxied and allowed > 0:  # its client is known once its header is read
                    allowed -= 1
                    fd_room -= 1
                    item = (self.next_id, fd, name, "", b"", 0)  # its PEER: the header's
                    check = hold and room <= 0  # as below: with room a worker checks
                    room -= self._proxy_header(item, proxied, addr, check, now)
                    continue
                if allowed <= 0 or (admit and not admit(self.next_id, addr)):
                    admission.refuse(fd)
                    continue
                item = (self.next_id, fd, name, format_peer(addr), b"", 0)
                allowed -= 1
                fd_room -= 1
                # With room, it goes to a worker unchecked, which gives it back if it stays
                # silent (worker.py, `silent`): the check costs the worker, not us.
                if hold and room <= 0 and not waiting_bytes(fd):  # nothing to read yet
                    parking.hold(item, FIRST_BYTE, deadline_for(FIRST_BYTE, now, 0, self.timeouts))
                else:
                    pending.append(item)
                    room -= 1
                hold = hold and fd_room > 0
        if self.next_id != first_id:
            self.accepted_at = now
        stuck = bool(self.backlogged) and now - self.accepted_at >= STUCK_AFTER
        if stuck != self.stuck:  # the dispatcher's loop wakes for it: see timeout()
            self.stuck = stuck
            self.publish_waiting()
        # "All busy" only once every worker has work: not while some are still starting.
        if room <= 0 and now >= self.next_busy_log and self.backlogged and self._all_busy():
            self._log_busy(now)

    def _leave_to_others(self) -> None:
        """One of N, at its share of max_connections while another has room: its backlogs
        are that one's to take (Admission.elsewhere()). They wake it no more, and count as
        nobody's wait, until its share has room again or every share is full (turn())."""
        for listener in self.backlogged:
            if listener not in self.muted:
                self.muted.add(listener)
                self.mute(listener.sock, True)
        self.left |= self.backlogged
        self.backlogged.clear()
        if self.stuck:
            self.stuck = False
            self.publish_waiting()

    def dispatch(self, now: float) -> None:
        pending = self.pending
        if self.pull:
            self._pull(now)
            return
        if len(pending) == 1:  # the usual turn: one connection, to the least busy
            # Of two as busy, the one heard from since its last handoff: the other's loop
            # may be blocked, with its handoff unread.
            best, most = None, 0
            for p in self.routable():
                w = p.w
                free = 2 * (w.capacity - len(w.handed)) - (p.unheard_since > w.last_heard)
                if free > most and w.last_heard >= p.stalled_at:
                    best, most = p, free
            if best is not None:
                self._send_one(best, pending.popleft(), now)
        else:
            room = {
                p: p.w.capacity - len(p.w.handed)
                for p in self.routable()
                if p.w.last_heard >= p.stalled_at
            }
            for target, items in assign(pending, room).items():
                if len(items) == 1 or target.solo:
                    for item in items:
                        self._send_one(target, item, now)
                    continue
                for batch in batches(items):
                    self._send(target, batch, now)
        self.publish_waiting()

    def _pull(self, now: float) -> None:
        """`pull` (pull.py): each worker whose loop waits for work gets one connection, the
        least busy first; the rest wait here. Then WAITING goes out and the words are read
        again, in that order: a loop that began to wait meanwhile either saw WAITING, and
        wakes us, or is seen now."""
        self._feed_loops(now)
        self.publish_waiting()
        if self.pending:
            self._feed_loops(now)
            self.publish_waiting()

    def _feed_loops(self, now: float) -> None:
        takers = []
        for p in self.routable():
            w, word = p.w, p.word
            if word is not None and (wait := word.takes()) and len(w.handed) < w.capacity:
                takers.append((len(w.handed), wait, word, p))
        takers.sort(key=_BUSY)
        pending = self.pending
        for _, wait, word, p in takers:
            if not pending:
                return
            item = pending.popleft()
            self._send_one(p, item, now)
            if item[0] in p.w.handed:  # sent (a failed send leaves the wait unfed)
                word.fed = wait

    def publish_waiting(self) -> None:
        """Tell the workers how many connections wait for one (giveback.receive ends a
        keep-alive client's turn while any do): those pending here, those queued ahead,
        and one more while a listener's backlog has waited STUCK_AFTER with no accept.
        Without that one, workers busy with keep-alive clients that never pause would
        never make room, and the backlog would wait for ever."""
        self.waiting[giveback.WAITING] = len(self.pending) + self.queued() + self.stuck

    def routes_changed(self, routes: list[WorkerProcess]) -> None:
        """The workers that take work changed (the caller caches them). Only a worker that
        takes more than one connection can leave handoffs unread (queue_ahead, or async):
        without one, nothing need look for them. What one that no longer takes work (a
        reload or a recycle retired it) left unread goes to the others, rather than wait
        behind its last long request; not at a stop, where no other is left."""
        if routes and self.may_park:  # (as rebalance())
            for p in self.last_routes:
                if p not in routes and p.w.capacity > 1 and p.pid in self.workers:
                    self._take_back(p, p.read_back(live=True))
        self._accepting(routes)
        self.last_routes = list(routes)
        self.ledgered = [p for p in routes if p.ledger is not None]  # completions.py
        self.may_queue = any(p.w.capacity > 1 for p in routes)
        self.pull = bool(routes) and all(p.pulls for p in routes)

    def _accepting(self, routes: list[WorkerProcess]) -> None:
        """`accept = workers` (direct.py): the workers that take work accept for themselves,
        told so (ACCEPT), and those that no longer do are told to stop. A listener any of
        them accepts from is theirs: this loop no longer watches it, and takes it back when
        none does (an async generation, a stop). Where clients speak first, Linux holds
        their connections back until they do (DEFER_SECONDS), so few go to a worker silent."""
        for p in self.last_routes:
            if p.accepting and p not in routes and p.pid in self.workers:
                p.tell_accepting(False)
        for p in routes:
            if p.accepts and not p.accepting:
                p.tell_accepting(True)
        fds = {fd for p in routes if p.accepting for _, fd, _ in p.accepts}
        direct = {lst for lst in self.listeners if lst.sock.fileno() in fds}
        for lst in direct - self.direct:  # theirs now
            self.mute(lst.sock, True)
            for held in (self.backlogged, self.muted, self.left):
                held.discard(lst)
        for lst in self.direct - direct:  # ours again: unmuted, a backlog wakes the loop
            self.mute(lst.sock, False)
        self.direct = direct
        self.defer_accept()  # (which clients speak first may have changed too: a reload)
        # Raised here, cleared only by read_seats(), which also ends its timer.
        self.seated = self.seated or any(p.seat is not None for p in self.workers.values())
        if self.stuck and not self.backlogged:  # a backlog no longer this loop's to wait on
            self.stuck = False
            self.publish_waiting()

    def read_seats(self, now: float) -> None:
        """What the workers that accept for themselves say in their seats (direct.py): the
        connection each has in hand counts as handed to it (busy, room, the hang watch,
        cut if it dies), what each has served as served (STATUS, max_requests). Every turn
        while any worker has a seat, and with max_requests at least every READ_EVERY."""
        due: set[int] = set()
        seated = False
        for p in self.workers.values():
            if p.seat is not None:
                seated = True
                self._read_seat(p, now, due)
        self.seated = seated
        self.next_seat_read = now + READ_EVERY if seated and self.max_requests else _NEVER
        if due:
            self.recycle(due, now)

    def _read_seat(self, p: WorkerProcess, now: float, due: set[int]) -> None:
        assert p.seat is not None
        served, conn, since, index, peer = p.seat.read()
        w = p.w
        if served != p.seat_served:
            more, p.seat_served = served - p.seat_served, served
            w.served += more
            self.served += more
            w.last_heard = now
            if w.max_served and w.served - more < w.max_served <= w.served:
                due.add(p.pid)
        if conn != p.seat_conn:
            if p.seat_conn:
                w.handed.pop(p.seat_conn, None)
            if conn:
                name = p.accepts[index][0] if 0 <= index < len(p.accepts) else ""
                w.handed[conn] = (since, name, peer)
            p.seat_conn = conn

    def _take_back(self, p: WorkerProcess, items: list[Pending]) -> None:
        """Handoffs read back from `p` (retired, or dead: recover()) are no longer its,
        and go first, before anything newer."""
        for item in items:
            p.w.handed.pop(item[0], None)
        self.pending.extendleft(reversed(items))

    def queued(self) -> int:
        """Connections queued ahead in sync workers' channels: waiting as much as pending
        ones, so a keep-alive client's turn ends for them too (giveback.receive)."""
        if not self.may_queue:
            return 0
        queued = 0
        for p in self.routable():
            w = p.w
            if p.solo and len(w.handed) > 1:
                queued += len(w.handed) - 1
        return queued

    def rebalance(self, now: float) -> None:
        """Handoffs that a worker not heard from for STEAL_AFTER (IDLE_STEAL_AFTER while a
        sync worker is idle) left unread go back to the front of the queue, and a worker that
        left one unread for STEAL_AFTER gets nothing new until it is heard from again:
        a sync worker behind a long request (queue_ahead), or an async worker whose loop a
        handler blocks. Without this, a fast request could wait out a slow one that happened
        to be ahead of it while other workers serve newer ones. SOCK_SEQPACKET gives a
        message to one reader only: what the worker took first, we do not read."""
        self.next_steal = due = _NEVER
        if not self.may_queue or not self.may_park:
            return  # (near the descriptor limit workers keep what they hold: see accept())
        moved: list[Pending] = []
        routes = self.routable()
        after = STEAL_AFTER
        for p in routes:
            if p.solo and not p.w.handed:  # a sync worker could start one now
                after = IDLE_STEAL_AFTER
                break
        for p in routes:
            since, heard = p.unheard_since, p.w.last_heard
            if heard < p.stalled_at:  # stalled: until heard from, or STALL_FOR
                if now < p.stalled_at + STALL_FOR:
                    due = min(due, p.stalled_at + STALL_FOR)
                    continue
                p.stalled_at = 0.0  # it may take work again: a handoff tells how it does
            if not since or since < heard:
                continue  # nothing sent, or heard from since: it reads its channel
            if since + after > now:  # the same sum as the loop's wake-up: no drift
                due = min(due, since + after)
                continue
            if p.solo and since + FROZEN_AFTER > now and p.took_none():
                # It has not yet taken the one it is to serve: reading that back would race
                # its taking the next, which would then overtake it. Look again until it
                # takes it (then only the queued one is left to read) or FROZEN_AFTER.
                due = min(due, now + STEAL_AFTER, since + FROZEN_AFTER)
                continue
            p.unheard_since = 0.0
            items = p.read_back(live=True)
            if not items:
                continue
            handed = p.w.handed
            sent = [handed.pop(item[0], None) for item in items]
            # Only a handoff left unread for STEAL_AFTER says the worker does not read its
            # channel: one sent a moment ago it may be about to take.
            stale = any(e is not None and e[0] + STEAL_AFTER <= now for e in sent)
            if not handed:  # it took none: not yet scheduled, or stopped (SIGSTOP). It keeps
                first = items.pop(0)  # its first, or it would never be heard from again,
                self._send_one(p, first, now)  # nor found hung: so from its first send on
                if first[0] in handed and sent[0] is not None:
                    handed[first[0]] = sent[0]
            if handed and stale:  # (not if that send failed: it would never be heard from)
                p.stalled_at = now  # nothing new until it is heard from, or STALL_FOR:
                due = min(due, now + STALL_FOR)  # then look again, if nothing else wakes us
            moved += items
        self.next_steal = min(self.next_steal, due)  # _send_one() may have set it
        if moved:  # before anything newer; dispatch() sends them on this turn
            self.pending.extendleft(reversed(moved))

    def _send(self, target: WorkerProcess, items: list[Pending], now: float) -> None:
        """Several connections in one message: only to an async worker (dispatch() sends a
        sync one each alone), which keeps no ledger (completions.py; dropped at its READY)."""
        entries = [(cid, name, peer, carry, t) for cid, _, name, peer, carry, t in items]
        data = wire.encode_handoff(entries, self.may_park)
        fds = [item[1] for item in items]
        try:
            channel.send(target.chan, data, fds)
        except OSError as exc:
            # Full queue or a dying worker: keep the connections, try them elsewhere.
            self.pending.extendleft(reversed(items))
            if not isinstance(exc, BlockingIOError):
                self.on_broken(target)
            return
        channel.close_all(fds)  # the message in the worker's queue holds them now
        w = target.w
        handed = w.handed
        for cid, _, name, peer, _, _ in items:
            handed[cid] = (now, name, peer)
        if self.may_queue and w.last_heard >= target.unheard_since:
            self._unheard(target, now)

    def _send_one(self, target: WorkerProcess, item: Pending, now: float) -> None:
        """_send() of a single connection, without the lists."""
        conn_id, fd, name, peer, carry, started = item
        try:
            channel.send_fd(
                target.chan, wire.encode_one(conn_id, name, peer, carry, started, self.may_park), fd
            )
        except OSError as exc:
            self.pending.appendleft(item)
            if not isinstance(exc, BlockingIOError):
                self.on_broken(target)
            return
        try:  # noqa: SIM105 - on the hot path a try costs less than suppress()
            os.close(fd)  # the message in the worker's queue holds it now
        except OSError:
            pass
        w = target.w
        w.handed[conn_id] = (now, name, peer)
        if target.ledger is not None:  # what the worker has queued: completions.py
            target.ledger.words[SENT] += 1
        if self.may_queue and w.last_heard >= target.unheard_since:
            self._unheard(target, now)

    def _unheard(self, p: WorkerProcess, now: float) -> None:
        """The first handoff to `p` since it was last heard from: if it stays unheard for
        STEAL_AFTER, rebalance() looks for what it left unread."""
        p.unheard_since = now
        due = now + STEAL_AFTER
        if due < self.next_steal:  # (a stall's end may be set, and later)
            self.next_steal = due

    def wants_completions(self) -> bool:
        """Whether a worker's completion should wake the loop: only when it could let
        something waiting go ahead (a connection pending here, in a backlog, or queued
        behind a sync worker's current one: rebalance()), while a stop drains, or when the
        done pipe could fill before a turn reads it. Otherwise the next turn, whatever wakes
        it, reads completions first: below saturation a connection then costs one wake-up
        (its accept), not two, as the plain accept-and-send loop's does."""
        self.routable()  # first: a change of routes may read handoffs back into pending
        if self.pending or self.backlogged or self.stopping or self.queued():
            return True
        if self.admission.full is not None and self.admission.max_total:
            return True  # one of N: each completion may say its share has room again
        return self.busy() >= self.unwatched_max

    def watch_done(self) -> None:
        """Before the loop waits: watch the done pipe or not, as wants_completions() says.
        Watched again, a pipe that has data wakes the loop at once (level-triggered), so no
        completion is missed."""
        wanted = self.wants_completions()
        if wanted != self.done_watched:
            self.done_watched = wanted
            self.mute(self.done_r, not wanted)

    def turn(self, now: float) -> None:
        """The loop's work after each wait, in this order: completions first (they make
        room, and may recycle a worker before it is sent more), handoffs left unread, held
        connections that spoke, the backlogs, then sending; held connections' deadlines
        last, so one that spoke in time is not closed for the wait."""
        self.catch_up(now)
        if now >= self.next_steal:
            self.rebalance(now)
        parking = self.parking
        if parking.events:
            self.unpark()
        if self.backlogged:
            self.accept(now)
        elif self.direct:
            self.fd_room(self.held(), now)
        if self.pending:
            self.dispatch(now)
        if parking.deadlines and parking.deadlines[0][0] <= now:
            parking.expire(now)
        admission = self.admission
        if admission.full is not None and not self.stopping:  # one of N: is its share full
            full = admission.publish(self.held())
            if self.left and (not full or not admission.elsewhere()):
                self.backlogged |= self.left  # its own to take again, or to refuse
                self.left.clear()

    def catch_up(self, now: float) -> None:
        """Read the done pipe if completions may wait there: it woke the loop, or it is not
        watched (watch_done()) and so wakes nobody. Each turn, and before a signal or an
        agent-check is answered (they count what is in hand)."""
        if self.done or not self.done_watched:
            self.read_done(now)
        if self.ledgered:
            self.read_ledgers(now)
        if self.seated:
            self.read_seats(now)

    def done_readable(self) -> None:
        """The loop's callback for the done pipe: turn() reads it after the poll."""
        self.done = True

    def read_done(self, now: float) -> bool:
        """Read finished connections of any number of workers; those that have now served
        their max_requests (usually none) go to `recycle`. False when there was nothing to
        read."""
        self.done = False
        try:
            data = os.read(self.done_r, wire.DONE_READ_SIZE)
        except BlockingIOError:
            return False
        self._finished(wire.decode_done(data), now)
        return True

    def read_ledgers(self, now: float) -> None:
        """The completions that sync workers noted and have not yet reported (completions.py):
        finished all the same, so their room, the limits and the hang clock count them now.
        Each turn, without a system call. Any id read there is a finished connection's, even
        one read half-written or stale, and the record that reports it later is ignored."""
        for p in self.ledgered:
            ledger = p.ledger
            if ledger is not None and ledger.waiting():
                self._finished([(p.pid, conn_id) for conn_id in ledger.pending()], now)

    def _finished(self, done: Iterable[tuple[int, int]], now: float) -> None:
        """(pid, conn_id) of finished connections: their room is free, their admission
        released; workers that have now served max_requests (usually none) go to
        `recycle`."""
        due: set[int] = set()
        release = self.admission.release if self.admission.sources else None
        idle = False
        for pid, conn_id in done:
            p = self.workers.get(pid)
            if p is not None and self._served(p, conn_id, now, due):
                idle = idle or (p.solo and not p.w.handed)
                if release:
                    release(conn_id)
        if idle and self.next_steal < _NEVER:  # a handoff unread elsewhere may go to it now
            self.next_steal = now
        if due:
            self.recycle(due, now)

    def _served(
        self,
        p: WorkerProcess,
        conn_id: int,
        now: float,
        due: set[int],
        served: int = 1,
        accepted: bool = False,
    ) -> tuple | None:
        """A worker is done with a connection (closed or parked): its room is free again;
        adds its pid to `due` when it has served max_requests. What it was handed, or None
        for a connection it did not hold (ignored). `served` 0: it gave back a connection
        that had sent nothing, which it did not serve. `accepted`: one it accepted itself
        and gave back (direct.py), held by it whether or not its seat was read since."""
        w = p.w
        handed = w.handed.pop(conn_id, None)
        if handed is None and accepted:
            handed = _ACCEPTED
        if handed is not None:
            w.last_heard = now
            w.served += served
            self.served += served
            if served and w.served == w.max_served:
                due.add(p.pid)
        return handed

    def park(self, p: WorkerProcess, msg: wire.Park, fd: int, now: float, unsent: int = -1) -> None:
        """A worker gave a connection back: hold it until it speaks again, or close it when
        it is over max_carry or the service is stopping with no request of it in flight;
        with `unsent` (a memfd, or a file), send the answer's rest first (parking.send:
        unpark() settles it). A worker it finds due for recycling goes to `recycle`, as
        read_done() sends one."""
        due: set[int] = set()
        handed = self._served(p, msg.conn_id, now, due, not msg.silent, bool(msg.listener))
        if handed is None:
            log.log.error("worker %d parked connection %d it did not hold", p.pid, msg.conn_id)
            channel.close_all([fd, unsent] if unsent >= 0 else [fd])
            return
        if msg.listener and p.seat_conn == msg.conn_id:  # the seat no longer shows it
            p.seat_conn = 0
        listener, peer = (msg.listener, msg.peer) if msg.listener else handed[1:]
        item = (msg.conn_id, fd, listener, peer, msg.carry, msg.started)
        if unsent >= 0:  # a request comes after it (begun, or pipelined): a stop waits for it
            work = not msg.close and bool(msg.ready or msg.carry or waiting_bytes(fd))
            self.parking.send(item, unsent, msg.span, msg.file, msg, self.timeouts[1], work)
        else:
            self._settle(item, msg, now)
        if due:
            self.recycle(due, now)

    def _settle(self, item: Pending, msg: wire.Park, now: float) -> None:
        """Where a connection given back goes: to a worker now, held, or closed."""
        fd = item[1]
        if msg.close:  # its answer is sent, and it was the last
            self.parking.drop(item, None)
        elif msg.ready:  # bytes nobody has looked at: work for a worker now
            self.pending.append(item)
            self.came_back += not msg.silent  # (silent: a new one a worker passed on)
            self.publish_waiting()
        elif msg.silent:  # new, and not a byte yet: as accept() holds one
            deadline = deadline_for(FIRST_BYTE, now, 0, self.timeouts)
            if self.stopping:
                deadline = min(deadline, now + giveback.STOP_FIRST_BYTE)
            self.parking.hold(item, FIRST_BYTE, deadline)
        elif len(msg.carry) > self.max_carry:
            self.parking.drop(item, "too-large")
        elif self.stopping and not msg.carry and not waiting_bytes(fd):
            self.parking.drop(item, "stopping")
        elif self.stopping and not self.routable():  # its answer was sent after the workers
            self.parking.drop(item, "stopping", discard=True)  # left: it ends whole, no reset
        else:  # a request begun, or (stopping) one that arrived already: in flight
            kind = REQUEST if msg.carry or self.stopping else IDLE
            deadline = deadline_for(kind, now, item[5], self.timeouts)
            self.parking.hold(item, kind, deadline, msg.want)  # want: its body's rest

    def _proxy_header(
        self,
        item: Pending,
        proxied: Proxied,
        addr: object,
        check: bool,
        now: float,
        got: bytes = b"",
    ) -> bool:
        """A new connection on a PROXY protocol listener: from a trusted balancer, its
        header read (or waited for, up to proxy_timeout), and then it is its client's: that
        address is PEER everywhere and counts against the per-source limit. The balancer's
        header and the request usually come in one segment, so this rarely waits. True when
        it joined `pending`; `check`: only if it has data (else it is held for it)."""
        version, trusted, own_peer = proxied
        if not trusted.allows(addr):
            self.parking.drop(item, "proxy-untrusted")
            return False
        try:
            header = proxyproto.take(item[1], version, got)
        except proxyproto.ProxyError as exc:
            log.log.debug("connection %d: bad PROXY header: %s", item[0], exc)
            self.parking.drop(item, "proxy-invalid")
            return False
        if isinstance(header, bytes):  # not all there yet: hold it until it is, or timeout
            item = (item[0], item[1], item[2], item[3] or own_peer(addr), b"", 0)
            due = self.headers.get(item[0], (version, "", now + self.proxy_timeout, b""))[2]
            self.headers[item[0]] = (version, FIRST_BYTE if check else "", due, header, addr)
            self.parking.hold(item, PROXY, due)
            return False
        if self.headers:
            self.headers.pop(item[0], None)
        client = addr if header.local or header.source is None else header.source
        admission = self.admission
        if admission.max_per_source and not admission.admit(item[0], client):
            admission.refuse(item[1])
            return False
        local = header.local or header.source is None  # served as the balancer's own
        own = (item[3] or own_peer(addr)) if local else ""
        item = (item[0], item[1], item[2], proxyproto.peer_text(header, own), b"", 0)
        if check and not waiting_bytes(item[1]):
            self.parking.hold(item, FIRST_BYTE, deadline_for(FIRST_BYTE, now, 0, self.timeouts))
            return False
        self.pending.append(item)
        return True

    def unpark(self) -> None:
        """The held connections that spoke join the queue for a worker (those waiting for
        their PROXY header read it first)."""
        parking = self.parking
        ready = parking.ready()
        if parking.sent:  # answers sent whole: their connections go on as parked then
            sent, parking.sent = parking.sent, []
            now = time.monotonic()
            for item, msg in sent:
                if item[4]:  # a request begun: its clock starts again, once the client had
                    item = (*item[:5], time.monotonic_ns())  # the answer before it (began())
                self._settle(item, msg, now)  # type: ignore[arg-type]
        if self.headers:
            ready = [item for item in ready if not self._header_came(item)]
        self.came_back += len(ready)
        self.pending.extend(ready)
        self.publish_waiting()

    def _header_came(self, item: Pending) -> bool:
        """True for a connection that was waiting for its PROXY header: read it now."""
        waiting = self.headers.get(item[0])
        if waiting is None:
            return False
        version, first, _, got, addr = waiting
        now = time.monotonic()
        self._proxy_header(item, (version, _ANYONE, str), addr, bool(first), now, got)
        return True

    def forget_headers(self, now: float) -> None:
        """Drop the records of PROXY headers waited for by connections closed since (timed
        out, or their peer left): once a second, not on the hot path."""
        if self.headers:
            self.headers = {cid: h for cid, h in self.headers.items() if h[2] > now}

    def undelivered(self) -> int:
        """Accepted and not yet with a worker, with a request to serve (or a first one to
        come): a stop lets workers finish only once these are handed over or closed. A
        connection queued behind a sync worker's current one counts: until that worker takes
        it, rebalance() may still move it to another, which a stop must not have retired."""
        return len(self.pending) + self.parking.in_flight + self.queued()

    def recover(self, p: WorkerProcess) -> int:
        """A worker died: take back the handoffs it never read (they go first to the next
        worker) and let go of the connections it held. Returns how many it held."""
        self._take_back(p, p.read_back())
        if p.seat is not None:  # what it had accepted itself is listed, and so cut
            self._read_seat(p, time.monotonic(), set())
        if p.ledger is not None:  # finished and never reported: served, not cut
            now = time.monotonic()
            for conn_id in p.ledger.pending():
                if self._served(p, conn_id, now, set()):
                    self.admission.release(conn_id)
        for conn_id in p.w.handed:  # still listed: they were in its hands and are gone
            self.admission.release(conn_id)
        lost = len(p.w.handed)
        p.w.handed.clear()
        return lost

    def _all_busy(self) -> bool:
        return all(p.w.handed for p in self.workers.values())

    def held(self) -> int:
        """Connections in hand: with workers, waiting for one, and parked. All count against
        max_connections and the descriptors."""
        return self.busy() + len(self.pending) + len(self.parking)

    def busy(self, sync: bool = False) -> int:
        """Connections in workers' hands. `sync`: those sync handlers may be serving: all of
        a sync worker's, and one of an async worker's (its executor's thread, one at a time).
        """
        busy = 0
        for p in self.workers.values():
            handed = len(p.w.handed)
            busy += handed if p.solo or not sync else min(handed, 1)
        return busy

    def stop_accepting(self) -> None:
        """On stop: no new connections, and the held ones with no request close now. A new
        one still silent gets giveback.STOP_FIRST_BYTE from its accept: a client that
        connected a moment ago is about to send its request, one silent for long (a
        browser's preconnect) would only hold up the stop."""
        self.accepting = False
        self.stopping = True
        self.send_until = time.monotonic() + self.graceful
        self.admission.withdraw()  # one of N: it takes nothing more, from now
        self.waiting[giveback.STOPPING] = 1  # workers keep what has a request to serve
        self.backlogged.clear()
        self.left.clear()
        self.muted.clear()  # (the caller unwatched the listeners)
        self.stuck = False  # nothing more is accepted: none waits for a worker there
        self.publish_waiting()
        self.parking.close_idle()
        # An answer being sent whose client has sent more since: a request, which the
        # workers must stay for (undelivered()), as for a parked one that spoke.
        self.parking.expect_work(lambda after: not after.close)  # type: ignore[attr-defined]
        first_byte = self.timeouts[0]
        if first_byte > giveback.STOP_FIRST_BYTE:
            self.parking.hurry(FIRST_BYTE, first_byte - giveback.STOP_FIRST_BYTE)

    def sending(self, now: float) -> bool:
        """Answers the workers left to send (parking.send) are still going out, and a stop
        gives them until graceful_timeout, as it gives the workers (a second Ctrl-C: until
        now): the dispatcher outlives its workers until then. Nothing accepted is cut short
        while it is being sent."""
        return bool(self.parking.unsent) and now < self.send_until

    def held_fds(self) -> list[int]:
        return [item[1] for item in self.pending] + self.parking.fds()

    def fd_room(self, held: int, now: float) -> int:
        """Descriptors left for connections; near the limit, parking stops (and starts
        again once there is room). accept() asks on every turn it runs; with workers
        accepting for themselves, turn() does, as their connections come back here."""
        fd_room = self.fd_limit() - held - len(self.parking.unsent)  # each a memfd or file too
        if fd_room <= held:  # near the limit: a connection a sync handler serves may come
            fd_room -= self.busy(sync=True)  # back with a memfd or file (unsent.py)
        if (fd_room > 0) != self.may_park:
            self._parking_allowed(fd_room > 0, now)
        return fd_room

    def _parking_allowed(self, allowed: bool, now: float) -> None:
        """Near the descriptor limit, workers keep what they hold and new connections go to
        them at once (or wait in the backlog): said once, then at most once a minute. That
        holds for handoffs they left unread too (rebalance() reads none back meanwhile)."""
        if allowed == self.may_park:
            return
        self.may_park = allowed
        self.waiting[giveback.NO_PARKING] = not allowed  # for what workers accept (direct.py)
        if allowed:
            self.next_steal = now  # look for what was left unread meanwhile
        if not allowed and now >= self.next_fd_log:
            self.next_fd_log = now + BUSY_LOG_INTERVAL
            log.event(
                Event.OVERLOAD,
                "near the descriptor limit (%d connections held): not parking connections "
                "until some close; raise LimitNOFILE= (logged at most once a minute)",
                self.held(),
                level=logging.WARNING,
            )

    # -- logs, rate-limited ------------------------------------------------------------------
    def _log_busy(self, now: float) -> None:
        self.next_busy_log = now + BUSY_LOG_INTERVAL
        log.event(
            Event.OVERLOAD,
            "all %d workers busy%s: new connections wait in the kernel backlog "
            "(logged at most once a minute)",
            len(self.workers),
            self.admission.share,  # one of N: its own workers, another's may be free
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
                "max_connections_per_source=%d%s; logged at most every %gs)",
                refused,
                a.max_total,
                a.max_per_source,
                a.share,
                REFUSED_LOG_INTERVAL,
                level=logging.WARNING,
                REFUSED=refused,
            )

    def log_closed(self, now: float) -> None:
        """What the dispatcher closed while it held it, by why: at most every
        REFUSED_LOG_INTERVAL, as refusals. Not the clients that closed their own keep-alive
        connections, nor those closed by a stop, which says so itself: those are normal."""
        closed = self.parking.closed
        fresh = {
            why: n - self.closed_logged[why] for why, n in closed.items() if why in _LOGGED_CLOSES
        }
        fresh = {why: n for why, n in fresh.items() if n}
        if fresh and now >= self.next_closed_log:
            self.next_closed_log = now + REFUSED_LOG_INTERVAL
            self.closed_logged = closed.copy()
            fields = {f"CLOSED_{why.upper().replace('-', '_')}": n for why, n in fresh.items()}
            log.event(
                Event.CLOSED_WAITING,
                "closed %d connections waiting in the dispatcher: %s (logged at most every %gs)",
                sum(fresh.values()),
                ", ".join(f"{n} {why}" for why, n in sorted(fresh.items())),
                REFUSED_LOG_INTERVAL,
                **fields,
            )
