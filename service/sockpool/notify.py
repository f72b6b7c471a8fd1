"""sd_notify: readiness, reload and stop states, live STATUS=, and the watchdog.

A no-op outside systemd (no NOTIFY_SOCKET), so the same code runs under a terminal.

Sent by us, not by python-systemd's notify(): libsystemd's sd_notify() blocks while the
socket's queue is full (net.unix.max_dgram_qlen, 10 datagrams), and a PID 1 busy with a long
daemon-reload would then stall the dispatcher's loop, accepts and all. Here a periodic
STATUS= or WATCHDOG=1 that finds the queue full is skipped (the next one supersedes it), and
a state change waits for room a bounded time.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Mapping

from .errors import digits

STATUS_INTERVAL = 1.0  # seconds; systemctl status needs no more, and PID 1 gets no flood
MIN_WATCHDOG_INTERVAL = 0.01  # seconds: a watchdog far below it cannot be fed by anyone
STATE_WAIT = 2.0  # seconds READY=1, RELOADING=1 or STOPPING=1 may wait for room in the queue
PERIODIC = ("STATUS=", "WATCHDOG=")  # superseded by the next: never worth a wait


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
        self.target = target
        self.address = None if target else notify_address(env.get("NOTIFY_SOCKET", ""))
        self.enabled = target is not None or self.address is not None
        self.watchdog_interval = watchdog_interval if target else _watchdog_interval(env)
        self._last_status = ""
        self._next_status = 0.0
        self._next_watchdog = 0.0

    def send(self, *assignments: str) -> None:
        """One datagram. Any failure (a full queue, out of descriptors, systemd gone) skips
        it, never a crash: a missed WATCHDOG=1 is what the watchdog is for."""
        data = "\n".join(assignments).encode(errors="replace")
        if self.target is not None:
            with contextlib.suppress(OSError):  # the main process reads it; it never blocks us
                self.target.send(data)
        elif self.address is not None:
            # A socket each time, as sd_notify: systemd re-creates its socket on re-exec.
            # Connected, so that a wait polls the receiver's queue, not our own buffer.
            with (
                contextlib.suppress(OSError),
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
            ):
                sock.connect(self.address)
                periodic = all(a.startswith(PERIODIC) for a in assignments)
                sock.settimeout(0.0 if periodic else STATE_WAIT)  # 0.0: non-blocking
                sock.send(data)

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", "STATUS=reloading")

    def stopping(self, status: str) -> None:
        self._last_status = status
        self.send("STOPPING=1", f"STATUS={status}")

    def tick(self, now: float, status: Callable[[], str], healthy: bool = True) -> None:
        """STATUS= when it changed, at most once a second (the text is built only then),
        and WATCHDOG=1 at half the interval systemd asked for, while `healthy`. Called from
        the main loop on purpose: a loop that hangs stops feeding the watchdog."""
        if self.watchdog_interval and healthy and now >= self._next_watchdog:
            self._next_watchdog = now + self.watchdog_interval
            self.send("WATCHDOG=1")
        if now >= self._next_status and (text := status()) != self._last_status:
            self._next_status = now + STATUS_INTERVAL
            self._last_status = text
            self.send(f"STATUS={text}")

    def next_due(self, now: float) -> float:
        """Seconds the loop may sleep before tick() is due again."""
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
    if not digits(usec) or int(usec) == 0:
        return 0.0
    if pid and pid != str(os.getpid()):
        return 0.0
    return max(MIN_WATCHDOG_INTERVAL, int(usec) / 2e6)


def forget_environment(env: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Workers must not notify or feed the watchdog: NotifyAccess=main would drop it anyway."""
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(var, None)
