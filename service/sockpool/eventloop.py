"""The dispatcher's event loop: epoll registrations, one timer heap, and signals as events.

Signals arrive through a wakeup socket (signal.set_wakeup_fd) and are read in the loop like
any other descriptor, as gunicorn's arbiter queues them: no work in signal context, and no
race with the bookkeeping.
"""

from __future__ import annotations

import heapq
import itertools
import select
import signal
import socket
from collections.abc import Callable, Iterable

Callback = Callable[[], object]
# What a main loop takes (dispatcher.py's, supervisor.py's), and cli.main() gives back to an
# in-process caller. SIGUSR1 and SIGUSR2 mean nothing to sockpool, but their default action
# would end the process unlogged (a `systemctl kill -s USR1` from habit): taken, to say so.
SIGNALS = (
    signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2,
)  # fmt: skip


class Timer:
    __slots__ = ("at", "callback", "cancelled")

    def __init__(self, at: float, callback: Callback) -> None:
        self.at = at
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.callbacks: dict[int, Callback] = {}
        self.events: dict[int, int] = {}  # what each watched descriptor is watched for
        self.timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()  # ties keep the order they were set in
        self.wakeup: tuple[socket.socket, socket.socket] | None = None
        # Where events of descriptors registered on `epoll` by others go (the parked
        # connections: parking.py), as (fd, events).
        self.others: Callable[[int, int], None] = _ignore_event

    def watch(
        self,
        source: socket.socket | int,
        callback: Callback,
        edge: bool = False,
        writable: bool = False,
    ) -> None:
        """Call back when `source` is readable (or writable), level- or edge-triggered."""
        fd = source if isinstance(source, int) else source.fileno()
        events = (select.EPOLLOUT if writable else select.EPOLLIN) | (select.EPOLLET if edge else 0)
        self.epoll.register(fd, events)
        self.callbacks[fd] = callback
        self.events[fd] = events

    def mute(self, source: socket.socket | int, muted: bool) -> None:
        """Stop (or resume) calling back for a watched `source`, which stays registered.
        Resuming reports it at once if it is readable by then. One no longer watched stays
        so."""
        fd = source if isinstance(source, int) else source.fileno()
        if fd in self.events:
            self.epoll.modify(fd, 0 if muted else self.events[fd])

    def watch_writable(self, fd: int, callback: Callback) -> None:
        self.watch(fd, callback, writable=True)

    def unwatch(self, source: socket.socket | int) -> None:
        fd = source if isinstance(source, int) else source.fileno()
        if self.callbacks.pop(fd, None) is not None:
            del self.events[fd]
            self.epoll.unregister(fd)

    def call_at(self, at: float, callback: Callback) -> Timer:
        timer = Timer(at, callback)
        heapq.heappush(self.timers, (at, next(self._order), timer))
        return timer

    def next_timer(self) -> float:
        """When the earliest live timer is due (infinity without one)."""
        timers = self.timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        return timers[0][0] if timers else float("inf")

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` seconds and run the callbacks of what became readable."""
        for fd, events in self.epoll.poll(timeout):
            callback = self.callbacks.get(fd)  # an earlier callback may have unwatched it
            if callback:
                callback()
            else:
                self.others(fd, events)

    def run_timers(self, now: float) -> None:
        """Run the timers due by `now`; those they set run on a later turn, even if due."""
        timers, due = self.timers, []
        while timers and timers[0][0] <= now:
            due.append(heapq.heappop(timers)[2])
        for timer in due:
            if not timer.cancelled:
                timer.callback()

    def on_signals(self, signals: Iterable[int], handler: Callable[[int], None]) -> None:
        """Deliver `signals` to handler(signum) from the loop, in the order they came."""
        r, w = self.wakeup = socket.socketpair()
        for sock in (r, w):
            sock.setblocking(False)
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        for sig in signals:
            signal.signal(sig, _ignore)  # the C-level handler writes to the wakeup socket
        # Those a parent blocked across fork() (supervisor.py), to keep them, arrive now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)

        def read() -> None:
            try:
                signums = r.recv(4096)
            except BlockingIOError:
                return
            for signum in signums:
                handler(signum)

        self.watch(r, read)

    def close(self) -> None:
        """Stop listening for signals and close what the loop owns (also in a forked child)."""
        signal.set_wakeup_fd(-1)
        self.epoll.close()
        if self.wakeup:
            for sock in self.wakeup:
                sock.close()


def _ignore(signum: int, frame: object) -> None:
    pass


def _ignore_event(fd: int, events: int) -> None:
    pass
