"""Journal records that never block sockpool: a bounded queue in front of journald's socket.

python-systemd's send() blocks while journald is stalled and its socket queue is full
(`net.unix.max_dgram_qlen`, 512 on a normal host), and a dispatcher blocked there stops
accepting and feeding the watchdog. Here sockpool's own records are sent without waiting:
what journald cannot take now waits in a bounded queue, flushed when the socket is writable
(the dispatcher's loop watches it, workers retry on their next record); past the bound,
records are dropped and counted, and the count is recorded once the journal takes records
again. A handler's own records may wait, as they would with plain python-systemd: that
blocks only the worker serving it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

QUEUE_LIMIT = 1000  # records; at a few hundred bytes each, well under a MiB
_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}\Z")  # journald drops any other name
_GONE = {errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN, errno.EPIPE}


def encode(message: str, fields: Mapping[str, Any]) -> bytes:
    """The journal's native protocol: KEY=value lines, or KEY, a length and the bytes for a
    value with a newline in it."""
    parts = []
    for key, value in (("MESSAGE", message), *fields.items()):
        if value is None or not _FIELD.match(key):
            continue
        if isinstance(value, bytes):
            data = value
        else:
            data = str(getattr(value, "hex", value) if key == "MESSAGE_ID" else value).encode(
                errors="replace"
            )
        name = key.encode()
        if b"\n" in data:
            parts += (name, b"\n", struct.pack("<Q", len(data)), data, b"\n")
        else:
            parts += (name, b"=", data, b"\n")
    return b"".join(parts)


class Journal:
    """A sender_function for python-systemd's JournalHandler."""

    def __init__(self, path: str, limit: int = QUEUE_LIMIT, name: str = "sockpool") -> None:
        self.path = path
        self.limit = limit
        self.name = name  # SYSLOG_IDENTIFIER, as the handler's records have it (--name)
        self.queue: deque[bytes] = deque()
        self.dropped = 0
        self.sock: socket.socket | None = None
        self.owner = 0  # the process whose loop watches the socket (workers have none)
        self.watch: Callable[[int, Callable[[], None]], None] | None = None
        self.unwatch: Callable[[int], None] = lambda fd: None
        self.watched = -1
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        """A forked worker starts with nothing queued: those records are its parent's."""
        self.queue.clear()
        self.dropped = 0
        self.watch, self.watched = None, -1

    def drain(self, timeout: float) -> bool:
        """At exit: wait up to `timeout` for journald to take what is queued (the last
        records, such as why the dispatcher exits, are the ones an admin looks for).
        True once it has all; False at once when there is no journald to wait for."""
        deadline = time.monotonic() + timeout
        while self.queue or self.dropped:
            if (left := deadline - time.monotonic()) <= 0:
                return False
            try:
                fd = self.fileno()
            except OSError:  # no socket to connect to: it would never take them
                return False
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            poller.poll(left * 1000)
            self.flush()
        return True

    def attach(
        self, watch: Callable[[int, Callable[[], None]], None], unwatch: Callable[[int], None]
    ) -> None:
        """Let this process's loop call flush() when journald has room, while records wait."""
        self.owner, self.watch, self.unwatch = os.getpid(), watch, unwatch

    def fileno(self) -> int:
        return self._socket().fileno()

    def send(self, MESSAGE: str, **fields: Any) -> None:
        data = encode(MESSAGE, fields)
        own = str(fields.get("LOGGER", "")).partition(".")[0] == "sockpool"
        if self.queue:
            self.flush()
        if not self.queue and self._send(data, socket.MSG_DONTWAIT):
            return
        if not own:  # the handler's own record: it may wait, as with python-systemd
            self._send(data, 0)
        elif len(self.queue) < self.limit:
            self.queue.append(data)
            self._backlog(True)
        else:
            self.dropped += 1

    def flush(self) -> None:
        """Send what waits, as far as journald takes it; then say what was dropped."""
        while self.queue:
            if not self._send(self.queue[0], socket.MSG_DONTWAIT):
                return
            self.queue.popleft()
        if self.dropped:
            message = (
                f"the journal did not keep up: {self.dropped} of sockpool's records were "
                "dropped (journald stalled, its socket queue full)"
            )
            note = encode(message, {"PRIORITY": 4, "SYSLOG_IDENTIFIER": self.name})
            if not self._send(note, socket.MSG_DONTWAIT):
                return
            self.dropped = 0
        self._backlog(False)

    def _send(self, data: bytes, flags: int) -> bool:
        """True once journald has it (or it can never take it); False: try again later."""
        for _ in range(2):  # a second time on a fresh socket if journald was restarted
            try:
                self._socket().send(data, flags)
                return True
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno not in _GONE:
                    self.dropped += 1  # too big, or refused: it never will go
                    return True
                self.close()
        return False

    def _socket(self) -> socket.socket:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(self.path)  # connected: writable means journald has room
            except OSError:
                sock.close()
                raise
            self.sock = sock
        return self.sock

    def _backlog(self, waiting: bool) -> None:
        if self.watch is None or self.owner != os.getpid():
            return
        if waiting and self.watched < 0:
            with contextlib.suppress(OSError):  # journald is gone: the next record retries
                fd = self.fileno()
                self.watch(fd, self.flush)
                self.watched = fd
        elif not waiting and self.watched >= 0:
            self.unwatch(self.watched)
            self.watched = -1

    def close(self) -> None:
        if self.watched >= 0:
            self._backlog(False)
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
