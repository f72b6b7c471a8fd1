"""`accept = workers`: idle sync workers accept new connections themselves.

The dispatcher's relay (accept, send the descriptor, close it, read the completion) costs
it tens of microseconds a connection on the cores the workers and clients share, and with
churn that is the gap to a shared-accept pool (bench/results/HISTORY.md). With this
setting each sync worker keeps the listeners it was given at its fork and, while it is
idle, waits in one epoll on its channel and on them. The kernel wakes one idle waiter
(EPOLLEXCLUSIVE), so a connection still goes to a worker with nothing in hand: the least
busy there is. What only the dispatcher can do stays there:
- a connection a worker accepted and finds silent, or a keep-alive client between
  requests, is given back (PARK names its listener and peer), and comes back through the
  channel once it speaks: ready work only, nothing pinned;
- the channel comes first: a connection coming back is taken before a new one. The
  kernel woke this worker alone for the new one, so a worker woken for a listener that
  takes a handoff first passes the new connection on to the dispatcher at once (a PARK
  that says so), for another idle worker: it waits behind nothing;
- PROXY listeners, agent-checks and async workers are the dispatcher's, as before.

A worker accepts only between the dispatcher's ACCEPT on and off: from when it takes
work (its generation is serving) until it is retired or recycled. So a reload's workers
take nothing before the reload is whole, and a stop's backlog stays with systemd.

The dispatcher never sees these connections start or end. Each worker's `Seat`, a page it
shares with the dispatcher, says what it serves now and how many it has served; the
dispatcher reads it on every turn (with `max_requests`, at least every READ_EVERY), for
STATUS, the hang watch, max_requests and what a dead worker cut. No system call is spent
on it.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import time
from collections.abc import Iterable

from . import giveback, wire
from .connection import set_current
from .listeners import NO_RESOURCES, PEER_FORMAT, PEER_GONE, AcceptPause, Listener

DIRECT = 1 << 62  # the ids of connections a worker accepted: DIRECT | pid << 32 | n
READ_EVERY = 0.1  # seconds between the dispatcher's reads of the seats, at most
RECHECK = 0.25  # an idle worker looks at its listeners at least this often (Acceptor.wait)
# The seat's words, then the peer's bytes: served, the connection in hand (0: none), when it
# began (CLOCK_MONOTONIC ns), which of the worker's listeners, the peer's length.
_SERVED, _CONN, _SINCE, _LISTENER, _PEER_LEN = range(5)
_PEER_AT = 64
_PEER_MAX = 256

# (name, the listening socket's descriptor, its (family, type, proto)): what a worker
# accepts from, as the dispatcher lists them in its spec (spec.py)
Accepts = tuple[tuple[str, int, tuple[int, int, int]], ...]


class Seat:
    """One worker's page, made before the fork: the worker writes, the dispatcher reads."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE)
        self.words = memoryview(self._map)[:_PEER_AT].cast("q")

    # -- the worker's side ------------------------------------------------------------------
    def took(self, conn_id: int, listener: int, peer: str) -> None:
        """A connection in hand: its id last, so a read that sees it sees the rest."""
        words = self.words
        data = wire.peer_bytes(peer)[:_PEER_MAX]
        self._map[_PEER_AT : _PEER_AT + len(data)] = data
        words[_PEER_LEN] = len(data)
        words[_LISTENER] = listener
        words[_SINCE] = time.monotonic_ns()
        words[_CONN] = conn_id

    def done(self, served: bool) -> None:
        """None in hand: given back (PARK counts it), or finished, and counted here."""
        words = self.words
        words[_CONN] = 0
        if served:
            words[_SERVED] += 1

    def undo(self, conn_id: int) -> None:
        """In hand again, as took() left it: a PARK that was not sent (done() left the rest
        of the page alone, its time too, so the hang clock runs on)."""
        self.words[_CONN] = conn_id

    # -- the dispatcher's side --------------------------------------------------------------
    def read(self) -> tuple[int, int, float, int, str]:
        """(served, connection in hand or 0, since (monotonic seconds), listener, peer).
        A connection begun while this read shows 0 in hand: the next read sees it."""
        words = self.words
        served, conn = words[_SERVED], words[_CONN]
        if not conn:
            return served, 0, 0.0, 0, ""
        since, listener, size = words[_SINCE], words[_LISTENER], words[_PEER_LEN]
        peer = self._map[_PEER_AT : _PEER_AT + min(size, _PEER_MAX)]
        if words[_CONN] != conn:  # it moved on meanwhile
            return served, 0, 0.0, 0, ""
        return served, conn, since / 1e9, listener, peer.decode(errors="surrogateescape")

    def close(self) -> None:
        self.words.release()
        self._map.close()


class Acceptor:
    """A sync worker's own accepts: one epoll for its channel and its listeners."""

    def __init__(self, chan: socket.socket, accepts: Accepts, seat: Seat) -> None:
        self.seat = seat
        self.chan = chan.fileno()
        self.epoll = select.epoll()
        self.epoll.register(self.chan, select.EPOLLIN)
        self.listeners = [
            (name, socket.socket(*kind, fileno=fd), PEER_FORMAT[kind[0]], kind)
            for name, fd, kind in accepts
        ]
        self.backlogs = select.poll()  # for giveback.others_waiting()
        for _, sock, _, _ in self.listeners:
            self.backlogs.register(sock.fileno(), select.POLLIN)
        self.on = False  # the dispatcher's ACCEPT says
        self.armed = False  # the listeners are in the epoll
        self.woken = False  # the last wait ended for a listener: see wait()
        self.first = 0  # the listener to try first: each in turn, so none starves another
        self.pause = AcceptPause("worker accept")
        self.next_id = DIRECT | os.getpid() << 32

    def turn(self, on: bool) -> None:
        """ACCEPT: while on, a keep-alive client's turn also ends for a connection waiting
        in a listener's backlog (no idle worker took it)."""
        self.on = on
        giveback._backlogs = self.backlogs if on else None

    def _may_take(self, now: float) -> bool:
        """Told to accept, no stop begun, no pause after EMFILE."""
        return self.on and not giveback.stopping() and now >= self.pause.until

    def take(self) -> tuple[wire.Handoff, socket.socket] | None:
        """A new connection, if one waits and this worker may take it."""
        if not self._may_take(time.monotonic()):
            return None
        count = len(self.listeners)
        for turn in range(count):
            index = (self.first + turn) % count
            name, sock, format_peer, kind = self.listeners[index]
            try:
                fd, addr = sock._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in PEER_GONE:
                    continue
                if exc.errno not in NO_RESOURCES:
                    raise
                set_current(None)  # its record is not about the last connection served
                self.pause(time.monotonic(), exc)
                return None
            self.first = (index + 1) % count
            self.woken = False
            self.next_id += 1
            peer = format_peer(addr)
            self.seat.took(self.next_id, index, peer)
            conn = socket.socket(*kind, fileno=fd)
            return wire.Handoff(self.next_id, name, peer, may_park=giveback.parking()), conn
        return None

    def wait(self) -> None:
        """Until the channel or (while it may accept) a listener is readable; `woken` says
        whether a listener was. Never longer than RECHECK: an exclusive wake-up that its
        worker left (it was retired meanwhile, or exited) would otherwise leave a connection
        in the backlog until the next one came."""
        now = time.monotonic()
        until = self.pause.until
        wanted = self._may_take(now)
        if wanted != self.armed:  # level-triggered: a backlog it may not take would spin
            for _, sock, _, _ in self.listeners:
                if wanted:
                    self.epoll.register(sock.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
                else:
                    self.epoll.unregister(sock.fileno())
            self.armed = wanted
        timeout = min(RECHECK, until - now) if self.on and until > now else RECHECK
        events = self.epoll.poll(timeout)
        self.woken = any(fd != self.chan for fd, _ in events)


def listening(listeners: Iterable[Listener]) -> Accepts:
    """The listening sockets as a spec lists what a worker may accept from."""
    return tuple((lst.name, lst.sock.fileno(), lst.kind) for lst in listeners)


def close_all(accepts: Accepts) -> None:
    """A worker that will not accept (an async one) keeps no listener."""
    for _, fd, _ in accepts:
        os.close(fd)
