"""The dispatcher's Python per turn, counted: calls and bytecodes, by a trace.

`python -m bench.turns` drives sockpool's hot path as Dispatcher.run does (its loop, a real
listener, real worker channels, real descriptors; no worker processes) through saturated
churn: --workers sync workers with `queue_ahead = 1` (capacity 2), each serving one
connection with one queued. On each turn one worker finishes a connection and takes the
queued one, one client connects, and the loop waits (HotPath.timeout), wakes and turns:
one completion, one accept, one handoff, as under churn with a slow handler, where the
dispatcher turns about once per connection. --turns of them are traced with
sys.settrace, and it prints the Python calls and bytecodes of each function per turn.

No timing: the clock is a counter, so the counts are the same on every run and machine,
and a change to the hot path can be priced before `make bench`. What one call per turn
costs in place, README's "What the missed targets come down to" says (`make bench` A/Bs).
The routes come from a plain callable here, where the dispatcher's checks the pool's
version: the same number of calls, a few bytecodes fewer. Dispatcher.run's own loop also
reads `policy.finished`, a property: one call more per turn than counted here.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections import Counter
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

from sockpool import channel, log, wire
from sockpool.admission import Admission
from sockpool.config import Config
from sockpool.eventloop import Loop
from sockpool.hotpath import HotPath
from sockpool.listeners import Listener
from sockpool.process import WorkerProcess
from sockpool.states import Worker, WorkerState

STEP = 0.0003  # seconds per turn on the counted clock: about a turn's length in 0.5 ms churn
WARM_UP = 200  # turns before the count: every cache and free list in use
LOOP = "(the loop itself)"


class Churn:
    """A hot path over busy sync workers, and what its loop does on each turn."""

    def __init__(self, workers: int) -> None:
        self.loop = Loop()
        self.listener = Listener("bench", socket.create_server(("127.0.0.1", 0)), "bench")
        self.listener.sock.setblocking(False)
        self.address = self.listener.sock.getsockname()
        self.procs: dict[int, WorkerProcess] = {}
        self.ends: dict[int, socket.socket] = {}
        for pid in range(1, workers + 1):
            ours, theirs = channel.pair()
            ours.setblocking(False)
            w = Worker(pid, 1, WorkerState.READY, 2)
            p = WorkerProcess(pid, ours, theirs, os.memfd_create("stacks"), w)
            p.solo = True  # a sync worker, as its READY says
            self.procs[pid], self.ends[pid] = p, theirs
        self.routes = list(self.procs.values())
        self.hot = HotPath(
            [self.listener], Admission(Config()), self.procs, self.routable, lambda p: None,
            self.loop.epoll,
        )  # fmt: skip
        self.hot.mute = self.loop.mute  # as the dispatcher wires it
        self.hot.routes_changed(self.routes)
        self.loop.watch(
            self.listener.sock, partial(self.hot.backlogged.add, self.listener), edge=True
        )
        self.loop.watch(self.hot.done_r, self.hot.done_readable)
        self.clients: list[socket.socket] = []
        self.now = 1000.0
        self.turns = 0
        for _ in range(2 * workers + 1):  # every place taken, and one in the backlog
            self.connect()
        for _ in range(3):
            self.turn()
        for pid in self.procs:
            self.take(pid)  # each serves its first; the second stays queued

    def routable(self) -> list[WorkerProcess]:
        """The workers that take work: Dispatcher._routable's part."""
        return self.routes

    def connect(self) -> None:
        """A client connects: on loopback its handshake is done when connect() returns."""
        self.clients.append(socket.create_connection(self.address))
        if len(self.clients) > 64:
            for client in self.clients[:32]:
                client.close()
            del self.clients[:32]

    def take(self, pid: int) -> None:
        """The worker takes the next connection queued in its channel, if any."""
        try:
            message = channel.receive(self.ends[pid], channel.DONTWAIT)
        except BlockingIOError:
            return
        if message is not None:
            channel.close_all(message[1])

    def work(self) -> None:
        """The other processes' part of a turn: the next worker in turn finishes its oldest
        connection and starts the one queued behind it, and a client connects."""
        pid = 1 + self.turns % len(self.procs)
        self.turns += 1
        first = next(iter(self.procs[pid].w.handed))
        os.write(self.hot.done_w, b"".join(wire.encode_done(pid, [first])))
        self.take(pid)
        self.connect()

    def turn(self) -> None:
        """Dispatcher.run's loop, once."""
        self.now += STEP
        self.loop.poll(self.hot.timeout(self.now, self.loop.next_timer()))
        self.hot.turn(self.now)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        channel.close_all([item[1] for item in self.hot.pending])
        for p in self.procs.values():
            p.close()
        for end in self.ends.values():
            end.close()
        self.loop.close()
        self.listener.close()
        channel.close_all([self.hot.done_r, self.hot.done_w])


def count(churn: Churn, turns: int) -> tuple[Counter, Counter]:
    """(calls, bytecodes) per function (its qualified name) over `turns` traced turns, each
    checked (untraced) to have finished, accepted and handed over one connection."""
    calls: Counter[str] = Counter()
    codes: Counter[str] = Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Callable[..., Any]:
        if event == "call":
            calls[frame.f_code.co_qualname] += 1
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        elif event == "opcode":
            codes[frame.f_code.co_qualname] += 1
        return trace

    hot = churn.hot
    for n in range(turns):
        churn.work()
        before = (hot.served, hot.next_id, len(hot.pending))
        sys.settrace(trace)
        try:
            churn.turn()
        finally:
            sys.settrace(None)
        after = (hot.served - 1, hot.next_id - 1, len(hot.pending))
        if after != before:  # (served, accepted, left waiting here)
            sys.exit(f"bench.turns: turn {n} was not one of churn: {before} then {after}")
    # The loop's own pass is Dispatcher.run's frame, not a call: its bytecodes count.
    name = Churn.turn.__qualname__
    calls.pop(name, None)
    codes[LOOP] = codes.pop(name, 0)
    return calls, codes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--turns", type=int, default=1000)
    args = ap.parse_args(argv)
    if args.workers < 1 or args.turns < 1:
        ap.error("--workers and --turns must be at least 1")
    log.log.setLevel(logging.ERROR)  # "all workers busy": they are, by design
    churn = Churn(args.workers)
    try:
        for _ in range(WARM_UP):
            churn.work()
            churn.turn()
        calls, codes = count(churn, args.turns)
    finally:
        churn.close()
    n = args.turns
    print(f"# one turn of saturated churn, {args.workers} sync workers (capacity 2): per turn")
    print(f"{'calls':>7} {'bytecodes':>10}  function")
    for name in sorted(codes, key=lambda name: (-codes[name], name)):
        print(f"{calls[name] / n:7.2f} {codes[name] / n:10.1f}  {name}")
    print(f"{sum(calls.values()) / n:7.2f} {sum(codes.values()) / n:10.1f}  all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
