"""Connections the dispatcher holds until they have work: the other half of ready-work dispatch.

Two kinds wait here. New connections on a listener whose handler waits for the client to
speak first (a user-space TCP_DEFER_ACCEPT, which Linux only half honours), and connections
a worker gave back between requests or in the middle of one (giveback.py). Each is watched,
one-shot, on the main loop's own epoll, so ten thousand idle connections cost the loop
nothing until one of them speaks, and one that speaks costs no extra system call. A readable
hot path's queue with its carried bytes and its connection id; the rest are closed at their
deadline, counted by why:

    first-byte   a new connection that sent nothing within first_byte_timeout
    idle         a parked connection with no request begun, after idle_timeout
    request      a request begun and not read whole within request_timeout
    peer-closed  the client closed a parked connection (no data: nothing to serve), or
                 reset one, or half-closed one between requests
    unread       the rest of an answer, left to us by a worker, that the client did not
                 take for idle_timeout
    short-file   an application's file left to us to send ended before the bytes its
                 answer promised (cut short since): the client sees the answer end early

The last two: a sync worker whose client reads slowly leaves the answer's rest here, in a
memfd (unsent.py), or a file's rest as the file itself, and is free for the next connection.
We send it as the client takes it, with sendfile(), then close the connection or hold it as
the worker would have parked it. A file is read as it is sent, as nginx's sendfile reads
it: from the page cache, which the kernel's readahead fills ahead of a sequential reader.

A slow upload comes the other way. A worker that parks a request whose body has not all
come says how many bytes are still to come (`want`), and the connection is held until they
are all in its receive buffer: SO_RCVLOWAT, which TCP's poll honours, and for which the
kernel grows the buffer. So the kernel keeps the body, not the worker, and not us: no copy,
and one wake-up when it is whole, or its client closes. TCP's poll also reports it sooner,
whenever the window it last advertised is nearly used up (so a sender that fills it is not
left waiting): then it is watched again as long as each such wake-up finds more bytes than
the last, and goes to a worker when one finds none (a client that fills the window is not
slow; the buffer, or the memory for it, may be full).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import os
import select
import socket
import stat
import sys
import termios
import time
from collections import Counter
from collections.abc import Callable

from .giveback import BUFFERED, UNSENT
from .process import Pending
from .unsent import in_memory, send_what_fits

_WATCH = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT
_SEND = select.EPOLLOUT | select.EPOLLONESHOT
_GONE = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_BROKEN = select.EPOLLHUP | select.EPOLLERR  # both ways closed, or reset: nothing to answer
_NO_BYTES = bytes(4)
_NEVER = float("inf")

FIRST_BYTE, IDLE, REQUEST = "first-byte", "idle", "request"
PROXY = "proxy-header"  # waiting for its PROXY protocol header (proxy_timeout; hotpath.py)
UNREAD = "unread"  # sending the rest of an answer: idle_timeout for each stall
SHORT_FILE = "short-file"  # its file ended before its answer did
_NO_REQUEST = (IDLE, UNREAD)  # kinds with no request in flight (in_flight)
# Bytes of an answer's rest sent per loop turn: a client that takes a long file as fast as
# loopback goes (nginx in front) would otherwise keep the loop in one sendfile() after
# another, and every other connection waiting, for as long as the file lasts.
SEND_SLICE = 1 << 20


def _low_water(fd: int, want: int, clamp: int = 0) -> int | None:
    """Set the connection's SO_RCVLOWAT to `want` bytes, and its TCP window clamp back up
    to `clamp` (raising the mark lowers the clamp to it, and a small one would slow the
    connection's later uploads). The clamp it had before; None when it cannot be set (the
    connection is gone).

    Raising the mark grows the receive buffer and the window clamp to it; set to HEADROOM
    more first, they stay above `want`. Else the window would close within a segment of the
    end, and a poll report the body readable with its last bytes still to come."""
    want = min(want, _MAX_LOW_WATER)  # (the wire allows a u32; the kernel caps it lower)
    sock = socket.socket(fileno=fd)
    try:
        before = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP)
        if want > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want + HEADROOM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
        if clamp > before:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, clamp)
    except OSError:
        return None
    finally:
        sock.detach()
    return before


HEADROOM = 128 << 10  # over a segment even on loopback (64 KiB)
_MAX_LOW_WATER = (1 << 31) - 1 - HEADROOM  # SO_RCVLOWAT is an int


def unread(fd: int) -> int:
    """The bytes the peer sent that nobody has read yet (0 when it is gone): waiting_bytes()
    counted, off the hot path."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, _NO_BYTES), sys.byteorder)
    except OSError:
        return 0


def waiting_bytes(fd: int) -> bool:
    """Whether the peer has sent bytes nobody has read yet (False when it is gone too).
    Once per accepted connection: kept to one call and a comparison."""
    try:
        return fcntl.ioctl(fd, termios.FIONREAD, _NO_BYTES) != _NO_BYTES
    except OSError:
        return False


class _Unsent:
    """An answer's rest being sent: the memfd or file, how far, to where, the bytes of our
    memory it holds, and what comes after (`after`, the PARK message: hotpath.py settles it
    as a park once all is sent)."""

    __slots__ = ("after", "end", "memory", "offset", "rest", "stall", "work")

    def __init__(
        self,
        rest: int,
        span: tuple[int, int],
        memory: int,
        stall: float,
        after: object,
        work: bool,
    ) -> None:
        self.rest, (self.offset, self.end), self.memory = rest, span, memory
        self.stall, self.after, self.work = stall, after, work


class Parking:
    def __init__(
        self,
        release: Callable[[int], None],
        epoll: select.epoll | None = None,
        words: memoryview | None = None,
    ) -> None:
        # The dispatcher passes its loop's epoll, whose poll() hands us our events (seen());
        # alone (the unit tests), an epoll of our own, polled by ready().
        self.own = epoll is None
        self.epoll = select.epoll() if epoll is None else epoll
        self.events: list[tuple[int, int]] = []  # (fd, events) seen and not yet handled
        self.release = release  # a connection closed here leaves the admission counts
        self.held: dict[int, tuple[Pending, str, float]] = {}  # fd -> (item, kind, deadline)
        self.deadlines: list[tuple[float, int, int]] = []  # (deadline, conn_id, fd), lazy
        self.closed: Counter[str] = Counter()  # by reason, since start (STATUS=, the bench)
        self.in_flight = 0  # held with a request not yet served: new ones, and partial ones
        self.unsent: dict[int, _Unsent] = {}  # fd -> the answer being sent on it (UNREAD)
        self.sent: list[tuple[Pending, object]] = []  # sent whole since: (item, after)
        # The bytes of the memfds (and files in memory) held, told to the workers in the
        # shared words (giveback.py).
        self.unsent_bytes = 0
        # fd -> (bytes of a body waited for, the window clamp it had, bytes seen): hold()
        self.buffering: dict[int, tuple[int, int, int]] = {}
        self.buffered_bytes = 0  # their sum, told to the workers too
        self.words = words

    def __len__(self) -> int:
        return len(self.held)

    def hold(self, item: Pending, kind: str, deadline: float, want: int = 0) -> None:
        """Watch a connection until it is readable or `deadline` (inf: never) passes;
        `want`: until that many bytes wait to be read (a body to come), set before it is
        watched, or epoll would report the first of them.

        One-shot, and never unregistered: a connection handed on is no longer ours to
        watch, and one we close goes from the epoll with its last descriptor. So a hold
        costs one epoll_ctl. A registration that outlives our descriptor (the worker still
        has the connection) is disarmed; if the connection comes back under the same
        number, it is re-armed instead of added."""
        fd = item[1]
        if want and (clamp := _low_water(fd, want)) is not None:
            self.buffering[fd] = (want, clamp, 0)
            self._count(BUFFERED, want)
        if not self._watch(item, kind, deadline, _WATCH):
            self._unbuffer(fd)
            self.drop(item, "peer-closed")

    def send(
        self,
        item: Pending,
        rest: int,
        span: tuple[int, int],
        file: bool,
        after: object,
        stall: float,
        work: bool,
    ) -> None:
        """Send the bytes `span` of `rest` (an answer's rest a worker left us: a memfd, or
        the application's `file`, none of our memory unless it is in memory itself) on the
        connection as its client takes it, a stall of `stall` seconds at most (0: no
        limit); then it joins `sent` with `after`. `work`: a request comes after it, which
        a stop must wait for."""
        fd = item[1]
        try:
            st = os.fstat(rest)
            if not stat.S_ISREG(st.st_mode):  # memfds and files are: a pipe could block us
                raise OSError(errno.EINVAL, "not a regular file")
            # FILE is the worker's word, which looked at the file (unsent.pinned): memory
            # is counted whatever it says. A file deleted since, by the application's
            # close() (the worker gives the connection back first), is a disk's.
            memory = 0 if file and not in_memory(rest) else st.st_size
            os.set_blocking(fd, False)  # the worker's socket had a timeout: it is already
            deadline = time.monotonic() + stall if stall else _NEVER
            if not self._watch(item, UNREAD, deadline, _SEND):
                raise OSError(errno.EBADF, "gone")
        except OSError:
            os.close(rest)
            self.drop(item, "peer-closed")
            return
        self.unsent[fd] = _Unsent(rest, span, memory, stall, after, work)
        self.in_flight += work
        self._count(UNSENT, memory)

    def _watch(self, item: Pending, kind: str, deadline: float, events: int) -> bool:
        """Watch for `events` (one-shot), held as `kind` until `deadline`. False when the
        connection cannot be watched: the peer is long gone, or the descriptor is bad."""
        fd = item[1]
        try:
            try:
                self.epoll.register(fd, events)
            except FileExistsError:
                self.epoll.modify(fd, events)
        except OSError:
            return False
        if deadline < _NEVER:
            if len(self.deadlines) > 2 * len(self.held) + 1024:  # mostly stale: rebuild
                held = self.held.items()
                self.deadlines[:] = [(d, i[0], f) for f, (i, _, d) in held if d < _NEVER]
                heapq.heapify(self.deadlines)
            heapq.heappush(self.deadlines, (deadline, item[0], fd))
        self.held[fd] = (item, kind, deadline)
        self.in_flight += kind not in _NO_REQUEST
        return True

    def seen(self, fd: int, events: int) -> None:
        """The loop's epoll reported `fd`, which is not one of its own: one of ours."""
        self.events.append((fd, events))

    def ready(self) -> list[Pending]:
        """The held connections that became readable, in the order they spoke. Those whose
        peer closed without sending anything are closed here; but a request begun, then
        half-closed (a client that ends its request with a FIN), goes to a worker, whose
        handler reads the end and can still answer."""
        events, self.events = self.events, []
        if self.own:
            events += self.epoll.poll(0, 1024)
        out = []
        for fd, mask in events:
            if fd in self.unsent:  # writable: the client took some of its answer
                self._send_more(fd)
                continue
            if self.buffering and fd in self.buffering and self._short(fd, mask):
                continue  # a body not all here: watched again
            entry = self._release(fd)
            if entry is None:
                continue
            item, kind = entry[0], entry[1]
            if mask & _GONE and not waiting_bytes(fd) and (kind != REQUEST or mask & _BROKEN):
                self.drop(item, "peer-closed")
            else:
                out.append(item)
        return out

    def _short(self, fd: int, mask: int) -> bool:
        """A body waited for, reported readable before it has all come (see the module's
        docstring): True when it is watched again, having more bytes than the last time."""
        want, clamp, seen = self.buffering[fd]
        have = 0 if mask & _GONE else unread(fd)
        if not seen < have < want:
            return False
        try:
            self.epoll.modify(fd, _WATCH)
        except OSError:
            return False
        self.buffering[fd] = (want, clamp, have)
        return True

    def _send_more(self, fd: int) -> None:
        """The client took some of an answer: send what fits now, then wait again (its
        stall's clock starts again), or all is sent: it joins `sent`."""
        item, unsent = self.held[fd][0], self.unsent[fd]
        try:
            end = min(unsent.end, unsent.offset + SEND_SLICE)
            unsent.offset = send_what_fits(fd, unsent.rest, unsent.offset, end)
        except (OSError, ValueError) as exc:  # reset, or closed for reading: nobody to send
            self._release(fd)  # it to (or the file's read failed: counted the same); or the
            # file ends first: the answer cannot be whole
            self.drop(item, SHORT_FILE if isinstance(exc, ValueError) else "peer-closed")
            return
        if unsent.offset < unsent.end:  # the client takes no more now, or a slice went: wait
            deadline = time.monotonic() + unsent.stall if unsent.stall else _NEVER
            if self._watch(item, UNREAD, deadline, _SEND):  # held again, its stall anew
                return
            self._release(fd)
            self.drop(item, "peer-closed")
            return
        self._release(fd)
        self.sent.append((item, unsent.after))

    def expire(self, now: float) -> None:
        """Close what is past its deadline."""
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now:
            deadline, conn_id, fd = heapq.heappop(deadlines)
            entry = self.held.get(fd)
            if entry is not None and entry[0][0] == conn_id and entry[2] == deadline:
                self._release(fd)
                self.drop(entry[0], entry[1])

    def next_deadline(self) -> float:
        deadlines, held = self.deadlines, self.held
        while deadlines:
            deadline, conn_id, fd = deadlines[0]
            entry = held.get(fd)
            if entry is not None and entry[0][0] == conn_id and entry[2] == deadline:
                return deadline
            heapq.heappop(deadlines)  # stale: handed over or closed since
        return _NEVER

    def close_idle(self) -> int:
        """On stop: close every connection with no request in flight; returns how many. One
        whose client just sent a request is left to ready(): that request is work to serve."""
        idle = [
            fd for fd, (_, kind, _) in self.held.items() if kind == IDLE and not waiting_bytes(fd)
        ]
        for fd in idle:
            entry = self._release(fd)
            if entry:
                self.drop(entry[0], "stopping")
        return len(idle)

    def expect_work(self, may_serve: Callable[[object], bool]) -> None:
        """On stop: answers being sent whose client has sent more meanwhile, and whose
        `after` may_serve() it, count as in flight from now (they have a request to serve)."""
        for fd, unsent in self.unsent.items():
            if not unsent.work and may_serve(unsent.after) and waiting_bytes(fd):
                unsent.work = True
                self.in_flight += 1

    def hurry(self, kind: str, by: float) -> None:
        """Bring the deadlines of every held connection of `kind` forward by `by` seconds."""
        for fd, (item, held_kind, deadline) in list(self.held.items()):
            if held_kind == kind and deadline < _NEVER:
                self.held[fd] = (item, kind, deadline - by)
                heapq.heappush(self.deadlines, (deadline - by, item[0], fd))

    def fds(self) -> list[int]:
        """Every descriptor held here: the connections, and the answers being sent."""
        return [*self.held, *(u.rest for u in self.unsent.values())]

    def close_all(self, reason: str) -> int:
        count = len(self.held)
        for fd in list(self.held):
            entry = self._release(fd)
            if entry:
                self.drop(entry[0], reason)
        return count

    def close(self) -> None:
        if self.own:
            self.epoll.close()

    def _release(self, fd: int) -> tuple[Pending, str, float] | None:
        """No longer held (see hold(): nothing to unregister)."""
        entry = self.held.pop(fd, None)
        if entry is not None:
            self.in_flight -= entry[1] not in _NO_REQUEST
            if entry[1] == UNREAD:
                unsent = self.unsent.pop(fd)
                self.in_flight -= unsent.work
                os.close(unsent.rest)
                self._count(UNSENT, -unsent.memory)
            elif self.buffering:
                self._unbuffer(fd)
        return entry

    def _unbuffer(self, fd: int) -> None:
        """A body no longer waited for: the socket's low-water mark and window back as they
        were, for the worker's reads and polls (a poll for one byte would wait for the
        whole mark) and its next requests' windows."""
        waited = self.buffering.pop(fd, None)
        if waited is not None:
            _low_water(fd, 1, waited[1])
            self._count(BUFFERED, -waited[0])

    def _count(self, word: int, change: int) -> None:
        """The bytes held for slow clients, answers (UNSENT) or bodies (BUFFERED), told to
        the workers in the shared words (giveback.py)."""
        if word == UNSENT:
            total = self.unsent_bytes = self.unsent_bytes + change
        else:
            total = self.buffered_bytes = self.buffered_bytes + change
        if self.words is not None:
            self.words[word] = total

    def drop(self, item: Pending, reason: str | None, discard: bool = False) -> None:
        """Close as a server that is done: FIN when nothing is unread, so the client sees an
        orderly end (a client that did send gets the reset the kernel sends for unread data;
        `discard`: not even then, its bytes read and dropped first, so that an answer still
        on its way reaches it whole). Counted by `reason`; None: served, nothing went wrong."""
        if reason:
            self.closed[reason] += 1
        self.release(item[0])
        sock = socket.socket(fileno=item[1])
        if discard:  # at most 1 MiB: a client that never stops sending gets its reset
            with contextlib.suppress(OSError):
                for _ in range(16):
                    if not sock.recv(65536, socket.MSG_DONTWAIT):
                        break
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sock.close()


def deadline_for(
    kind: str, now: float, started_ns: int, timeouts: tuple[float, float, float]
) -> float:
    """When a held connection is closed: timeouts are (first_byte, idle, request), 0 for
    none. A request's clock runs from when it began (time.monotonic_ns(), the same clock in
    every process), however often it was parked since."""
    first_byte, idle, request = timeouts
    limit = {FIRST_BYTE: first_byte, IDLE: idle, REQUEST: request}[kind]
    if not limit:
        return _NEVER
    begun = min(now, started_ns / 1e9) if kind == REQUEST and started_ns else now
    return begun + limit
