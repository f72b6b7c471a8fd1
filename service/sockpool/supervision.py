"""Worker health: hung workers (with their stacks), memory limits, and recycling.

A mixin of the Dispatcher, whose state it uses (the attributes declared below): kept apart
so the dispatcher module is about accepting and handing over, and this one about deciding
when a worker has to go and making it go without losing capacity.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

from . import health, log
from .events import Event
from .pool import Generation, Worker

DUMP_GRACE = 0.5  # seconds a hung worker gets to write its stacks before SIGKILL
MEMORY_CHECK_INTERVAL = 1.0


class Supervision:
    # Provided by the Dispatcher.
    active: Generation
    workers: dict[int, Worker]
    stopping: bool
    next_memory_check: float
    _changed: Callable[[], None]
    _soon: Callable[[float], None]
    _generation_of: Callable[[Worker], Generation | None]
    _retire: Callable[..., None]
    _spawn: Callable[[Generation], None]

    def _check_workers(self, now: float) -> None:
        timeout = self.active.config.timeout
        max_memory = self.active.config.max_memory
        check_memory = max_memory and now >= self.next_memory_check
        if check_memory:
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL
        for w in list(self.workers.values()):
            if w.killed_for in ("hung", "overdue"):
                continue  # SIGKILLed: waiting for SIGCHLD
            if w.dump_asked:
                if now - w.dump_asked >= DUMP_GRACE:
                    self._kill_hung(w, now)
            elif w.retire_deadline and now > w.retire_deadline:
                log.log.warning(
                    "worker %d did not finish within graceful_timeout: killing it", w.pid
                )
                w.killed_for = "overdue"
                os.kill(w.pid, signal.SIGKILL)
            elif timeout and w.handed:
                conn_id, (sent, listener, peer) = next(iter(w.handed.items()))
                since = max(w.last_heard, sent)
                if now - since > timeout:
                    w.hung_on = (conn_id, since, listener, peer)
                    self._ask_for_stacks(w, now)
            if check_memory and not (w.recycling or w.retiring):
                rss = health.rss_mib(w.pid)
                if rss is not None and rss > max_memory:
                    self._recycle(w, f"resident memory {rss:.0f} MiB over max_memory={max_memory}")

    def _ask_for_stacks(self, w: Worker, now: float) -> None:
        """A hung worker gets no more work and is asked for its stacks; SIGCONT in case
        it was stopped, or the dump would wait for it."""
        w.gone = True
        self._changed()
        w.dump_asked = now
        health.clear_stacks(w.stacks)
        for sig in (health.DUMP_SIGNAL, signal.SIGCONT):
            os.kill(w.pid, sig)
        self._soon(now + DUMP_GRACE)

    def _kill_hung(self, w: Worker, now: float) -> None:
        conn_id, since, listener, peer = w.hung_on
        stacks = health.read_stacks(w.stacks) or "(no stacks: the worker did not answer)"
        message = (  # formatted here: as %-args, the stacks would go to the journal twice
            f"worker {w.pid} hung: connection {conn_id} in its hands for {now - since:.1f}s, "
            f"over timeout={self.active.config.timeout:g}s; killing it. Its stacks:\n{stacks}"
        )
        log.event(
            Event.WORKER_HUNG,
            "%s",
            message,
            level=logging.ERROR,
            WORKER_PID=w.pid,
            GENERATION=w.generation,
            CONN_ID=conn_id,
            LISTENER=listener,
            PEER=peer,
        )
        w.dump_asked = 0.0
        w.killed_for = "hung"
        os.kill(w.pid, signal.SIGKILL)

    def _recycle(self, w: Worker, why: str) -> None:
        """Retire a worker gracefully, but only once its replacement is ready."""
        if w.recycling or w.retiring:
            return
        w.recycling = True
        w.killed_for = "recycled"
        log.event(
            Event.WORKER_RECYCLED,
            "recycling worker %d: %s",
            w.pid,
            why,
            WORKER_PID=w.pid,
            GENERATION=w.generation,
        )
        gen = self._generation_of(w)
        if gen is None or self.stopping:
            self._retire([w])
            return
        gen.recycling.append(w)
        self._spawn(gen)
