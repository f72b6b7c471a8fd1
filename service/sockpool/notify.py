"""sd_notify: readiness, reload and stop states, live STATUS=, and the watchdog.

A no-op outside systemd (no NOTIFY_SOCKET), so the same code runs under a terminal.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Mapping

from .errors import digits

STATUS_INTERVAL = 1.0  # seconds; systemctl status needs no more, and PID 1 gets no flood
MIN_WATCHDOG_INTERVAL = 0.01  # seconds: a watchdog far below it cannot be fed by anyone


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
        self.enabled = target is not None or bool(env.get("NOTIFY_SOCKET"))
        self.watchdog_interval = watchdog_interval if target else _watchdog_interval(env)
        self._last_status = ""
        self._next_status = 0.0
        self._next_watchdog = 0.0

    def send(self, *assignments: str) -> None:
        if self.target is not None:
            with contextlib.suppress(OSError):  # the main process reads it; it never blocks us
                self.target.send("\n".join(assignments).encode(errors="replace"))
        elif self.enabled:
            from systemd import daemon

            # sd_notify opens a socket each time: out of descriptors, a STATUS= is skipped
            # (and a missed WATCHDOG=1 is what the watchdog is for), never a crash.
            with contextlib.suppress(OSError):
                daemon.notify("\n".join(assignments))

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
