"""The dispatcher's picture of its workers, and the moves that change which of them take work.

Pure bookkeeping, no I/O. Every move of a worker goes through `move`, and a generation swap
bumps `version` too: the hot path keeps its list of routable workers until the version
changes, so no call site has to remember to clear a cache.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from . import lifecycle as ev
from .lifecycle import Action
from .states import SERVING, ExitReason, Generation, Trigger, Worker, WorkerState, advance, can


class Pool:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.workers: dict[int, Worker] = {}
        self.version = 0

    def add(self, pid: int, gen: Generation, now: float) -> Worker:
        cfg = gen.config
        w = self.workers[pid] = Worker(pid, gen.number, last_heard=now)
        if cfg.max_requests:  # jitter, so a pool started together does not retire together
            jitter = cfg.max_requests_jitter
            jitter = cfg.max_requests // 10 if jitter is None else jitter
            w.max_served = cfg.max_requests + self.rng.randint(0, jitter)
        if cfg.start_timeout:
            w.deadline = now + cfg.start_timeout
        return w

    def remove(self, pid: int) -> Worker | None:
        w = self.workers.pop(pid, None)
        if w is not None:
            self.move(w, Trigger.EXIT)
        return w

    def move(self, w: Worker, trigger: Trigger) -> None:
        advance(w, trigger)
        self.version += 1

    def heard(self, pid: int, now: float = 0.0, failure: str = "") -> None:
        """It said something: a heartbeat at `now`, or why it cannot start."""
        if w := self.workers.get(pid):
            w.last_heard = now or w.last_heard
            w.failure = failure or w.failure

    def closed(self, pid: int) -> None:
        if w := self.workers.get(pid):
            w.listening = False
            self.version += 1

    def of(self, gen: Generation) -> list[Worker]:
        return [w for w in self.workers.values() if w.generation == gen.number]

    def serving(self, gen: Generation) -> list[Worker]:
        """The workers that take new connections: ready, of `gen`, listening."""
        return [w for w in self.of(gen) if w.state in SERVING and w.listening]

    def ready_count(self, gen: Generation) -> int:
        return sum(w.state in SERVING for w in self.of(gen))

    def retire(self, workers: Iterable[Worker], now: float, grace: float) -> list[Action]:
        """Ask workers to finish what they hold and exit within `grace` seconds."""
        actions: list[Action] = []
        for w in workers:
            if can(w, Trigger.RETIRE):
                starting = w.state is WorkerState.STARTING
                self.move(w, Trigger.RETIRE)
                actions += self.told_to_stop(w, now, grace, starting)
        return actions

    def told_to_stop(
        self, w: Worker, now: float, grace: float, starting: bool = False
    ) -> list[Action]:
        w.reason = w.reason or ExitReason.RETIRED
        w.deadline = now + grace
        return [ev.SendStop(w.pid, starting), ev.Wake(w.deadline)]

    def kill(self, workers: Iterable[Worker], reason: ExitReason) -> list[Action]:
        actions: list[Action] = []
        for w in workers:
            if can(w, Trigger.KILL):
                self.move(w, Trigger.KILL)
                w.reason = w.reason or reason
                actions.append(ev.Kill(w.pid, w.reason))
        return actions
