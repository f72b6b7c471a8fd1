"""The dispatcher: accepts on the listeners and hands each connection to the least-busy worker.

One thread, one epoll loop. Signals arrive through a wakeup socket and are handled in the
loop like any other event (gunicorn's arbiter does the same with a queue), so there is no
work in signal context and no race with the bookkeeping.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable

from . import channel, health, log, wire
from . import worker as worker_mod
from .admission import Admission
from .config import Config
from .errors import ExitCode, Fatal
from .events import Event
from .listeners import Listener
from .notify import Notifier
from .pool import Generation, Pending, Worker, assign, describe_status
from .supervision import Supervision

ACCEPT_BATCH = 64  # per listener per loop turn, so one busy listener cannot starve another
ACCEPT_PAUSE = 0.5  # seconds to wait after EMFILE & co. before accepting again
BUSY_LOG_INTERVAL = 60.0  # "all workers busy" (back-pressure, nothing lost)
REFUSED_LOG_INTERVAL = 10.0  # refusals and accept errors: counted, logged at most this often
_PEER_GONE = {errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET}
_NO_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_HANDLED_SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


class Dispatcher(Supervision):
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
        self.generations = 0
        self.active = self._generation(config)
        self.incoming: Generation | None = None  # a reload's generation, until it is ready
        self.workers: dict[int, Worker] = {}
        self.pending: deque[Pending] = deque()
        self.backlogged: set[Listener] = set()  # may have connections we have not accepted
        self.respawns: list[tuple[float, Generation]] = []
        self.next_id = 0
        self.served = 0
        self.announced_ready = False
        self.stopping = False
        self.stop_deadline = 0.0
        self.reload_again = False
        self.accept_paused_until = 0.0
        self.next_busy_log = 0.0
        self.next_refused_log = 0.0
        self.accept_errors = 0
        self.next_accept_error_log = 0.0
        self.next_memory_check = 0.0
        self.admission = Admission(config)
        self.oom_baseline = health.oom_kills()
        self.housekeeping_due = 0.0
        self.epoll = select.epoll()
        self.callbacks: dict[int, Callable[[], None]] = {}
        self._routable: list[Worker] | None = None
        # Every worker writes its finished connections to this one pipe (wire.DONE).
        self.done_r, self.done_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.done_r, False)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> ExitCode:
        self._install_signals()
        log.event(
            Event.STARTED,
            "started: %s; %d workers",
            ", ".join(f"{lst.name} on {lst.address}" for lst in self.listeners),
            self.active.config.workers,
        )
        for listener in self.listeners:
            listener.sock.setblocking(False)
            self._watch(listener.sock, lambda lst=listener: self.backlogged.add(lst), edge=True)
            self.backlogged.add(listener)  # connections may already be queued
        self._watch(self.done_r, self._on_done)
        self._spawn_generation(self.active)
        try:
            now = time.monotonic()
            while self.workers or self.respawns or not self.stopping:
                for fd, _ in self.epoll.poll(self._timeout(now)):
                    callback = self.callbacks.get(fd)  # an earlier one may have unwatched it
                    if callback:
                        callback()
                now = time.monotonic()
                if self.backlogged:
                    self._accept(now)
                if self.pending:
                    self._dispatch(now)
                if now >= self.housekeeping_due:
                    self._housekeeping(now)
        finally:
            self._close()
        return ExitCode.OK

    def _timeout(self, now: float) -> float:
        if self._can_accept(now) and self._free_capacity() > len(self.pending):
            return 0.0  # a listener still has connections queued and we have room
        return max(0.0, self.housekeeping_due - now)

    def _soon(self, when: float) -> None:
        """Make sure housekeeping runs by `when` (a respawn, a deadline)."""
        self.housekeeping_due = min(self.housekeeping_due, when)

    # -- accepting and handing over ------------------------------------------------------
    def _accept(self, now: float) -> None:
        """Accept from backlogged listeners while workers have room (back-pressure: the
        rest waits in the kernel's backlog, nothing queues up in here)."""
        if not self._can_accept(now):
            return
        room = self._free_capacity() - len(self.pending)  # what the workers can take
        busy = self._busy() + len(self.pending) if self.admission.max_total else 0
        allowed = self.admission.room(busy)  # what the limits allow; past it, refuse
        admit = self.admission.admit if self.admission.max_per_source else None
        pending = self.pending
        for listener in list(self.backlogged):
            accept, name, format_peer = listener.sock._accept, listener.name, listener.format_peer
            for _ in range(ACCEPT_BATCH):
                if room <= 0 and allowed > 0:
                    break  # back-pressure: let it wait in the backlog
                try:
                    fd, addr = accept()  # socket._accept: (fd, addr), no socket object to build
                except BlockingIOError:
                    self.backlogged.discard(listener)
                    break
                except OSError as exc:
                    if exc.errno in _PEER_GONE or exc.errno == errno.EINTR:
                        continue
                    if exc.errno not in _NO_RESOURCES:
                        raise
                    self._pause_accepting(now, exc)
                    return
                self.next_id += 1
                if allowed <= 0 or (admit and not admit(self.next_id, addr)):
                    self.admission.refuse(fd)
                    continue
                pending.append((self.next_id, fd, name, format_peer(addr)))
                room -= 1
                allowed -= 1
        if room <= 0 and now >= self.next_busy_log and self.backlogged and self._busy():
            self._log_busy(now)

    def _can_accept(self, now: float) -> bool:
        return bool(self.backlogged) and not self.stopping and now >= self.accept_paused_until

    def _dispatch(self, now: float) -> None:
        for target, items in assign(self.pending, self._routable_workers()).items():
            for start in range(0, len(items), wire.MAX_FDS):
                self._send(target, items[start : start + wire.MAX_FDS], now)

    def _send(self, target: Worker, items: list[Pending], now: float) -> None:
        data = wire.encode_handoff([(cid, name, peer) for cid, _, name, peer in items])
        fds = [fd for _, fd, _, _ in items]
        try:
            channel.send(target.chan, data, fds)
        except OSError as exc:
            # Full queue or a dying worker: keep the connections, try them elsewhere.
            target.in_flight -= len(items)
            self.pending.extendleft(reversed(items))
            if not isinstance(exc, BlockingIOError):
                target.gone = True
                self._changed()
            return
        channel.close_all(fds)  # the message in the worker's queue holds them now
        for cid, _, name, peer in items:
            target.handed[cid] = (now, name, peer)

    def _free_capacity(self) -> int:
        return sum(w.capacity - w.in_flight for w in self._routable_workers())

    def _routable_workers(self) -> list[Worker]:
        """Ready workers of the active generation that take work; cached until _changed()."""
        if self._routable is None:
            active = self.active.number
            self._routable = [
                w
                for w in self.workers.values()
                if w.generation == active and w.capacity and not (w.retiring or w.gone)
            ]
        return self._routable

    def _changed(self) -> None:
        self._routable = None

    # -- messages from workers -----------------------------------------------------------
    def _on_worker_message(self, w: Worker) -> bool:
        """One message per readiness event: the channel is level-triggered, so a second
        message comes round on the next poll, which is cheaper than a failing recv. Plain
        recv(), no control buffer: workers never send descriptors, and the kernel closes
        any that one might attach rather than hand them to us. True if it read one."""
        try:
            data = w.chan.recv(wire.MAX_MESSAGE, channel.DONTWAIT)
        except BlockingIOError:
            return False
        except ConnectionError:
            data = b""
        if not data:  # it exited or is exiting; SIGCHLD will tell us how
            self._unwatch(w.chan)
            w.gone = True
            self._changed()
            return False
        try:
            self._handle(w, wire.decode_to_dispatcher(data))
        except wire.WireError as exc:
            log.log.error("bad message from worker %d: %s", w.pid, exc)
        return True

    def _on_done(self) -> bool:
        """Finished connections of any number of workers, in one read; True if any."""
        try:
            data = os.read(self.done_r, wire.DONE_READ_SIZE)
        except BlockingIOError:
            return False
        now = time.monotonic()
        for pid, conn_id in wire.decode_done(data):
            w = self.workers.get(pid)
            if w is None or w.handed.pop(conn_id, None) is None:
                continue  # not a connection of that worker: ignore
            w.last_heard = now
            w.in_flight -= 1
            w.served += 1
            self.served += 1
            if self.admission.sources:
                self.admission.release(conn_id)
            if w.max_served and w.served >= w.max_served:
                self._recycle(w, f"served {w.served} connections (max_requests)")
        return True

    def _handle(self, w: Worker, message: wire.ToDispatcher) -> None:
        w.last_heard = time.monotonic()
        if isinstance(message, wire.Ready):
            w.capacity = message.capacity
            self._changed()
            gen = self._generation_of(w)
            if gen:
                gen.start_failures = 0
                if gen.recycling:  # its replacement is ready: the old one may go now
                    self._retire([gen.recycling.pop(0)])
            log.event(
                Event.WORKER_STARTED,
                "worker %d ready (capacity %d)",
                w.pid,
                w.capacity,
                WORKER_PID=w.pid,
                GENERATION=w.generation,
            )
            self._check_generation_ready()
        elif isinstance(message, wire.Failed):
            w.failure = message.reason
        # wire.Beat: hearing from it at all is the point (last_heard)

    # -- workers: start, exit, replace ---------------------------------------------------
    def _generation(self, config: Config) -> Generation:
        self.generations += 1
        spec = worker_mod.WorkerSpec(
            generation=self.generations,
            handlers={lst.name: h for lst in self.listeners if (h := config.handler_for(lst.name))},
            default_handler=config.handler,
            capacity=config.capacity,
            idle_timeout=config.idle_timeout or None,
            timeout=config.timeout or None,
        )
        return Generation(self.generations, config, spec)

    def _spawn_generation(self, gen: Generation) -> None:
        for _ in range(gen.config.workers):
            self._spawn(gen)

    def _spawn(self, gen: Generation) -> None:
        try:
            ours, theirs = channel.pair()
            stacks = health.new_stack_file(self.generations)
        except OSError as exc:  # out of descriptors, say: try again, do not die
            log.log.error("cannot start a worker: %s; trying again in 1s", exc.strerror)
            self.respawns.append((time.monotonic() + 1.0, gen))
            self._soon(self.respawns[-1][0])
            return
        pid = os.fork()
        if pid == 0:  # the child: drop everything of the dispatcher's, then serve
            try:
                ours.close()
                self._close_in_child()
                worker_mod.run(theirs, gen.spec, stacks, self.done_w)
            finally:
                os._exit(1)
        # We keep `theirs` open (never reading it while the worker lives): when the worker
        # dies, the handoffs it had not yet read stay queued there instead of being thrown
        # away with their descriptors, and we hand them to another worker.
        ours.setblocking(False)
        w = Worker(pid, gen.number, ours, theirs, stacks=stacks, last_heard=time.monotonic())
        cfg = gen.config
        if cfg.max_requests:  # jitter, so a pool started together does not retire together
            jitter = (
                cfg.max_requests // 10
                if cfg.max_requests_jitter is None
                else cfg.max_requests_jitter
            )
            w.max_served = cfg.max_requests + random.randint(0, jitter)
        self.workers[pid] = w
        self._watch(ours, lambda: self._on_worker_message(w))

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
            w = self.workers.pop(pid, None)
            if w is not None:
                self._changed()
                self._worker_exited(w, status)

    def _worker_exited(self, w: Worker, status: int) -> None:
        while self._on_worker_message(w):  # what it said before it died counts (FAILED)
            pass
        self._unwatch(w.chan)
        recovered = self._recover(w)
        for sock in (w.chan, w.inbox):
            sock.close()
        for conn_id in w.handed:  # still listed: they were in its hands and are gone
            self.admission.release(conn_id)
        lost = len(w.handed)
        self.pending.extendleft(reversed(recovered))
        how = describe_status(status)
        oom_now = None if w.killed_for else health.oom_kills()
        reason = health.exit_reason(status, w.killed_for, self.oom_baseline, oom_now)
        if reason == "oom":
            self.oom_baseline, how = oom_now, how + " (the kernel's OOM killer)"
        stacks = health.read_stacks(w.stacks) if reason == "crashed" else ""
        os.close(w.stacks)
        log.event(
            Event.WORKER_EXITED,
            "worker %d %s%s%s",
            w.pid,
            how,
            f"; {lost} connections in its hands were cut" if lost else "",
            f"\n{stacks}" if stacks else "",
            level=logging.INFO if reason in ("retired", "recycled") else logging.WARNING,
            WORKER_PID=w.pid,
            GENERATION=w.generation,
            EXIT_STATUS=how,
            EXIT_REASON=reason,
            CONNECTIONS_LOST=lost,
        )
        gen = self._generation_of(w)
        if gen is not None and w in gen.recycling:
            gen.recycling.remove(w)
        if gen is None or w.retiring or w.recycling or self.stopping:
            return
        delay = 0.0
        if not w.ready:
            gen.start_failures += 1
            gen.last_failure = w.failure or how
            if gen.start_failures >= gen.max_start_failures:
                self._give_up(gen)
                return
            delay = min(10.0, 0.1 * 2 ** (gen.start_failures - 1))
        self.respawns.append((time.monotonic() + delay, gen))
        self._soon(self.respawns[-1][0])

    def _give_up(self, gen: Generation) -> None:
        reason = f"{gen.start_failures} workers in a row died before they were ready; last: "
        reason += gen.last_failure
        if gen is self.incoming:
            self._abort_reload(reason)
            return
        self._retire(list(self.workers.values()), kill=True)
        self.respawns.clear()
        raise Fatal(
            ExitCode.WORKERS_FAILING,
            f"workers keep failing to start: {reason}",
            event=Event.WORKERS_FAILING,
        )

    def _recover(self, w: Worker) -> list[Pending]:
        """Read back the handoffs a dead worker never took, descriptors and all."""
        recovered: list[Pending] = []
        while True:
            try:
                message = channel.receive(w.inbox, channel.DONTWAIT)
            except BlockingIOError:
                return recovered
            except wire.WireError as exc:  # cannot happen with our own messages; be safe
                log.log.error("could not read back a handoff from worker %d: %s", w.pid, exc)
                continue
            if message is None:
                return recovered
            data, fds = message
            decoded = wire.decode_to_worker(data, len(fds))
            if isinstance(decoded, wire.Stop):
                continue
            for handoff, fd in zip(decoded, fds, strict=True):
                w.handed.pop(handoff.conn_id, None)
                recovered.append((handoff.conn_id, fd, handoff.listener, handoff.peer))

    def _workers_of(self, gen: Generation) -> list[Worker]:
        return [w for w in self.workers.values() if w.generation == gen.number]

    def _drop_incoming(self) -> None:
        """Kill a reload's generation that is not serving yet."""
        if self.incoming is not None:
            self._retire(self._workers_of(self.incoming), kill=True)
            self.respawns = [(at, g) for at, g in self.respawns if g is not self.incoming]
            self.incoming = None

    def _generation_of(self, w: Worker) -> Generation | None:
        for gen in (self.active, self.incoming):
            if gen is not None and gen.number == w.generation:
                return gen
        return None

    def _check_generation_ready(self) -> None:
        gen = self.incoming or self.active
        ready = sum(w.ready for w in self._workers_of(gen))
        if ready < gen.config.workers:
            return
        if gen is self.incoming:
            old = self._workers_of(self.active)
            self.active, self.incoming = gen, None
            self._changed()
            self.admission.update(gen.config)
            self.respawns = [(at, g) for at, g in self.respawns if g is gen]
            self._retire(old)
            log.event(
                Event.READY,
                "reloaded: generation %d serves, %d old workers drain",
                gen.number,
                len(old),
                GENERATION=gen.number,
            )
            self.notifier.ready(self.status())
            if self.reload_again:
                self.reload_again = False
                self._reload()
        elif not self.announced_ready:
            self.announced_ready = True
            log.event(Event.READY, "ready: %d workers", ready, GENERATION=gen.number)
            self.notifier.ready(self.status())

    def _retire(self, workers: list[Worker], kill: bool = False) -> None:
        """Ask workers to finish what they hold and exit (or kill them outright)."""
        deadline = time.monotonic() + self.active.config.graceful_timeout
        for w in workers:
            w.retiring = True
            w.killed_for = w.killed_for or "retired"
            w.retire_deadline = w.retire_deadline or deadline
            if kill:
                os.kill(w.pid, signal.SIGKILL)
                continue
            try:
                channel.send(w.chan, wire.encode_stop())
            except OSError:  # its channel is full or gone: the signal says the same
                os.kill(w.pid, signal.SIGTERM)
        self._changed()

    # -- signals, reload, stop -----------------------------------------------------------
    def _install_signals(self) -> None:
        self.wakeup_r, self.wakeup_w = socket.socketpair()
        for sock in (self.wakeup_r, self.wakeup_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self.wakeup_w.fileno(), warn_on_full_buffer=False)
        for sig in _HANDLED_SIGNALS:
            signal.signal(sig, _ignore)  # the C-level handler writes to the wakeup socket
        self._watch(self.wakeup_r, self._on_signals)

    def _on_signals(self) -> None:
        try:
            signums = self.wakeup_r.recv(4096)
        except BlockingIOError:
            return
        for signum in signums:
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGHUP:
                self._reload()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self._stop(signal.Signals(signum))

    def _reload(self) -> None:
        if self.stopping:
            return
        if self.incoming is not None:
            self.reload_again = True  # after this one: the file may have changed again
            return
        self.notifier.reloading()
        log.event(Event.RELOADING, "reloading: re-reading the configuration")
        try:
            config = self.reload_config()
        except Fatal as exc:
            self._abort_reload(exc.message)
            return
        self.incoming = self._generation(config)
        self._spawn_generation(self.incoming)

    def _abort_reload(self, reason: str) -> None:
        self._drop_incoming()
        log.event(
            Event.RELOAD_FAILED,
            "reload failed, still serving the old generation: %s",
            reason,
            level=logging.ERROR,
        )
        self.notifier.ready(self.status())

    def _stop(self, signum: signal.Signals) -> None:
        if self.stopping:
            if signum == signal.SIGINT:  # a second Ctrl-C: no more waiting
                self.stop_deadline = 0.0
                self._soon(0.0)
            return
        self.stopping = True
        timeout = self.active.config.graceful_timeout
        self.stop_deadline = time.monotonic() + timeout
        self._soon(0.0)
        self.respawns.clear()
        for listener in self.listeners:
            self._unwatch(listener.sock)  # systemd keeps the queue for the next start
        self.backlogged.clear()
        log.event(
            Event.STOPPING,
            "stopping on %s: draining %d connections (up to %gs)",
            signum.name,
            self._busy(),
            timeout,
        )
        self.notifier.stopping(self.status())
        self._drop_incoming()

    def _housekeeping(self, now: float) -> None:
        due = [g for at, g in self.respawns if at <= now]
        if due:
            self.respawns = [(at, g) for at, g in self.respawns if at > now]
            for gen in due:
                self._spawn(gen)
        if self.stopping:
            if not self.pending:  # everything accepted is handed over: let workers finish
                self._retire([w for w in self.workers.values() if not w.retiring])
            if now >= self.stop_deadline and self.workers:
                log.log.warning("graceful timeout: killing %d workers", len(self.workers))
                self._retire(list(self.workers.values()), kill=True)
                self.stop_deadline = float("inf")
        self._check_workers(now)
        self._log_refused(now)
        self.notifier.tick(now, self.status)
        due = [now + self.notifier.next_due(now), *(at for at, _ in self.respawns)]
        if self.active.config.timeout:
            due.append(now + min(1.0, self.active.config.timeout / 4))
        if self.stopping:
            due.append(min(self.stop_deadline, now + 0.1))  # retire as soon as all is handed
        if self.backlogged and self.accept_paused_until > now:
            due.append(self.accept_paused_until)
        self.housekeeping_due = min(due)

    # -- status and logs -----------------------------------------------------------------
    def _busy(self) -> int:
        return sum(w.in_flight for w in self.workers.values())

    def status(self) -> str:
        gen = self.active
        ready = sum(w.ready for w in self._workers_of(gen))
        text = (
            f"workers {ready}/{gen.config.workers}, busy {self._busy()}, "
            f"served {self.served}, refused {self.admission.refused}"
        )
        if self.incoming:
            text += ", reloading"
        if self.stopping:
            text += ", stopping"
        return text

    def _log_busy(self, now: float) -> None:
        self.next_busy_log = now + BUSY_LOG_INTERVAL
        log.event(
            Event.OVERLOAD,
            "all %d workers busy: new connections wait in the kernel backlog "
            "(logged at most once a minute)",
            len(self.workers),
            level=logging.WARNING,
        )

    def _log_refused(self, now: float) -> None:
        refused = self.admission.refused_since_log
        if refused and now >= self.next_refused_log:
            self.next_refused_log = now + REFUSED_LOG_INTERVAL
            self.admission.refused_since_log = 0
            cfg = self.active.config
            log.event(
                Event.OVERLOAD,
                "refused %d connections over the limits (max_connections=%d, "
                "max_connections_per_source=%d; logged at most every %gs)",
                refused,
                cfg.max_connections,
                cfg.max_connections_per_source,
                REFUSED_LOG_INTERVAL,
                level=logging.WARNING,
                REFUSED=refused,
            )

    def _pause_accepting(self, now: float, exc: OSError) -> None:
        """Out of descriptors or memory: retrying at once would spin, so pause; log the
        first failure and then a count at most every REFUSED_LOG_INTERVAL."""
        self.accept_paused_until = now + ACCEPT_PAUSE
        self._soon(self.accept_paused_until)
        self.accept_errors += 1
        if now >= self.next_accept_error_log:
            self.next_accept_error_log = now + REFUSED_LOG_INTERVAL
            log.event(
                Event.ACCEPT_ERROR,
                "accept failed %d times: %s; retrying every %gs (logged at most every %gs)",
                self.accept_errors,
                exc.strerror,
                ACCEPT_PAUSE,
                REFUSED_LOG_INTERVAL,
                level=logging.WARNING,
            )
            self.accept_errors = 0

    # -- descriptors ---------------------------------------------------------------------
    def _watch(
        self, source: socket.socket | int, callback: Callable[[], None], edge: bool = False
    ) -> None:
        fd = source if isinstance(source, int) else source.fileno()
        self.epoll.register(fd, select.EPOLLIN | (select.EPOLLET if edge else 0))
        self.callbacks[fd] = callback

    def _unwatch(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self.callbacks.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    def _held_fds(self) -> list[int]:
        return [fd for _, fd, _, _ in self.pending]

    def _close_in_child(self) -> None:
        """A new worker must hold nothing of the dispatcher's: no listener (only the
        dispatcher accepts), no other worker's channel, no connection not handed to it."""
        signal.set_wakeup_fd(-1)
        self.epoll.close()
        os.close(self.done_r)  # the worker keeps done_w
        for sock in (self.wakeup_r, self.wakeup_w):
            sock.close()
        for listener in self.listeners:
            listener.sock.close()
        for w in self.workers.values():
            w.chan.close()
            w.inbox.close()
            os.close(w.stacks)
        channel.close_all(self._held_fds())

    def _close(self) -> None:
        held = self._held_fds()
        if held:
            log.log.warning("exiting with %d accepted connections not served", len(held))
        channel.close_all(held)
        for listener in self.listeners:
            listener.close()
        signal.set_wakeup_fd(-1)
        self.epoll.close()
        channel.close_all([self.done_r, self.done_w])


def _ignore(signum: int, frame: object) -> None:
    pass
