"""The dispatcher: wires the loop, the hot path, the lifecycle policy and the worker processes.

    loop (eventloop.py) -- descriptors, timers, signals --> events --> policy (policy.py)
    policy --> actions --> carried out here, on WorkerProcess objects (process.py)
    listeners --> hot path (hotpath.py): accept, assign, send; completions back

Everything that decides is in policy.py and has unit tests without processes; everything
here is I/O, each piece a few lines.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from . import channel, health, log, wire
from . import lifecycle as ev
from .admission import Admission
from .config import Config
from .errors import ExitCode, Fatal
from .eventloop import Loop, Timer
from .events import Event
from .hotpath import HotPath
from .listeners import Listener
from .notify import Notifier
from .policy import Lifecycle
from .process import WorkerProcess, fork_worker
from .states import Generation
from .worker import WorkerSpec

_SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


class Dispatcher:
    def __init__(
        self,
        listeners: list[Listener],
        config: Config,
        reload_config: Callable[[], Config],
        notifier: Notifier,
    ) -> None:
        self.listeners = listeners
        self.reload_config = reload_config
        self.notifier = notifier
        self.policy = Lifecycle(config)
        self.loop = Loop()
        self.procs: dict[int, WorkerProcess] = {}
        self.hot = HotPath(listeners, Admission(config), self.procs, self._routable, self._broken)
        self.oom_baseline = health.oom_kills()
        self.routes: tuple[int, list[WorkerProcess]] = (-1, [])
        self.wake: Timer | None = None
        self.specs: dict[int, WorkerSpec] = {}
        self.execute: dict[type, Callable[..., object]] = {
            ev.Spawn: self._spawn,
            ev.SendStop: lambda a: self._proc(a.pid, WorkerProcess.stop),
            ev.Kill: self._kill,
            ev.AskStacks: lambda a: self._proc(a.pid, WorkerProcess.ask_for_stacks),
            ev.CheckMemory: self._check_memory,
            ev.Swap: lambda a: self.hot.admission.update(a.generation.config),
            ev.Notify: self._notify,
            ev.StopAccepting: self._stop_accepting,
            ev.Wake: self._wake,
            ev.GiveUp: self._give_up,
            ev.Record: _record,
        }

    def run(self) -> ExitCode:
        """gunicorn's arbiter in one loop: wait, accept and hand over, then what fell due."""
        self.loop.on_signals(_SIGNALS, self._on_signal)
        addresses = ", ".join(f"{lst.name} on {lst.address}" for lst in self.listeners)
        workers = self.policy.active.config.workers
        log.event(Event.STARTED, "started: %s; %d workers", addresses, workers)
        hot = self.hot
        for listener in self.listeners:
            listener.sock.setblocking(False)
            self.loop.watch(listener.sock, lambda lst=listener: hot.backlogged.add(lst), edge=True)
        self.loop.watch(hot.done_r, self._on_done)
        self._periodic()
        try:
            self._do(self.policy.start(time.monotonic()))
            while not self.policy.finished:
                now = time.monotonic()
                self.loop.poll(0.0 if hot.has_work(now) else self._idle(now))
                now = time.monotonic()
                if hot.backlogged:
                    hot.accept(now)
                if hot.pending:
                    hot.dispatch(now)
                self.loop.run_timers(now)
        finally:
            self._close()
        return ExitCode.OK

    def _idle(self, now: float) -> float:
        due = self.loop.next_timer()
        if self.hot.backlogged and self.hot.paused_until > now:
            due = min(due, self.hot.paused_until)
        return max(0.0, due - now)

    def status(self) -> str:
        gen, hot = self.policy.active, self.hot
        text = (
            f"workers {self.policy.ready_count(gen)}/{gen.config.workers}, busy {hot.busy()}, "
            f"served {hot.served}, refused {hot.admission.refused}"
        )
        if self.policy.incoming:
            text += ", reloading"
        if self.policy.stopping:
            text += ", stopping"
        return text

    # -- events in ---------------------------------------------------------------------------
    def _feed(self, event: object) -> None:
        self._do(self.policy.handle(event))

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self._reap()
        elif signum == signal.SIGHUP and not self.policy.stopping:
            try:
                config, error = self.reload_config(), ""
            except Fatal as exc:
                config, error = None, exc.message
            self._feed(ev.ReloadRequested(config, error, time.monotonic()))
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self._feed(ev.StopRequested(signal.Signals(signum).name, time.monotonic()))

    def _on_message(self, p: WorkerProcess) -> bool:
        """One message per readiness event (the channel is level-triggered); True if read."""
        try:
            message = p.message()
        except BlockingIOError:
            return False
        except wire.WireError as exc:
            log.log.error("bad message from worker %d: %s", p.pid, exc)
            return True
        now = time.monotonic()
        if message is None:  # it exited or is exiting; SIGCHLD will tell us how
            self.loop.unwatch(p.chan)
            self._feed(ev.ChannelClosed(p.pid))
            return False
        if isinstance(message, wire.Ready):
            self._feed(ev.Ready(p.pid, message.capacity, now))
        elif isinstance(message, wire.Failed):
            self._feed(ev.Failed(p.pid, message.reason))
        else:
            self._feed(ev.Beat(p.pid, now))
        return True

    def _on_done(self) -> bool:
        pids = self.hot.completed(time.monotonic())
        if pids:
            self._feed(ev.Completions(frozenset(pids), time.monotonic()))
        return pids is not None

    def _reap(self) -> None:
        while self._on_done():  # what the dead reported before dying counts
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if p := self.procs.pop(pid, None):
                while self._on_message(p):  # what it said before it died counts (FAILED)
                    pass
                self.loop.unwatch(p.chan)
                lost = self.hot.recover(p)
                how, natural, stacks, self.oom_baseline = p.ended(status, self.oom_baseline)
                p.close()
                self._feed(ev.Exited(pid, how, natural, lost, stacks, time.monotonic()))

    def _tick(self) -> None:
        self.wake = None
        self._feed(ev.Tick(time.monotonic(), len(self.hot.pending)))

    def _periodic(self) -> None:
        """sd_notify's STATUS= and watchdog, and the refusal count, on their own clock."""
        now = time.monotonic()
        self.notifier.tick(now, self.status)
        self.hot.log_refused(now)
        self.loop.call_at(now + self.notifier.next_due(now), self._periodic)

    # -- actions out -------------------------------------------------------------------------
    def _do(self, actions: list[ev.Action]) -> None:
        for action in actions:
            self.execute[type(action)](action)

    def _spawn(self, a: ev.Spawn) -> None:
        gen = a.generation
        try:
            pid, chan, inbox, stacks = fork_worker(self._spec(gen), self.hot.done_w, self._in_child)
        except OSError as exc:
            self._feed(ev.SpawnFailed(gen.number, _os_error(exc), time.monotonic()))
            return
        actions = self.policy.handle(ev.Spawned(pid, gen.number, time.monotonic()))
        p = self.procs[pid] = WorkerProcess(pid, chan, inbox, stacks, self.policy.workers[pid])
        self.loop.watch(chan, lambda: self._on_message(p))
        self._do(actions)

    def _spec(self, gen: Generation) -> WorkerSpec:
        if gen.number not in self.specs:
            live = {g.number for g in (self.policy.active, self.policy.incoming) if g}
            self.specs = {n: s for n, s in self.specs.items() if n in live}
            cfg = gen.config
            self.specs[gen.number] = WorkerSpec(
                generation=gen.number,
                handlers={
                    lst.name: h for lst in self.listeners if (h := cfg.handler_for(lst.name))
                },
                default_handler=cfg.handler,
                capacity=cfg.capacity,
                idle_timeout=cfg.idle_timeout or None,
                timeout=cfg.timeout or None,
            )
        return self.specs[gen.number]

    def _proc(self, pid: int, do: Callable[[WorkerProcess], None]) -> None:
        if p := self.procs.get(pid):
            do(p)

    def _kill(self, a: ev.Kill) -> None:
        if a.hang and (p := self.procs.get(a.pid)):
            stacks = p.read_stacks() or "(no stacks: the worker did not answer)"
            _record(
                ev.Record(a.hang.event, f"{a.hang.message}\n{stacks}", a.hang.level, a.hang.fields)
            )
        self._proc(a.pid, WorkerProcess.kill)

    def _check_memory(self, a: ev.CheckMemory) -> None:
        readings = {pid: rss for pid in a.pids if (rss := health.rss_mib(pid)) is not None}
        self._feed(ev.Memory(readings, time.monotonic()))

    def _notify(self, a: ev.Notify) -> None:
        if a.state == "reloading":
            self.notifier.reloading()
        elif a.state == "stopping":
            self.notifier.stopping(self.status())
        else:
            self.notifier.ready(self.status())

    def _stop_accepting(self, a: ev.StopAccepting) -> None:
        for listener in self.listeners:
            self.loop.unwatch(listener.sock)  # systemd keeps the queue for the next start
        self.hot.stop_accepting()

    def _wake(self, a: ev.Wake) -> None:
        if self.wake is None or a.at < self.wake.at:
            if self.wake:
                self.wake.cancel()
            self.wake = self.loop.call_at(a.at, self._tick)

    def _give_up(self, a: ev.GiveUp) -> None:
        raise Fatal(a.code, a.message, event=Event.WORKERS_FAILING)

    # -- the hot path's view of the pool ----------------------------------------------------
    def _routable(self) -> list[WorkerProcess]:
        """The workers that take work, rebuilt only when the policy changed the set."""
        version, routes = self.routes
        if version != self.policy.version:
            routes = [self.procs[w.pid] for w in self.policy.serving() if w.pid in self.procs]
            self.routes = (self.policy.version, routes)
        return routes

    def _broken(self, p: WorkerProcess) -> None:
        self._feed(ev.ChannelClosed(p.pid))

    # -- descriptors -------------------------------------------------------------------------
    def _in_child(self) -> None:
        """A new worker holds nothing of the dispatcher's: no listener, no other worker's
        channel, no connection not handed to it."""
        self.loop.close()
        os.close(self.hot.done_r)  # the worker keeps done_w
        for listener in self.listeners:
            listener.sock.close()
        for p in self.procs.values():
            p.close()
        channel.close_all(self.hot.held_fds())

    def _close(self) -> None:
        held = self.hot.held_fds()
        if held:
            log.log.warning("exiting with %d accepted connections not served", len(held))
        channel.close_all(held)
        for listener in self.listeners:
            listener.close()
        self.loop.close()
        channel.close_all([self.hot.done_r, self.hot.done_w])


def _record(a: ev.Record) -> None:
    if a.event is None:
        log.log.log(a.level, "%s", a.message, extra=a.fields)
    else:
        log.event(a.event, "%s", a.message, level=a.level, **a.fields)


def _os_error(exc: OSError) -> str:
    return f"{exc.strerror or exc}"
