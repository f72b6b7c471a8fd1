"""One worker process as the dispatcher holds it: its pid, its channel, its stack file.

uvicorn's supervisor keeps one object per child that owns its pipe; this is ours. It forks
the worker, tells it to stop, kills it, asks it for its stacks, reads back what it never took,
and says in words how it ended. What the worker *is* in the lifecycle (its state, its
counters) is `w`, the policy's record of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator
from typing import NamedTuple

from . import channel, cpuslice, health, log, wire
from . import lifecycle as ev
from . import worker as worker_mod
from .completions import SENT, Ledger
from .direct import Accepts, Seat
from .pull import LoopWord
from .spec import WorkerSpec
from .states import ExitReason, Worker

# A connection accepted and not yet taken by a worker: (conn_id, fd, listener name, peer,
# carried bytes, when its request began in monotonic ns or 0). A tuple, because millions
# are made on the hot path.
Pending = tuple[int, int, str, str, bytes, int]


class GivenBack(NamedTuple):
    """A connection a worker parked: the hot path's, not the lifecycle policy's, business."""

    message: wire.Park
    fd: int
    unsent: int = -1  # with message.unsent: the memfd, or file, holding the answer's rest


def reaped() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of each child that has exited, without blocking."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def describe_status(code: int) -> str:
    """A waitpid status in words, for the journal."""
    if os.WIFSIGNALED(code):
        sig = os.WTERMSIG(code)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        core = " (core dumped)" if os.WCOREDUMP(code) else ""
        return f"killed by signal {name}{core}"
    return f"exited with status {os.waitstatus_to_exitcode(code)}"


def fork_worker(
    spec: WorkerSpec, done: int, close_in_child: Callable[[], None]
) -> tuple[int, socket.socket, socket.socket, int, LoopWord | None, Ledger | None, Seat | None]:
    """Fork a worker: (pid, our channel end, its end, its stack file, the word its loop
    says it waits in with `pull`, the ledger of its unreported completions with a
    `queue_ahead` of 2 or more, the seat it says what it accepted in with `accept =
    workers`). Raises OSError when it cannot (out of processes or descriptors), having
    closed what it made.

    `close_in_child` drops everything of the dispatcher's in the child: a worker holds no
    listener (but those it accepts from), no other worker's channel, no connection not
    handed to it."""
    ours, theirs = channel.pair()
    made: list[socket.socket | int | LoopWord | Ledger | Seat] = [ours, theirs]
    word = ledger = seat = None
    try:
        stacks = health.new_stack_file(spec.generation)
        made.append(stacks)
        if spec.pull:
            word = LoopWord()
            made.append(word)
        if spec.queue_ahead > 1:
            ledger = Ledger()
            made.append(ledger)
        if spec.accepts:
            seat = Seat()
            made.append(seat)
        pid = os.fork()
    except OSError:
        for thing in made:
            if isinstance(thing, int):
                os.close(thing)
            else:
                thing.close()
        raise
    if pid == 0:
        try:
            cpuslice.reset_in_child()
            ours.close()
            close_in_child()
            worker_mod.run(theirs, spec, stacks, done, word, ledger, seat)
        finally:
            os._exit(1)
    # We keep `theirs` open (never reading it while the worker lives): when the worker dies,
    # the handoffs it had not yet read stay queued there instead of being thrown away with
    # their descriptors, and we hand them to another worker.
    ours.setblocking(False)
    return pid, ours, theirs, stacks, word, ledger, seat


class WorkerProcess:
    def __init__(
        self,
        pid: int,
        chan: socket.socket,
        inbox: socket.socket,
        stacks: int,
        w: Worker,
        word: LoopWord | None = None,
        ledger: Ledger | None = None,
        seat: Seat | None = None,
        accepts: Accepts = (),
    ) -> None:
        self.pid = pid
        self.chan = chan  # our end of the channel
        self.inbox = inbox  # a copy of the worker's end: what it never read can be read back
        self.stacks = stacks  # memfd its faulthandler writes to
        self.w = w
        self.word = word  # `pull`: its loop says here when it waits for work (pull.py)
        self.ledger = ledger  # its completions not yet reported (completions.py)
        self.speaks_first: frozenset[str] = frozenset()  # from READY: listeners to defer
        self.solo = False  # from READY: a sync worker (more than 1 in hand are queued)
        # Handoffs it may not have read (hotpath.rebalance): the first sent since it was
        # last heard from (0: none), and when some were found unread: it gets no more
        # until it is heard from again.
        self.unheard_since = 0.0
        self.stalled_at = 0.0
        # `accept = workers` (direct.py): what it says it accepted, the listeners it may
        # accept from (none once an async worker's READY says it closed them), whether it
        # was told to, and what of its seat the dispatcher has counted.
        self.seat = seat
        self.accepts = accepts
        self.accepting = False
        self.seat_served = 0
        self.seat_conn = 0

    def next_event(self, now: float) -> object | None:
        """Its next message: a lifecycle event, or GivenBack for a connection
        it gave back; ChannelClosed once it closed its end, None when there is nothing to
        read. Raises WireError (having closed any descriptor) for a message we cannot read."""
        try:
            message = channel.receive(self.chan, channel.DONTWAIT)
        except BlockingIOError:
            return None
        except ConnectionError:
            message = None
        if message is None:
            return ev.ChannelClosed(self.pid)
        data, fds = message
        try:
            message = wire.decode_to_dispatcher(data, len(fds))
        except wire.WireError:
            channel.close_all(fds)
            raise
        if isinstance(message, wire.Park):
            return GivenBack(message, *fds)
        if isinstance(message, wire.Ready):
            self.speaks_first = message.speaks_first
            self.solo = message.solo
            if self.ledger is not None and not message.solo:  # only a sync worker notes
                self.ledger.close()  # completions: nothing for the hot path to count or read
                self.ledger = None
            if self.seat is not None and not message.solo:  # nor accepts (worker.run
                self.seat.close()  # closed the listeners)
                self.seat = None
                self.accepts = ()
            return ev.Ready(self.pid, message.capacity, now)
        if isinstance(message, wire.Failed):
            return ev.Failed(self.pid, message.reason)
        if isinstance(message, wire.Retire):
            return ev.Retire(self.pid, message.reason, now)
        return ev.Beat(self.pid, now)

    @property
    def pulls(self) -> bool:
        """An async worker with a word (pull.py): `solo` from its READY says which it is."""
        return self.word is not None and not self.solo

    def tell_accepting(self, on: bool) -> bool:
        """ACCEPT: whether it may accept for itself; False if it could not be told."""
        try:
            channel.send(self.chan, wire.encode_accept(on))
        except OSError:
            return False
        self.accepting = on
        return True

    def stop(self) -> None:
        try:
            channel.send(self.chan, wire.encode_stop())
        except OSError:  # its channel is full or gone: the signal says the same
            self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def ask_for_stacks(self) -> None:
        """SIGCONT too, in case it was stopped: the dump would wait for it."""
        health.clear_stacks(self.stacks)
        for sig in (health.DUMP_SIGNAL, signal.SIGCONT):
            self.signal(sig)

    def read_stacks(self) -> str:
        return health.read_stacks(self.stacks)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # already reaped: nothing to tell
            os.kill(self.pid, sig)

    def took_none(self) -> bool:
        """Whether the first handoff still in its channel is the oldest it holds: it has
        taken none of them yet. A peek, without a buffer for descriptors, so none is
        installed here (an empty channel, like a STOP, has no handoff to name)."""
        try:
            head = self.inbox.recv(wire.FIRST_ID_SIZE, channel.PEEK)
        except OSError:
            head = b""
        oldest = next((cid for cid in self.w.handed if cid != self.seat_conn), None)
        return wire.first_conn_id(head) == oldest  # (not one it accepted itself)

    def read_back(self, live: bool = False) -> list[Pending]:
        """The handoffs it never took, descriptors and all: once it has exited, or (`live`)
        while it lives, to move them elsewhere (a STOP or an ACCEPT is never ours to take:
        it goes back)."""
        recovered: list[Pending] = []
        said = None  # an ACCEPT read with them: it goes back after them
        while True:
            try:
                message = channel.receive(self.inbox, channel.DONTWAIT)
            except BlockingIOError:
                break
            except wire.WireError as exc:  # descriptors dropped at our own limit (EMFILE)
                log.log.error("could not read back a handoff from worker %d: %s", self.pid, exc)
                if live:  # a live worker: try no further now
                    break
                continue
            if message is None:
                break
            data, fds = message
            decoded = wire.decode_to_worker(data, len(fds))
            if isinstance(decoded, wire.Accept):
                said = data
                continue
            if isinstance(decoded, wire.Stop):
                if live:  # put it back: it is the last thing the worker is sent
                    for back in (said, data):
                        if back:
                            channel.send(self.chan, back)
                    return recovered
                continue
            for h, fd in zip(decoded, fds, strict=True):
                recovered.append((h.conn_id, fd, h.listener, h.peer, h.carry, h.started))
            if self.ledger is not None:  # no longer queued for it: completions.py
                self.ledger.words[SENT] -= len(fds)
            if self.word is not None:  # pull: the wait it was fed in took nothing after all.
                self.word.fed = -1  # Its loop may still be in it (epoll found nothing, slept on)
        if said and live:
            channel.send(self.chan, said)
        return recovered

    def ended(self, status: int, oom_before: int | None) -> tuple[str, ExitReason, str, int | None]:
        """How it ended: in words, as a reason by the status alone, its stacks if it crashed,
        and the OOM count to compare the next exit with. When we ended it ourselves, our
        reason stands (w.reason) and neither the OOM count nor the stacks are read."""
        how = describe_status(status)
        if self.w.reason:
            return how, ExitReason(health.exit_reason(status, "", None, None)), "", oom_before
        oom_now = health.oom_kills()
        reason = ExitReason(health.exit_reason(status, "", oom_before, oom_now))
        if reason is ExitReason.OOM:
            return how + " (the kernel's OOM killer)", reason, "", oom_now
        stacks = health.crash_part(self.read_stacks()) if reason is ExitReason.CRASHED else ""
        return how, reason, stacks, oom_before

    def close(self) -> None:
        for sock in (self.chan, self.inbox):
            sock.close()
        os.close(self.stacks)
        if self.word is not None:
            self.word.close()
        if self.ledger is not None:
            self.ledger.close()
        if self.seat is not None:
            self.seat.close()
