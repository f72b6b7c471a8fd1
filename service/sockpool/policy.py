"""The lifecycle policy: which workers to start, retire, recycle or kill, and when. No I/O.

`handle(event)` takes one event (lifecycle.py) and returns the actions to carry out, in
order. Generations own their workers; a reload builds the next one beside the serving one
and swaps only once all of its workers are ready. Deadlines are data on the workers and the
policy, checked on `Tick`; every action list that sets one ends with `Wake` for it.
"""

from __future__ import annotations

import logging
import random

from . import deadlines, records
from . import lifecycle as ev
from .config import Config, as_reloaded
from .errors import ExitCode
from .events import Event
from .lifecycle import Action
from .pool import Pool
from .states import ExitReason, Generation, Trigger, Worker, WorkerState

S = WorkerState
MEMORY_CHECK_INTERVAL = 1.0
MAX_BACKOFF = 10.0
_REPLACE = (None, ExitReason.HUNG, ExitReason.START_TIMEOUT)  # exits that need a successor


class Lifecycle:
    def __init__(self, config: Config, rng: random.Random | None = None) -> None:
        self.pool = Pool(rng or random.Random())
        self.workers = self.pool.workers
        self.numbers = 1
        self.active = Generation(1, config)
        self.started = config  # what the sockets and the journal's name came from
        self.incoming: Generation | None = None  # a reload's generation, until it is ready
        self.respawns: list[tuple[float, Generation]] = []
        self.stopping = False
        self.stop_deadline = 0.0
        self.announced_ready = False
        self.next_memory_check = 0.0

    def start(self, now: float) -> list[Action]:
        """The first generation's workers, and the first tick (each tick sets the next)."""
        return [*[ev.Spawn(self.active)] * self.active.config.workers, ev.Wake(now)]

    def handle(self, event: object) -> list[Action]:
        """Event `Name` goes to method `_on_name`; each returns the actions it wants."""
        return getattr(self, f"_on_{type(event).__name__.lower()}")(event)

    @property
    def finished(self) -> bool:
        return self.stopping and not self.workers and not self.respawns

    # -- workers starting --------------------------------------------------------------------
    def _on_spawned(self, e: ev.Spawned) -> list[Action]:
        gen = self._generation(e.generation)
        w = self.pool.add(e.pid, gen or Generation(e.generation, self.active.config), e.now)
        if gen is None:  # its reload was dropped while it was being forked
            return self.pool.kill([w], ExitReason.RETIRED)
        return [ev.Wake(w.deadline)] if w.deadline else []

    def _on_spawnfailed(self, e: ev.SpawnFailed) -> list[Action]:
        gen = self._generation(e.generation)
        if gen is None or self.stopping:
            return []
        said, gen.spawn_failure_said = gen.spawn_failure_said, True  # one line, not a storm
        record = records.problem(f"cannot start a worker: {e.reason}", logging.ERROR)
        return [record] * (not said) + self._start_failed(gen, e.reason, e.now)

    def _on_ready(self, e: ev.Ready) -> list[Action]:
        w = self.workers.get(e.pid)
        if w is None:
            return []
        w.last_heard = e.now
        if w.state is not S.STARTING:
            if w.capacity:  # READY twice on one channel: a second process is using it
                return [records.second_reporter(w)]
            w.capacity = e.capacity  # told to stop while it started: it gets no work
            return []
        w.capacity, w.deadline = e.capacity, 0.0
        self.pool.move(w, Trigger.READY)
        actions: list[Action] = [records.worker_started(w)]
        gen = self._generation(w.generation)
        if gen is not None:
            gen.start_failures = 0
            while gen.recycling:  # a replacement is ready: the oldest recycling one may go
                old = gen.recycling.pop(0)
                if old.state is S.RECYCLING:  # not one that hung or was killed meanwhile
                    self.pool.move(old, Trigger.REPLACED)
                    actions += self.pool.told_to_stop(old, e.now, self._grace())
                    break
            actions += self._check_generation_ready(e.now)
        return actions

    def _on_failed(self, e: ev.Failed) -> list[Action]:
        self.pool.heard(e.pid, failure=e.reason)
        return []

    def _on_beat(self, e: ev.Beat) -> list[Action]:
        self.pool.heard(e.pid, now=e.now)
        return []

    def _on_channelclosed(self, e: ev.ChannelClosed) -> list[Action]:
        self.pool.closed(e.pid)
        return []

    def _check_generation_ready(self, now: float) -> list[Action]:
        gen = self.incoming or self.active
        ready = self.pool.ready_count(gen)
        if ready < gen.config.workers or self.stopping:  # no READY=1 after STOPPING=1
            return []
        if gen is not self.incoming:
            if self.announced_ready:
                return []
            self.announced_ready = True
            return [records.ready(gen, ready), ev.Notify("ready")]
        old = [w for w in self.pool.of(self.active) if w.state is not S.KILLED]
        self.active, self.incoming = gen, None
        # A reload asked during the start ends it too: its generation is what is ready.
        started = [] if self.announced_ready else [records.ready(gen, ready)]
        self.announced_ready = True
        self.pool.version += 1
        self.respawns = [(at, g) for at, g in self.respawns if g is gen]
        return [
            ev.Swap(gen),
            *self.pool.retire(old, now, self._grace()),
            *started,
            records.reloaded(gen, len(old)),
            ev.Notify("ready"),
        ]

    # -- workers ending ----------------------------------------------------------------------
    def _on_exited(self, e: ev.Exited) -> list[Action]:
        w = self.pool.remove(e.pid)
        if w is None:
            return []
        actions: list[Action] = [records.worker_exited(w, e, w.reason or e.natural)]
        gen = self._generation(w.generation)
        if gen is not None and w in gen.recycling:
            gen.recycling.remove(w)
        if gen is None or self.stopping or w.succeeded or w.reason not in _REPLACE:
            return actions
        if not w.capacity or w.reason is ExitReason.START_TIMEOUT:  # it never got ready
            return actions + self._start_failed(gen, w.failure or e.how, e.now)
        return [*actions, ev.Spawn(gen)]

    def _start_failed(self, gen: Generation, why: str, now: float) -> list[Action]:
        """Back off exponentially; after too many failures in a row, give up."""
        gen.start_failures += 1
        gen.last_failure = why
        if gen.start_failures >= gen.max_start_failures:
            return self._give_up(gen, now)
        at = now + min(MAX_BACKOFF, 0.1 * 2 ** (gen.start_failures - 1))
        self.respawns.append((at, gen))
        return [ev.Wake(at)]

    def _give_up(self, gen: Generation, now: float) -> list[Action]:
        reason = f"{gen.start_failures} workers in a row failed to start; last: "
        reason += gen.last_failure
        if gen is self.incoming:
            return self._abort_reload(reason, now)
        self.respawns.clear()
        return [
            *self.pool.kill(list(self.workers.values()), ExitReason.RETIRED),
            ev.GiveUp(ExitCode.WORKERS_FAILING, f"workers keep failing to start: {reason}"),
        ]

    def _recycle(self, why: dict[Worker, str], now: float) -> list[Action]:
        """Retire workers gracefully, each once its replacement is ready."""
        actions: list[Action] = []
        for w in (w for w in why if w.state is S.READY):
            self.pool.move(w, Trigger.RECYCLE)
            w.reason, w.succeeded = ExitReason.RECYCLED, True
            actions.append(records.recycling(w, why[w]))
            gen = self._generation(w.generation)
            if gen is None or self.stopping:
                self.pool.move(w, Trigger.REPLACED)
                actions += self.pool.told_to_stop(w, now, self._grace())
            else:
                gen.recycling.append(w)
                actions.append(ev.Spawn(gen))
        return actions

    def _on_completions(self, e: ev.Completions) -> list[Action]:
        done = [w for pid in e.pids if (w := self.workers.get(pid)) and w.max_served]
        why = "served {} connections or turns of one (max_requests)"
        return self._recycle(
            {w: why.format(w.served) for w in done if w.served >= w.max_served}, e.now
        )

    def _on_retire(self, e: ev.Retire) -> list[Action]:
        w = self.workers.get(e.pid)
        return self._recycle({w: e.reason}, e.now) if w else []

    def _on_memory(self, e: ev.Memory) -> list[Action]:
        limit = self.active.config.max_memory
        why = "resident memory {:.0f} MiB over max_memory=" + str(limit)
        over = {
            w: why.format(rss) for pid, rss in e.rss_mib.items() if (w := self.workers.get(pid))
        }
        return self._recycle(
            {w: text for w, text in over.items() if e.rss_mib[w.pid] > limit}, e.now
        )

    # -- the clock ---------------------------------------------------------------------------
    def _on_tick(self, e: ev.Tick) -> list[Action]:
        now = e.now
        actions: list[Action] = [ev.Spawn(g) for at, g in self.respawns if at <= now]
        self.respawns = [(at, g) for at, g in self.respawns if at > now]
        if self.stopping:
            if not e.undelivered:  # everything accepted is handed over: let workers finish
                actions += self.pool.retire(list(self.workers.values()), now, self._grace())
            if now >= self.stop_deadline and self.workers:
                message = f"graceful timeout: killing {len(self.workers)} workers"
                actions.append(records.problem(message))
                for w in self.workers.values():  # as a reload's are (deadlines._overdue):
                    if w.reason in (None, ExitReason.RETIRED, ExitReason.RECYCLED):  # not hung
                        w.reason = ExitReason.OVERDUE
                actions += self.pool.kill(list(self.workers.values()), ExitReason.OVERDUE)
                self.stop_deadline = float("inf")
        for w in list(self.workers.values()):
            config = (self._generation(w.generation) or self.active).config
            actions += deadlines.check(w, now, config, self.pool.move)
        cfg, due = self.active.config, [at for at, _ in self.respawns]
        if cfg.max_memory:
            if now >= self.next_memory_check:
                self.next_memory_check = now + MEMORY_CHECK_INTERVAL
                pids = tuple(w.pid for w in self.workers.values() if w.state is S.READY)
                actions.append(ev.CheckMemory(pids))
            due.append(self.next_memory_check)
        if self.stopping:
            due.append(min(self.stop_deadline, now + 0.1))  # retire once all is handed over
        return [*actions, ev.Wake(deadlines.next_tick(now, cfg, self.workers.values(), due))]

    # -- reload and stop ---------------------------------------------------------------------
    def _on_reloadrequested(self, e: ev.ReloadRequested) -> list[Action]:
        if self.stopping:
            return []
        actions = self._drop_incoming()  # a newer reload supersedes one still starting
        # Not before the first READY=1: systemd is still waiting for the start.
        actions += [ev.Notify("reloading")] * self.announced_ready
        actions.append(records.event(Event.RELOADING, "reloading: re-reading the configuration"))
        if e.config is None:
            return actions + self._abort_reload(e.error, e.now)
        config, kept = as_reloaded(self.started, e.config, 1)
        # One of several dispatchers leaves it to the main process, once for all.
        if kept and not self.started.shares_sockets:
            actions.append(records.problem(kept))
        self.numbers += 1
        self.incoming = Generation(self.numbers, config)
        return actions + [ev.Spawn(self.incoming)] * config.workers

    def _abort_reload(self, reason: str, now: float) -> list[Action]:
        """The old generation serves on. One still starting says READY=1 once it is ready,
        not before (systemd would take the start as done), and it may be already: while
        the reload's generation started, only that one was looked at."""
        actions = [*self._drop_incoming(), records.reload_failed(reason)]
        if self.announced_ready:
            return [*actions, ev.Notify("ready")]
        return actions + self._check_generation_ready(now)

    def _drop_incoming(self) -> list[Action]:
        """Kill a reload's generation that is not serving yet."""
        gen, self.incoming = self.incoming, None
        if gen is None:
            return []
        self.respawns = [(at, g) for at, g in self.respawns if g is not gen]
        return self.pool.kill(self.pool.of(gen), ExitReason.RETIRED)

    def _on_stoprequested(self, e: ev.StopRequested) -> list[Action]:
        if self.stopping:
            if e.signal == "SIGINT":  # a second Ctrl-C: no more waiting
                self.stop_deadline = e.now
                return [ev.Wake(e.now)]
            return []
        self.stopping = True
        timeout = self._grace()
        self.stop_deadline = e.now + timeout
        self.respawns.clear()
        message = f"stopping on {e.signal}: draining {e.busy} connections (up to {timeout:g}s)"
        return [
            ev.StopAccepting(),
            records.event(Event.STOPPING, message),
            ev.Notify("stopping"),
            *self._drop_incoming(),
            ev.Wake(e.now),
        ]

    # -- lookups -----------------------------------------------------------------------------
    def _grace(self) -> float:
        return self.active.config.graceful_timeout

    def _generation(self, number: int) -> Generation | None:
        for gen in (self.active, self.incoming):
            if gen is not None and gen.number == number:
                return gen
        return None
