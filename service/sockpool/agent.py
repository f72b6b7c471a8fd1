"""HAProxy's agent-check: a listener that tells a balancer in front how much this pool can take.

HAProxy (`server ... agent-check agent-port P agent-inter T`) connects to the agent port every
T, reads one line and closes. The line is words HAProxy applies to the server (its
configuration manual, "agent-check"): a weight as a percentage of the server line's `weight`,
`maxconn:N`, an administrative state (`ready`, `drain`, `maint`) and an operational one (`up`,
`down`, ...). What the agent leaves out stays as it was, and only the agent can undo what it
said: a `drain` stays until a `ready`. So every answer here names both states.

The dispatcher answers these connections itself (no worker is involved: the answer must come
from the process that knows the pool, and must come while every worker is busy).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

from .listeners import PEER_GONE

KIND = "haproxy-agent"  # [listeners.NAME] kind = "haproxy-agent"
MIN_WEIGHT = 10  # percent: a busy but healthy instance still gets some new connections
BATCH = 16  # connections answered per wake-up, so a flood of checks cannot hold the loop
_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL


def reply(
    free: int, total: int, held: int, max_connections: int, draining: bool, whole: int = 0
) -> bytes:
    """The line HAProxy's agent-check reads, from the pool's state.

    - `drain` while the service stops or reloads: HAProxy sends it no new connections and
      lets those it has finish, before the dispatcher stops accepting (a stop) or while the
      generations change over (a reload). The next answer after it says `ready`.
    - Otherwise `up ready W%`: W is the share of the pool's capacity that is free (`free` of
      `total` connection slots of its workers), and, under `max_connections`, no more than the
      share of that limit still unused (`held` connections are in flight). HAProxy scales the
      server line's `weight` by it, so a busy instance gets fewer new connections than an
      idle one. Never below MIN_WEIGHT: HAProxy treats weight 0 like `drain`, and if every
      instance were full they would all drain and the balancer would have nowhere to send
      anything; at the floor, full instances share the load evenly and their backlogs hold
      it, as they would without a balancer. A pool with no ready worker yet (starting) is
      at the floor too.
    - `maxconn:N` with `max_connections` set: HAProxy then queues connections beyond N
      itself (and can send them elsewhere) instead of sending what sockpool would refuse.
      It is the limit, not the room left: HAProxy compares it with the connections it has
      open to this server, which are already among `held`. Without a limit it is left out,
      because a pool's worker slots do not bound its connections (idle keep-alive ones wait
      in the dispatcher, taking none).
    - One of N dispatchers answers from its own share of the workers and of the limit, and
      announces the `whole` limit: HAProxy's maxconn is the server's, not one dispatcher's.
    """
    if draining:
        return b"drain\n"
    share = free * 100 // total if total > 0 else 0
    if max_connections:
        share = min(share, (max_connections - held) * 100 // max_connections)
    words = ["up", "ready", f"{max(MIN_WEIGHT, min(100, share))}%"]
    if max_connections:
        words.append(f"maxconn:{whole or max_connections}")
    return " ".join(words).encode() + b"\n"


def answer(listener: socket.socket, text: Callable[[], bytes]) -> bool:
    """Accept up to BATCH connections on a non-blocking agent listener, send each the line
    `text()` gives (asked once per call) and close it. Never blocks: a new connection's send
    buffer always has room for one short line, and a peer that cannot take it is dropped.
    False when accepting failed for want of descriptors or memory: the caller should stop
    watching the listener for a while rather than be woken again at once."""
    line = b""
    for _ in range(BATCH):
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno in PEER_GONE:
                continue
            return False
        with conn, contextlib.suppress(OSError):
            line = line or text()
            conn.send(line, _FLAGS)
            conn.shutdown(socket.SHUT_WR)
            # What the balancer sent (`agent-send`) is read and dropped: a close with
            # unread bytes would be a reset, which could cost it the answer.
            conn.recv(4096, _FLAGS)
    return True
