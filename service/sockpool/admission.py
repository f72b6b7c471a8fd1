"""Overload limits: connections in flight at once, and from one source address.

xinetd's `instances` and `per_source`, for a pool: systemd's MaxConnections= and
MaxConnectionsPerSource= only apply to Accept=yes sockets. Over a limit a connection is
refused at once (after an optional one-line reply) instead of waiting in the backlog.
"""

from __future__ import annotations

import contextlib
import socket
from collections import Counter

from .config import Config


class Admission:
    def __init__(self, config: Config) -> None:
        self.max_total = config.max_connections
        self.max_per_source = config.max_connections_per_source
        # One of N dispatchers holds its share of each limit (supervisor.share()): its log
        # says so, or an admin would read the share as the limit they set.
        self.share = f" in this dispatcher, one of {config.dispatchers}" * config.shares_sockets
        self.reply = (
            config.overload_reply.rstrip("\n").encode() + b"\n" if config.overload_reply else b""
        )
        # One of N dispatchers: a word each, shared by all (supervisor.py), set while its
        # share of max_connections is full (publish()). Else None.
        self.full: memoryview | None = None
        self.index = 0
        self.per_source: Counter[str] = Counter()
        self.sources: dict[int, str] = {}  # conn_id -> source, only while per-source is on
        self.refused = 0
        self.refused_since_log = 0

    def room(self, busy: int) -> int:
        """How many more connections may be in flight (a large number when unlimited)."""
        return self.max_total - busy if self.max_total else 1 << 30

    def join(self, full: memoryview, index: int) -> None:
        """Dispatcher `index` of those sharing `full` (its words, one each)."""
        self.full, self.index = full, index
        full[index] = 0

    def publish(self, held: int) -> bool:
        """Whether this dispatcher's share is full, for the others to read (elsewhere());
        returned too."""
        now_full = bool(self.max_total) and held >= self.max_total
        if self.full is not None:
            self.full[self.index] = now_full
        return now_full

    def withdraw(self) -> None:
        """One of N that takes nothing more (it stops): its share counts as full."""
        if self.full is not None:
            self.full[self.index] = 1

    def elsewhere(self) -> bool:
        """Another dispatcher's share has room: this one, at its own, leaves new connections
        in the backlog for it (as back-pressure does) instead of refusing them. Only once
        every share is full are they refused: the limit is the service's, and clients that
        come one at a time would otherwise be refused at limit/N by whichever dispatcher
        woke first."""
        full = self.full
        if full is None:
            return False
        index = self.index
        return any(not full[i] for i in range(len(full)) if i != index)

    def shedding(self, busy: int) -> bool:
        """At the global limit: accept only to refuse, rather than leave clients queued."""
        return bool(self.max_total) and busy >= self.max_total

    def admit(self, conn_id: int, addr: object) -> bool:
        if not self.max_per_source or not isinstance(addr, tuple):
            return True  # AF_UNIX peers have no source address
        source = addr[0]
        if self.per_source[source] >= self.max_per_source:
            return False
        self.per_source[source] += 1
        self.sources[conn_id] = source
        return True

    def release(self, conn_id: int) -> None:
        source = self.sources.pop(conn_id, None)
        if source is not None:
            self.per_source[source] -= 1
            if not self.per_source[source]:
                del self.per_source[source]

    def refuse(self, fd: int) -> None:
        """Say why (if configured) without waiting on the peer, then close."""
        self.refused += 1
        self.refused_since_log += 1
        sock = socket.socket(fileno=fd)
        with contextlib.suppress(OSError):
            if self.reply:
                sock.send(self.reply, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            sock.shutdown(socket.SHUT_WR)
        sock.close()

    def update(self, config: Config) -> None:
        """A reload may change the limits; counts in flight carry over."""
        fresh = Admission(config)
        self.max_total, self.max_per_source, self.reply, self.share = (
            fresh.max_total,
            fresh.max_per_source,
            fresh.reply,
            fresh.share,
        )
