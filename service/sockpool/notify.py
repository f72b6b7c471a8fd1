"""sd_notify: readiness, reload and stop states, live STATUS=, and the watchdog.

A no-op outside systemd (no NOTIFY_SOCKET), so the same code runs under a terminal.

Sent by us, not by python-systemd's notify(): libsystemd's sd_notify() blocks while the
socket's queue is full (net.unix.max_dgram_qlen datagrams, which PID 1 raises to 512 on its
own socket), and a PID 1 stuck in a long daemon-reload would then stall the dispatcher's
loop, accepts and all. Here nothing waits: a state change (READY=1, RELOADING=1,
STOPPING=1, or anything but STATUS= and WATCHDOG=1) that finds the queue full is kept and
sent again, in order, from tick(); a STATUS= or WATCHDOG=1 is tried again RETRY later.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from collections.abc import Callable, Mapping

from .errors import whole_number

STATUS_INTERVAL = 1.0  # seconds; systemctl status needs no more, and PID 1 gets no flood
MIN_WATCHDOG_INTERVAL = 0.01  # seconds: a watchdog far below it cannot be fed by anyone
RETRY = 0.1  # seconds before a message the queue had no room for is tried again
PERIODIC = ("STATUS=", "WATCHDOG=")  # tried again with the figures of the moment, not kept
SERVES = "X_SOCKPOOL_SERVES"  # with a dispatcher's READY=1 to its main process: Config.digest
# First on every state change a dispatcher sends its main process: the reload it last took,
# so that a message is never taken for the answer to a newer reload (supervisor.py).
ROUND = "X_SOCKPOOL_RELOAD"
MAX_PENDING = 64  # state changes kept for a PID 1 that does not read: the oldest go first
# Failures that pass: the next try may go through. Any other (systemd gone, a message too
# big) never will, and the message is dropped.
_TRY_AGAIN = {errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Notifier:
    """To systemd's NOTIFY_SOCKET; or, given `target`, the same assignments to that socket
    (a dispatcher under the supervisor tells the main process, supervisor.py), feeding its
    watchdog every `watchdog_interval` seconds."""

    def __init__(
        self,
        env: Mapping[str, str] = os.environ,
        target: socket.socket | None = None,
        watchdog_interval: float = 0.0,
    ) -> None:
        self.target = target  # non-blocking (supervisor.py)
        self.address = None if target else notify_address(env.get("NOTIFY_SOCKET", ""))
        self.enabled = target is not None or self.address is not None
        self.watchdog_interval = watchdog_interval if target else _watchdog_interval(env)
        self.pending: deque[bytes] = deque(maxlen=MAX_PENDING)  # state changes, in order
        self.round = 0  # to a main process: the reload number it last asked for (ROUND)
        self._last_status = ""
        self._next_status = 0.0
        self._next_watchdog = 0.0

    def send(self, *assignments: str) -> bool:
        """One datagram, never waiting. A state change is kept until it goes (True); a
        STATUS= or WATCHDOG=1 goes now, after the state changes still kept, or not at all
        (False: the caller tries again)."""
        if not self.enabled:
            return True
        data = "\n".join(assignments).encode(errors="replace")
        if all(a.startswith(PERIODIC) for a in assignments):
            return self.flush() and self._deliver(data)
        if self.target is not None:
            data = f"{ROUND}={self.round}\n".encode() + data
        self.pending.append(data)
        self.flush()
        return True

    def flush(self) -> bool:
        """Send the state changes kept, in order, as far as there is room: True once none
        is left."""
        while self.pending:
            if not self._deliver(self.pending[0]):
                return False
            self.pending.popleft()
        return True

    def _deliver(self, data: bytes) -> bool:
        """True once it went, or never will; False: no room now."""
        try:
            if self.target is not None:
                self.target.send(data)
            else:
                # A socket each time, as sd_notify: systemd re-creates its socket on
                # re-exec; and each has its own send buffer, so only PID 1's queue limits.
                with socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                ) as sock:
                    sock.sendto(data, self.address)
        except OSError as exc:
            return exc.errno not in _TRY_AGAIN
        return True

    def ready(self, status: str, serves: str = "") -> None:
        """READY=1; to a main process (`target`), with the digest of what now serves."""
        self._last_status = status
        extra = (f"{SERVES}={serves}",) if self.target is not None and serves else ()
        self.send("READY=1", f"STATUS={status}", *extra)

    def reloading(self) -> None:
        self.send("RELOADING=1", "STATUS=reloading")

    def stopping(self, status: str) -> None:
        self._last_status = status
        self.send("STOPPING=1", f"STATUS={status}")

    def tick(self, now: float, status: Callable[[], str], healthy: bool = True) -> None:
        """State changes kept, then STATUS= when it changed, at most once a second (the
        text is built only then), and WATCHDOG=1 at half the interval systemd asked for,
        while `healthy`. Called from the main loop on purpose: a loop that hangs stops
        feeding the watchdog."""
        if not self.flush():
            return  # no room: the rest would only be skipped, and out of order
        if self.watchdog_interval and now >= self._next_watchdog:
            # Unhealthy or no room: look again soon, not at once (the loop would spin).
            sent = healthy and self.send("WATCHDOG=1")
            self._next_watchdog = now + (self.watchdog_interval if sent else RETRY)
        if now >= self._next_status and (text := status()) != self._last_status:
            if self.send(f"STATUS={text}"):
                self._next_status, self._last_status = now + STATUS_INTERVAL, text
            else:
                self._next_status = now + RETRY

    def next_due(self, now: float) -> float:
        """Seconds the loop may sleep before tick() is due again."""
        if self.pending:
            return RETRY  # nothing else goes before them
        due = STATUS_INTERVAL
        if self.watchdog_interval:
            due = min(due, self._next_watchdog - now)
        return max(0.0, due)


def notify_address(value: str) -> str | None:
    """NOTIFY_SOCKET as an AF_UNIX address: a path, or `@name` for an abstract socket; None
    for anything else, which sd_notify refuses too (EINVAL)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float:
    """Half of WATCHDOG_USEC, when the watchdog is meant for this process; no less than
    MIN_WATCHDOG_INTERVAL, or a tiny value would have the loop do nothing else."""
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    interval = whole_number(usec, 2**64 - 1)  # systemd's usec_t
    if not interval:
        return 0.0
    if pid and pid != str(os.getpid()):
        return 0.0
    return max(MIN_WATCHDOG_INTERVAL, interval / 2e6)


def forget_environment(env: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Workers must not notify or feed the watchdog: NotifyAccess=main would drop it anyway."""
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(var, None)
