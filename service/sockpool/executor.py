"""Carrying out the policy's actions: forking and signalling workers, sd_notify, the journal.

Every action (lifecycle.py) has one method here, a few lines of I/O each. What an action
leads to comes back to the policy as an event through `feed` (a fork that failed, the memory
readings asked for), so the decisions stay in policy.py.
"""

from __future__ import annotations

import errno
import signal
import time
from collections.abc import Callable
from functools import partial

from . import direct, health, listeners, log, records
from . import lifecycle as ev
from .errors import Fatal
from .eventloop import Loop, Timer
from .events import Event
from .hotpath import HotPath
from .notify import Notifier
from .policy import Lifecycle
from .process import WorkerProcess, fork_worker
from .spec import WorkerSpec
from .states import Generation


class Executor:
    def __init__(
        self,
        policy: Lifecycle,
        loop: Loop,
        hot: HotPath,
        notifier: Notifier,
        feed: Callable[[object], None],
        status: Callable[[], str],
        on_messages: Callable[[WorkerProcess], object],
        in_child: Callable[[frozenset[int]], None],
    ) -> None:
        self.policy, self.loop, self.hot, self.notifier = policy, loop, hot, notifier
        self.procs = hot.workers  # one table of worker processes, shared with the hot path
        self.feed, self.status, self.on_messages = feed, status, on_messages
        self.in_child = in_child
        self.tick_timer: Timer | None = None
        self.specs: dict[int, WorkerSpec] = {}

    def __call__(self, actions: list[ev.Action]) -> None:
        for action in actions:
            getattr(self, type(action).__name__.lower())(action)

    def tick(self) -> None:
        self.tick_timer = None
        self.feed(ev.Tick(time.monotonic(), self.hot.undelivered()))

    def spawn(self, a: ev.Spawn) -> None:
        gen = a.generation
        spec = self._spec(gen)
        keep = frozenset(fd for _, fd, _ in spec.accepts)  # the listeners it accepts from
        try:
            forked = fork_worker(spec, self.hot.done_w, partial(self.in_child, keep))
        except OSError as exc:
            self.feed(ev.SpawnFailed(gen.number, _fork_error(exc), time.monotonic()))
            return
        pid, chan, inbox, stacks, word, ledger, seat = forked
        actions = self.policy.handle(ev.Spawned(pid, gen.number, time.monotonic()))
        w = self.policy.workers[pid]
        p = WorkerProcess(pid, chan, inbox, stacks, w, word, ledger, seat, spec.accepts)
        self.procs[pid] = p
        self.loop.watch(chan, lambda: self.on_messages(p))
        self(actions)

    def _spec(self, gen: Generation) -> WorkerSpec:
        if gen.number not in self.specs:  # forget the generations that are gone
            live = {g.number for g in (self.policy.active, self.policy.incoming) if g}
            self.specs = {n: s for n, s in self.specs.items() if n in live}
            names = list(dict.fromkeys(lst.name for lst in self.hot.listeners))
            sockets = listeners.kinds(self.hot.listeners)
            listening = direct.listening(self.hot.listeners)
            self.specs[gen.number] = WorkerSpec.of(
                gen.number, gen.config, names, sockets, listening
            )
        return self.specs[gen.number]

    def sendstop(self, a: ev.SendStop) -> None:
        if p := self.procs.get(a.pid):
            p.stop()
            if a.starting:
                p.signal(signal.SIGTERM)

    def kill(self, a: ev.Kill) -> None:
        if p := self.procs.get(a.pid):
            if a.hang:
                records.write(a.hang, p.read_stacks() or "(no stacks: the worker did not answer)")
            p.kill()

    def askstacks(self, a: ev.AskStacks) -> None:
        if p := self.procs.get(a.pid):
            p.ask_for_stacks()

    def checkmemory(self, a: ev.CheckMemory) -> None:
        readings = {pid: rss for pid in a.pids if (rss := health.rss_mib(pid)) is not None}
        self.feed(ev.Memory(readings, time.monotonic()))

    def swap(self, a: ev.Swap) -> None:
        self.hot.admission.update(a.generation.config)
        self.hot.configure(a.generation.config)
        log.set_level(a.generation.config.log_level)

    def notify(self, a: ev.Notify) -> None:
        if a.state == "reloading":
            self.notifier.reloading()
        elif a.state == "stopping":
            self.notifier.stopping(self.status())
        else:
            self.notifier.ready(self.status(), serves=self.policy.active.config.digest)

    def stopaccepting(self, a: ev.StopAccepting) -> None:
        for listener in self.hot.listeners:
            self.loop.unwatch(listener.sock)  # systemd keeps the queue for the next start
        self.hot.stop_accepting()

    def wake(self, a: ev.Wake) -> None:
        """One timer for the policy's next tick: moved earlier when asked, never later."""
        if self.tick_timer is None or a.at < self.tick_timer.at:
            if self.tick_timer:
                self.tick_timer.cancel()
            self.tick_timer = self.loop.call_at(a.at, self.tick)

    def giveup(self, a: ev.GiveUp) -> None:
        raise Fatal(a.code, a.message, event=Event.WORKERS_FAILING)

    def record(self, a: ev.Record) -> None:
        records.write(a)


def _fork_error(exc: OSError) -> str:
    """Why a worker could not be made, naming the limit an admin can raise."""
    if exc.errno == errno.EAGAIN:
        return (
            "fork failed: at a process limit (the unit's TasksMax=, LimitNPROC= shared by "
            "every instance's user, or the cgroup's pids.max)"
        )
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return f"out of descriptors ({exc.strerror}): raise LimitNOFILE="
    return exc.strerror or str(exc)
