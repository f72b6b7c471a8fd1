"""The lifecycle policy: which workers to start, retire, recycle or kill, and when. No I/O.

`handle(event)` takes one event (lifecycle.py) and returns the actions to carry out, in
order. Generations own their workers; a reload builds the next one beside the serving one
and swaps only once all of its workers are ready. Deadlines are data on the workers and the
policy, checked on `Tick`; every action list that sets one ends with `Wake` for it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable

from . import lifecycle as ev
from .config import Config
from .errors import ExitCode
from .events import Event
from .lifecycle import Action
from .states import SERVING, ExitReason, Generation, Trigger, Worker, WorkerState, advance, can

S = WorkerState
DUMP_GRACE = 0.5  # seconds a hung worker gets to write its stacks before SIGKILL
MEMORY_CHECK_INTERVAL = 1.0
MAX_BACKOFF = 10.0
MIN_TICK = 0.01  # a deadline just missed is checked again this soon, never in a busy loop
_DEADLINED = (S.STARTING, S.HUNG, S.RETIRING)  # the states whose `deadline` is set
_REPLACE = (None, ExitReason.HUNG, ExitReason.START_TIMEOUT)  # exits that need a successor


class Lifecycle:
    def __init__(self, config: Config, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.numbers = 1
        self.active = Generation(1, config)
        self.incoming: Generation | None = None  # a reload's generation, until it is ready
        self.workers: dict[int, Worker] = {}
        self.respawns: list[tuple[float, Generation]] = []
        self.stopping = False
        self.stop_deadline = 0.0
        self.announced_ready = False
        self.next_memory_check = 0.0
        self.version = 0  # bumped whenever the set of workers that take work may change
        self._handlers: dict[type, Callable[..., list[Action]]] = {
            ev.Spawned: self._spawned,
            ev.SpawnFailed: self._spawn_failed,
            ev.Ready: self._ready,
            ev.Failed: self._failed,
            ev.Beat: self._beat,
            ev.ChannelClosed: self._channel_closed,
            ev.Exited: self._exited,
            ev.Tick: self._tick,
            ev.Completions: self._completions,
            ev.Memory: self._memory,
            ev.ReloadRequested: self._reload,
            ev.StopRequested: self._stop,
        }

    def start(self, now: float) -> list[Action]:
        """The first generation's workers, and the first tick (each tick sets the next)."""
        return [*[ev.Spawn(self.active)] * self.active.config.workers, ev.Wake(now)]

    def handle(self, event: object) -> list[Action]:
        return self._handlers[type(event)](event)

    # -- what the rest of the dispatcher asks -----------------------------------------------
    @property
    def finished(self) -> bool:
        return self.stopping and not self.workers and not self.respawns

    def serving(self) -> list[Worker]:
        """Workers that take new connections: ready, of the active generation, listening."""
        gen = self.active.number
        return [
            w
            for w in self.workers.values()
            if w.generation == gen and w.state in SERVING and w.listening
        ]

    def of(self, gen: Generation) -> list[Worker]:
        return [w for w in self.workers.values() if w.generation == gen.number]

    def ready_count(self, gen: Generation) -> int:
        return sum(w.state in SERVING for w in self.of(gen))

    def busy(self) -> int:
        return sum(len(w.handed) for w in self.workers.values())

    # -- workers starting --------------------------------------------------------------------
    def _spawned(self, e: ev.Spawned) -> list[Action]:
        gen = self._generation(e.generation)
        cfg = gen.config if gen else self.active.config
        w = Worker(e.pid, e.generation, started=e.now, last_heard=e.now)
        if cfg.max_requests:  # jitter, so a pool started together does not retire together
            jitter = cfg.max_requests_jitter
            jitter = cfg.max_requests // 10 if jitter is None else jitter
            w.max_served = cfg.max_requests + self.rng.randint(0, jitter)
        self.workers[e.pid] = w
        if not cfg.start_timeout:
            return []
        w.deadline = e.now + cfg.start_timeout
        return [ev.Wake(w.deadline)]

    def _spawn_failed(self, e: ev.SpawnFailed) -> list[Action]:
        gen = self._generation(e.generation)
        if gen is None or self.stopping:
            return []
        return [
            ev.Record(None, f"cannot start a worker: {e.reason}", logging.ERROR),
            *self._start_failed(gen, e.reason, e.now),
        ]

    def _ready(self, e: ev.Ready) -> list[Action]:
        w = self.workers.get(e.pid)
        if w is None:
            return []
        w.last_heard = e.now
        if w.state is not S.STARTING:
            if w.capacity:  # READY twice on one channel: a second process is using it
                return [
                    ev.Record(
                        None,
                        f"worker {w.pid} reported ready twice: a second process speaks on "
                        "its channel (does the handler's module fork at import?)",
                        logging.ERROR,
                        {"WORKER_PID": w.pid},
                    )
                ]
            w.capacity = e.capacity  # told to stop while it started: it gets no work
            return []
        advance(w, Trigger.READY)
        w.capacity, w.deadline = e.capacity, 0.0
        self.version += 1
        actions: list[Action] = [
            ev.Record(
                Event.WORKER_STARTED,
                f"worker {w.pid} ready (capacity {w.capacity})",
                fields={"WORKER_PID": w.pid, "GENERATION": w.generation},
            )
        ]
        gen = self._generation(w.generation)
        if gen is not None:
            gen.start_failures = 0
            if gen.recycling:  # its replacement is ready: the old one may go now
                old = gen.recycling.pop(0)
                advance(old, Trigger.REPLACED)
                actions += self._told_to_stop(old, e.now)
            actions += self._check_generation_ready(e.now)
        return actions

    def _failed(self, e: ev.Failed) -> list[Action]:
        if w := self.workers.get(e.pid):
            w.failure = e.reason
        return []

    def _beat(self, e: ev.Beat) -> list[Action]:
        if w := self.workers.get(e.pid):
            w.last_heard = e.now
        return []

    def _channel_closed(self, e: ev.ChannelClosed) -> list[Action]:
        if w := self.workers.get(e.pid):
            w.listening = False
            self.version += 1
        return []

    def _check_generation_ready(self, now: float) -> list[Action]:
        gen = self.incoming or self.active
        ready = self.ready_count(gen)
        if ready < gen.config.workers:
            return []
        if gen is not self.incoming:
            if self.announced_ready:
                return []
            self.announced_ready = True
            message = f"ready: {ready} workers"
            return [
                ev.Record(Event.READY, message, fields={"GENERATION": gen.number}),
                ev.Notify("ready"),
            ]
        old = [w for w in self.of(self.active) if w.state is not S.KILLED]
        self.active, self.incoming = gen, None
        self.version += 1
        self.respawns = [(at, g) for at, g in self.respawns if g is gen]
        return [
            ev.Swap(gen),
            *self._retire(old, now),
            ev.Record(
                Event.READY,
                f"reloaded: generation {gen.number} serves, {len(old)} old workers drain",
                fields={"GENERATION": gen.number},
            ),
            ev.Notify("ready"),
        ]

    # -- workers ending ----------------------------------------------------------------------
    def _exited(self, e: ev.Exited) -> list[Action]:
        w = self.workers.pop(e.pid, None)
        if w is None:
            return []
        was = w.state
        advance(w, Trigger.EXIT)
        self.version += 1
        reason = w.reason or e.natural
        lost = f"; {e.lost} connections in its hands were cut" if e.lost else ""
        stacks = f"\n{e.stacks}" if e.stacks else ""
        quiet = reason in (ExitReason.RETIRED, ExitReason.RECYCLED)
        actions: list[Action] = [
            ev.Record(
                Event.WORKER_EXITED,
                f"worker {w.pid} {e.how}{lost}{stacks}",
                logging.INFO if quiet else logging.WARNING,
                {
                    "WORKER_PID": w.pid,
                    "GENERATION": w.generation,
                    "EXIT_STATUS": e.how,
                    "EXIT_REASON": str(reason),
                    "CONNECTIONS_LOST": e.lost,
                },
            )
        ]
        gen = self._generation(w.generation)
        if gen is not None and w in gen.recycling:
            gen.recycling.remove(w)
        if gen is None or self.stopping or w.reason not in _REPLACE:
            return actions
        if was is S.STARTING or w.reason is ExitReason.START_TIMEOUT:
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
        reason = f"{gen.start_failures} workers in a row died before they were ready; last: "
        reason += gen.last_failure
        if gen is self.incoming:
            return self._abort_reload(reason)
        self.respawns.clear()
        return [
            *self._kill(list(self.workers.values()), ExitReason.RETIRED),
            ev.GiveUp(ExitCode.WORKERS_FAILING, f"workers keep failing to start: {reason}"),
        ]

    def _retire(self, workers: Iterable[Worker], now: float) -> list[Action]:
        """Ask workers to finish what they hold and exit."""
        actions: list[Action] = []
        for w in workers:
            if can(w, Trigger.RETIRE):
                advance(w, Trigger.RETIRE)
                actions += self._told_to_stop(w, now)
        return actions

    def _told_to_stop(self, w: Worker, now: float) -> list[Action]:
        w.reason = w.reason or ExitReason.RETIRED
        w.deadline = now + self.active.config.graceful_timeout
        self.version += 1
        return [ev.SendStop(w.pid), ev.Wake(w.deadline)]

    def _kill(self, workers: Iterable[Worker], reason: ExitReason) -> list[Action]:
        actions: list[Action] = []
        for w in workers:
            if can(w, Trigger.KILL):
                advance(w, Trigger.KILL)
                w.reason = w.reason or reason
                actions.append(ev.Kill(w.pid, w.reason))
        self.version += 1
        return actions

    def _recycle(self, w: Worker, why: str, now: float) -> list[Action]:
        """Retire a worker gracefully, but only once its replacement is ready."""
        if w.state is not S.READY:
            return []
        advance(w, Trigger.RECYCLE)
        w.reason = ExitReason.RECYCLED
        actions: list[Action] = [
            ev.Record(
                Event.WORKER_RECYCLED,
                f"recycling worker {w.pid}: {why}",
                fields={"WORKER_PID": w.pid, "GENERATION": w.generation},
            )
        ]
        gen = self._generation(w.generation)
        if gen is None or self.stopping:
            advance(w, Trigger.REPLACED)
            return actions + self._told_to_stop(w, now)
        gen.recycling.append(w)
        return [*actions, ev.Spawn(gen)]

    def _completions(self, e: ev.Completions) -> list[Action]:
        actions: list[Action] = []
        for pid in e.pids:
            w = self.workers.get(pid)
            if w is not None and w.max_served and w.served >= w.max_served:
                why = f"served {w.served} connections (max_requests)"
                actions += self._recycle(w, why, e.now)
        return actions

    def _memory(self, e: ev.Memory) -> list[Action]:
        limit = self.active.config.max_memory
        actions: list[Action] = []
        for pid, rss in e.rss_mib.items():
            w = self.workers.get(pid)
            if w is not None and limit and rss > limit:
                why = f"resident memory {rss:.0f} MiB over max_memory={limit}"
                actions += self._recycle(w, why, e.now)
        return actions

    # -- the clock ---------------------------------------------------------------------------
    def _tick(self, e: ev.Tick) -> list[Action]:
        now, actions = e.now, []
        due = [g for at, g in self.respawns if at <= now]
        self.respawns = [(at, g) for at, g in self.respawns if at > now]
        actions += [ev.Spawn(g) for g in due]
        if self.stopping:
            if not e.undelivered:  # everything accepted is handed over: let workers finish
                actions += self._retire(list(self.workers.values()), now)
            if now >= self.stop_deadline and self.workers:
                actions.append(
                    ev.Record(
                        None,
                        f"graceful timeout: killing {len(self.workers)} workers",
                        logging.WARNING,
                    )
                )
                actions += self._kill(list(self.workers.values()), ExitReason.RETIRED)
                self.stop_deadline = float("inf")
        for w in list(self.workers.values()):
            actions += self._check_worker(w, now)
        cfg = self.active.config
        if cfg.max_memory and now >= self.next_memory_check:
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL
            pids = tuple(w.pid for w in self.workers.values() if w.state is S.READY)
            actions.append(ev.CheckMemory(pids))
        return [*actions, ev.Wake(self._next_tick(now))]

    def _check_worker(self, w: Worker, now: float) -> list[Action]:
        """Deadlines of one worker's state, and the hang check of one that serves."""
        if w.state is S.HUNG and now >= w.deadline:
            return self._kill_hung(w, now)
        if w.state is S.RETIRING and now >= w.deadline:
            advance(w, Trigger.KILL)
            w.reason = ExitReason.OVERDUE
            message = f"worker {w.pid} did not finish within graceful_timeout: killing it"
            return [ev.Record(None, message, logging.WARNING), ev.Kill(w.pid, w.reason)]
        if w.state is S.STARTING and w.deadline and now >= w.deadline:
            advance(w, Trigger.KILL)
            w.reason = ExitReason.START_TIMEOUT
            gen = self._generation(w.generation)
            limit = gen.config.start_timeout if gen else 0
            w.failure = f"not ready within start_timeout={limit:g}s (a handler blocks at import?)"
            return [
                ev.Record(None, f"worker {w.pid} {w.failure}", logging.ERROR),
                ev.Kill(w.pid, w.reason),
            ]
        timeout = self.active.config.timeout
        if timeout and w.state in SERVING and w.handed:
            conn_id, (sent, listener, peer) = next(iter(w.handed.items()))
            since = max(w.last_heard, sent)
            if now - since > timeout:
                advance(w, Trigger.HANG)
                w.hung_on = (conn_id, since, listener, peer)
                w.deadline = now + DUMP_GRACE
                self.version += 1
                return [ev.AskStacks(w.pid), ev.Wake(w.deadline)]
        return []

    def _kill_hung(self, w: Worker, now: float) -> list[Action]:
        conn_id, since, listener, peer = w.hung_on
        advance(w, Trigger.KILL)
        w.reason = ExitReason.HUNG
        record = ev.Record(
            Event.WORKER_HUNG,
            f"worker {w.pid} hung: connection {conn_id} in its hands for {now - since:.1f}s, "
            f"over timeout={self.active.config.timeout:g}s; killing it. Its stacks:",
            logging.ERROR,
            {
                "WORKER_PID": w.pid,
                "GENERATION": w.generation,
                "CONN_ID": conn_id,
                "LISTENER": listener,
                "PEER": peer,
            },
        )
        return [ev.Kill(w.pid, w.reason, hang=record)]

    def _next_tick(self, now: float) -> float:
        """The earliest deadline; at most a second away while something is checked regularly."""
        due = [at for at, _ in self.respawns]
        due += [w.deadline for w in self.workers.values() if w.state in _DEADLINED]
        cfg = self.active.config
        if cfg.timeout:
            due.append(now + min(1.0, cfg.timeout / 4))
        if cfg.max_memory:
            due.append(self.next_memory_check)
        if self.stopping:
            due.append(min(self.stop_deadline, now + 0.1))  # retire once all is handed over
        return max(now + MIN_TICK, min(due, default=now + 1.0))

    # -- reload and stop ---------------------------------------------------------------------
    def _reload(self, e: ev.ReloadRequested) -> list[Action]:
        if self.stopping:
            return []
        actions: list[Action] = []
        if self.incoming is not None:  # a newer reload supersedes one still starting
            actions += self._drop_incoming()
        actions += [
            ev.Notify("reloading"),
            ev.Record(Event.RELOADING, "reloading: re-reading the configuration"),
        ]
        if e.config is None:
            return actions + self._abort_reload(e.error)
        self.numbers += 1
        self.incoming = Generation(self.numbers, e.config)
        return actions + [ev.Spawn(self.incoming)] * e.config.workers

    def _abort_reload(self, reason: str) -> list[Action]:
        return [
            *self._drop_incoming(),
            ev.Record(
                Event.RELOAD_FAILED,
                f"reload failed, still serving the old generation: {reason}",
                logging.ERROR,
            ),
            ev.Notify("ready"),
        ]

    def _drop_incoming(self) -> list[Action]:
        """Kill a reload's generation that is not serving yet."""
        gen, self.incoming = self.incoming, None
        if gen is None:
            return []
        self.respawns = [(at, g) for at, g in self.respawns if g is not gen]
        return self._kill(self.of(gen), ExitReason.RETIRED)

    def _stop(self, e: ev.StopRequested) -> list[Action]:
        if self.stopping:
            if e.signal == "SIGINT":  # a second Ctrl-C: no more waiting
                self.stop_deadline = e.now
                return [ev.Wake(e.now)]
            return []
        self.stopping = True
        timeout = self.active.config.graceful_timeout
        self.stop_deadline = e.now + timeout
        self.respawns.clear()
        message = f"stopping on {e.signal}: draining {self.busy()} connections (up to {timeout:g}s)"
        return [
            ev.StopAccepting(),
            ev.Record(Event.STOPPING, message),
            ev.Notify("stopping"),
            *self._drop_incoming(),
            ev.Wake(e.now),
        ]

    def _generation(self, number: int) -> Generation | None:
        for gen in (self.active, self.incoming):
            if gen is not None and gen.number == number:
                return gen
        return None
