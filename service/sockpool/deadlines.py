"""What falls due for one worker on a tick: the deadline of its state, or a hang. Pure.

STARTING has start_timeout, HUNG the grace for its stacks, RETIRING graceful_timeout; a
serving worker holding a connection past `timeout` (measured from what it last said, so an
async worker's heartbeats count) is hung.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from . import lifecycle as ev
from . import records
from .config import Config
from .lifecycle import Action
from .states import SERVING, ExitReason, Trigger, Worker, WorkerState

Move = Callable[[Worker, Trigger], None]

S = WorkerState
DUMP_GRACE = 0.5  # seconds a hung worker gets to write its stacks before SIGKILL
STATES = (S.STARTING, S.HUNG, S.RETIRING)  # the states whose `deadline` is set
MIN_TICK = 0.01  # a deadline just missed is checked again this soon, never in a busy loop


def check(w: Worker, now: float, config: Config, move: Move) -> list[Action]:
    """The actions due for `w` at `now` under its generation's `config`; `move` is the
    pool's, so every move is seen."""
    if w.state in STATES and now >= w.deadline:
        return _expired[w.state](w, now, config, move)
    if config.timeout and w.state in SERVING and w.handed:
        conn_id, (sent, listener, peer) = next(iter(w.handed.items()))
        since = max(w.last_heard, sent)
        if now - since > config.timeout:
            move(w, Trigger.HANG)
            w.hung_on = (conn_id, since, listener, peer)
            w.deadline = now + DUMP_GRACE
            return [ev.AskStacks(w.pid), ev.Wake(w.deadline)]
    return []


def next_tick(now: float, config: Config, workers: Iterable[Worker], due: list[float]) -> float:
    """The earliest of `due` and the workers' deadlines; while connections are checked for
    hangs, at most a quarter of `timeout` (and a second) away."""
    due = [*due, *(w.deadline for w in workers if w.state in STATES)]
    if config.timeout:
        due.append(now + min(1.0, config.timeout / 4))
    return max(now + MIN_TICK, min(due, default=now + 1.0))


def _start_timeout(w: Worker, now: float, config: Config, move: Move) -> list[Action]:
    handlers = sorted({config.handler, *(lc.handler for lc in config.listeners.values())} - {None})
    w.failure = (
        f"not ready within start_timeout={config.start_timeout:g}s "
        f"(does importing {', '.join(map(repr, handlers))} block?)"
    )
    message = f"worker {w.pid} {w.failure}"
    return [records.problem(message, logging.ERROR), *_kill(w, ExitReason.START_TIMEOUT, move)]


def _hung(w: Worker, now: float, config: Config, move: Move) -> list[Action]:
    record = records.worker_hung(w, now, config.timeout)
    move(w, Trigger.KILL)
    w.reason = ExitReason.HUNG
    return [ev.Kill(w.pid, w.reason, hang=record)]


def _overdue(w: Worker, now: float, config: Config, move: Move) -> list[Action]:
    message = f"worker {w.pid} did not finish within graceful_timeout: killing it"
    return [records.problem(message), *_kill(w, ExitReason.OVERDUE, move)]


def _kill(w: Worker, reason: ExitReason, move: Move) -> list[Action]:
    move(w, Trigger.KILL)
    w.reason = reason
    return [ev.Kill(w.pid, reason)]


_expired = {S.STARTING: _start_timeout, S.HUNG: _hung, S.RETIRING: _overdue}
