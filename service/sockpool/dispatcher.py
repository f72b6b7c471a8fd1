"""The dispatcher: wires the loop, the hot path, the lifecycle policy and the worker processes.

    loop (eventloop.py): descriptors, timers, signals --> events --> policy (policy.py)
    policy --> actions --> executor (executor.py) --> WorkerProcess objects (process.py)
    listeners --> hot path (hotpath.py): accept, assign, send; completions come back

Everything that decides is in policy.py, with unit tests that need no process; what is here
turns the outside world into events.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from functools import partial

from . import agent, channel, cpuslice, giveback, health, log, records, wire
from . import lifecycle as ev
from .admission import Admission
from .config import Config
from .errors import ExitCode, Fatal
from .eventloop import SIGNALS, Loop
from .events import Event
from .executor import Executor
from .hotpath import HotPath, serving_capacity
from .listeners import ACCEPT_PAUSE, Listener
from .notify import Notifier
from .policy import Lifecycle
from .process import GivenBack, WorkerProcess, reaped


class Dispatcher:
    def __init__(
        self,
        listeners: list[Listener],
        config: Config,
        reload_config: Callable[[], Config] | None,
        notifier: Notifier,
    ) -> None:
        self.listeners = listeners
        self.reload_config = reload_config  # on SIGHUP; None: reloads come by reload()
        self.notifier = notifier
        # Its configuration's level: one of N restarted after a reload is forked at the
        # main process's, which changes only once a reload is adopted (supervisor.py).
        log.set_level(config.log_level)
        self.policy = Lifecycle(config)
        self.loop = Loop()
        procs: dict[int, WorkerProcess] = {}
        # HAProxy's agent-check listeners are answered here, off the hot path (agent.py).
        self.agents = [lst for lst in listeners if config.is_agent(lst.name)]
        served = [lst for lst in listeners if lst not in self.agents]
        self.hot = HotPath(
            served, Admission(config), procs, self._routable, self._closed, self.loop.epoll
        )
        self.loop.others = self.hot.parking.seen  # held connections that spoke
        self.hot.mute = self.loop.mute  # a backlogged listener's new connections
        self.hot.recycle = self._recycle
        self.hot.configure(config)
        self.do = Executor(
            self.policy, self.loop, self.hot, notifier, self._feed, self.status,
            self._on_messages, self._in_child,
        )  # fmt: skip
        self.oom_baseline = health.oom_kills()
        self.routes: tuple[int, list[WorkerProcess]] = (-1, [])
        self.shares = config.shares_sockets  # one of N, under a main process (supervisor.py)

    def run(self) -> ExitCode:
        """gunicorn's arbiter in one loop: wait, accept and hand over, then what fell due."""
        self.loop.on_signals(SIGNALS, self._on_signal)
        addresses = ", ".join(f"{lst.name} on {lst.address}" for lst in self.listeners)
        workers = self.policy.active.config.workers
        log.event(Event.STARTED, "started: %s; %d workers", addresses, workers)
        hot = self.hot
        for listener in self.listeners:
            listener.sock.setblocking(False)
        for listener in hot.listeners:
            self.loop.watch(listener.sock, partial(hot.backlogged.add, listener), edge=True)
        for listener in self.agents:
            self._watch_agent(listener)
        self.loop.watch(hot.done_r, hot.done_readable)  # read below, with the turn's clock
        if log.journal:  # records that wait for journald go out when its socket has room
            log.journal.attach(self.loop.watch_writable, self.loop.unwatch)
        self._periodic()
        loop, timers, monotonic = self.loop, self.loop.timers, time.monotonic
        try:
            self.do(self.policy.start(monotonic()))
            # After the first workers' fork, so they start with the default slice as they
            # are; a worker forked later resets its own (cpuslice.py).
            if (why := cpuslice.shorten()) is not None:
                log.log.debug("the dispatcher keeps the kernel's CPU slice: %s", why)
            while not self.policy.finished or hot.sending(monotonic()):
                now = monotonic()
                loop.poll(hot.timeout(now, loop.next_timer()))
                now = monotonic()
                hot.turn(now)
                if timers and timers[0][0] <= now:
                    loop.run_timers(now)
        finally:
            self._close()
        return ExitCode.OK

    def status(self) -> str:
        policy, hot = self.policy, self.hot
        gen = policy.active
        text = (
            f"workers {policy.pool.ready_count(gen)}/{gen.config.workers}, busy {hot.busy()}, "
            f"parked {len(hot.parking)}, served {hot.served}, refused {hot.admission.refused}"
        )
        return text + ", reloading" * bool(policy.incoming) + ", stopping" * policy.stopping

    # -- HAProxy's agent-check ---------------------------------------------------------------
    def _watch_agent(self, listener: Listener) -> None:
        self.loop.watch(listener.sock, lambda: self._on_agent(listener))

    def _on_agent(self, listener: Listener) -> None:
        self.hot.catch_up(time.monotonic())  # the answer counts what is in hand
        if not agent.answer(listener.sock, self._agent_reply):  # out of descriptors: pause
            self.loop.unwatch(listener.sock)
            self.loop.call_at(time.monotonic() + ACCEPT_PAUSE, lambda: self._watch_agent(listener))

    def _agent_reply(self) -> bytes:
        """The pool's state as agent.reply() takes it. Total capacity is what the configured
        workers would have, so a missing or starting worker counts as busy; a sync worker's
        queued-ahead place is not capacity (it only saves a round trip)."""
        hot, policy = self.hot, self.policy
        routes = hot.routable()
        per_worker = max((serving_capacity(p) for p in routes), default=0)
        free = sum(max(0, serving_capacity(p) - len(p.w.handed)) for p in routes)
        return agent.reply(
            free=free - len(hot.pending),
            total=per_worker * policy.active.config.workers,
            held=hot.held(),
            max_connections=hot.admission.max_total,
            draining=policy.stopping or policy.incoming is not None,
            whole=policy.active.config.whole_max_connections,
        )

    # -- the outside world, as events --------------------------------------------------------
    def _feed(self, event: object) -> None:
        self.do(self.policy.handle(event))

    def _on_signal(self, signum: int) -> None:
        self.hot.catch_up(time.monotonic())  # a stop counts what is in hand (StopRequested)
        if signum == signal.SIGCHLD:
            self._reap()
        elif signum == signal.SIGHUP and self.reload_config is not None:
            try:
                config, error = self.reload_config(), ""
            except Fatal as exc:
                config, error = None, exc.message
            self.reload(config, error)
        elif signum in (signal.SIGTERM, signal.SIGINT):
            if self.shares and signum == signal.SIGINT:  # one of N: a terminal's Ctrl-C,
                return  # the main process's to take (it stops us, and says hurry())
            name = signal.Signals(signum).name
            now = time.monotonic()
            second = self.policy.stopping and signum == signal.SIGINT
            self._feed(ev.StopRequested(name, now, self._draining()))
            if second:  # a second Ctrl-C: no more waiting, for answers being sent either
                self.hot.send_until = now
        elif signum in (signal.SIGUSR1, signal.SIGUSR2) and not self.shares:
            records.write(records.unheeded(signum))  # (one of N: the main process says it)

    def _draining(self) -> int:
        """What a stop drains: connections in workers' hands, and answers being sent."""
        return self.hot.busy() + len(self.hot.parking.unsent)

    def hurry(self) -> None:
        """One of N, told by the main process of a second Ctrl-C: stop waiting, as a
        second SIGINT does (policy.py)."""
        now = time.monotonic()
        self.hot.catch_up(now)
        busy = self._draining()
        if not self.policy.stopping:  # its SIGTERM, sent first, may come in after this
            self._feed(ev.StopRequested("SIGTERM", now, busy))
        self._feed(ev.StopRequested("SIGINT", now, busy))
        self.hot.send_until = now  # nor for answers being sent

    def reload(self, config: Config | None, error: str = "") -> None:
        """Serve `config` with a new generation of workers (policy.py); None: the reload
        failed before it began, with `error`."""
        if not self.policy.stopping:
            self._feed(ev.ReloadRequested(config, error, time.monotonic()))

    def _on_messages(self, p: WorkerProcess) -> None:
        """What a worker sent, a bounded number per loop turn (the channel is
        level-triggered): a burst of parked connections takes a few turns, not hundreds."""
        for _ in range(64):
            if not self._on_message(p):
                return

    def _on_message(self, p: WorkerProcess) -> bool:
        """One message from the worker; True if there was one to read."""
        now = time.monotonic()
        try:
            event = p.next_event(now)
        except wire.WireError as exc:
            log.log.error("bad message from worker %d: %s", p.pid, exc)
            return True
        if isinstance(event, GivenBack):
            self.hot.park(p, event.message, event.fd, now, event.unsent)
            return True
        if isinstance(event, ev.ChannelClosed):  # it is exiting; SIGCHLD will say how
            self.loop.unwatch(p.chan)
        if event is not None:
            self._feed(event)
        return event is not None and not isinstance(event, ev.ChannelClosed)

    def _recycle(self, due: set[int], now: float) -> None:
        """Workers that reached max_requests: the policy recycles them."""
        self._feed(ev.Completions(frozenset(due), now))

    def _reap(self) -> None:
        while self.hot.read_done(time.monotonic()):  # what the dead reported before dying counts
            pass
        for pid, status in reaped():
            if p := self.hot.workers.pop(pid, None):
                while self._on_message(p):  # what it said before it died counts (FAILED)
                    pass
                self.loop.unwatch(p.chan)
                lost = self.hot.recover(p)
                how, natural, stacks, self.oom_baseline = p.ended(status, self.oom_baseline)
                p.close()
                self._feed(ev.Exited(pid, how, natural, lost, stacks, time.monotonic()))

    def _periodic(self) -> None:
        """sd_notify's STATUS= and watchdog, and the refusal count, on their own clock."""
        now = time.monotonic()
        self.notifier.tick(now, self.status)
        self.hot.read_limits()
        self.hot.log_refused(now)
        self.hot.log_closed(now)
        self.hot.forget_headers(now)
        # One of N: a sibling's start, stop or exit sets the shared sockets' TCP_DEFER_ACCEPT
        # as it sees fit. Where ours defers (workers accept, or PROXY), it does so again.
        if self.shares and (self.hot.direct or self.hot.proxied):
            self.hot.defer_accept()
        self.loop.call_at(now + self.notifier.next_due(now), self._periodic)

    # -- the hot path's view of the pool ----------------------------------------------------
    def _routable(self) -> list[WorkerProcess]:
        """The workers that take work, rebuilt only when the policy changed the set; and
        with them, which listeners' new connections wait for data (their handlers say)."""
        version, routes = self.routes
        pool = self.policy.pool
        if version != pool.version:
            procs = self.hot.workers
            routes = [procs[w.pid] for w in pool.serving(self.policy.active) if w.pid in procs]
            self.routes = (pool.version, routes)
            if routes:  # first: whose connections Linux defers for workers that accept
                config, first = self.policy.active.config, routes[0].speaks_first
                self.hot.deferred = {
                    lst for lst in self.hot.listeners if _waits_for_data(config, lst.name, first)
                }
            self.hot.routes_changed(routes)
        return routes

    def _closed(self, p: WorkerProcess) -> None:
        self._feed(ev.ChannelClosed(p.pid))

    # -- descriptors -------------------------------------------------------------------------
    def _in_child(self, keep: frozenset[int]) -> None:
        """A new worker holds nothing of the dispatcher's: no listener but those it accepts
        from (`keep`: direct.py), no other worker's channel, no connection not handed to
        it."""
        self.loop.close()
        os.close(self.hot.done_r)  # the worker keeps done_w
        for listener in self.listeners:
            if listener.sock.fileno() in keep:
                listener.sock.detach()  # the descriptor stays open, for the worker
            else:
                listener.sock.close()
        for p in self.hot.workers.values():
            p.close()
        channel.close_all(self.hot.held_fds())
        self.hot.parking.close()

    def _close(self) -> None:
        hot = self.hot
        if hot.pending:
            log.log.warning("exiting with %d accepted connections not served", len(hot.pending))
        channel.close_all([item[1] for item in hot.pending])
        if cut := len(hot.parking.unsent):
            log.log.warning("cut %d answers still being sent to slow clients at exit", cut)
        if parked := hot.parking.close_all("exit") - cut:
            log.log.info("closed %d connections parked with no request to serve", parked)
        hot.parking.close()
        hot.restore_listeners()
        for listener in self.listeners:
            listener.close()
        self.loop.close()
        channel.close_all([self.hot.done_r, self.hot.done_w])
        self.notifier.flush()  # one last try for what is kept (a record for the main process)


def _waits_for_data(config: Config, listener: str, speaks_first: frozenset[str]) -> bool:
    return giveback.waits_for_data(config.handoff_for(listener), listener in speaks_first)
