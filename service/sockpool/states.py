"""A worker's life, written down as data: its states, what moves it between them, why it ended.

Every transition is one row of TRANSITIONS; policy.py moves workers only through `advance`,
so a move the table does not list is a bug that shows at once, not a worker that quietly
gets work it should not. The records here are plain data: the policy reads and changes them,
the hot path (hotpath.py) keeps the per-connection counters on them.

    STARTING --ready--> READY --recycle--> RECYCLING --replaced--> RETIRING --exit--> GONE
        |                 |  \\                 |                     |
        |                 |   hang--> HUNG --grace over--> KILLED --exit--> GONE
        |                 retire/stop -----------------> RETIRING --overdue--> KILLED
        +--start timeout / give up / drop--> KILLED
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum

from .config import Config


class WorkerState(Enum):
    STARTING = "starting"  # forked, importing its handlers: no work yet
    READY = "ready"  # takes work
    RECYCLING = "recycling"  # takes work until its replacement is ready, then retires
    RETIRING = "retiring"  # told to stop: finishes what it holds, gets nothing new
    HUNG = "hung"  # held a connection past `timeout`: no work, stacks asked for
    KILLED = "killed"  # SIGKILLed: waiting for its exit
    GONE = "gone"  # exited and reaped


class Trigger(Enum):
    READY = "reported ready"
    RECYCLE = "recycle"  # served max_requests, over max_memory, or it asked (RETIRE)
    REPLACED = "replacement ready"
    RETIRE = "retire"  # reload swapped generations, or stop
    HANG = "hang"
    KILL = "kill"  # hung past the grace, overdue, start timeout, dropped, given up
    EXIT = "exit"


class ExitReason(StrEnum):
    """EXIT_REASON in the journal's WORKER_EXITED records; admins filter on these words."""

    RETIRED = "retired"  # reload or stop
    RECYCLED = "recycled"  # max_requests, max_memory, or it asked (RETIRE)
    HUNG = "hung"  # timeout
    OVERDUE = "overdue"  # did not finish within graceful_timeout
    START_TIMEOUT = "start-timeout"  # not ready within start_timeout
    OOM = "oom"  # the kernel's OOM killer
    CRASHED = "crashed"  # a fatal signal such as SIGSEGV
    KILLED = "killed"  # a signal nobody here sent
    EXITED = "exited"  # on its own


S, T = WorkerState, Trigger
_ALIVE = (S.STARTING, S.READY, S.RECYCLING, S.RETIRING, S.HUNG)
TRANSITIONS: dict[tuple[WorkerState, Trigger], WorkerState] = {
    (S.STARTING, T.READY): S.READY,
    (S.READY, T.RECYCLE): S.RECYCLING,
    (S.RECYCLING, T.REPLACED): S.RETIRING,
    (S.READY, T.HANG): S.HUNG,
    (S.RECYCLING, T.HANG): S.HUNG,
    (S.HUNG, T.KILL): S.KILLED,
    **{(state, T.RETIRE): S.RETIRING for state in (S.STARTING, S.READY, S.RECYCLING)},
    **{(state, T.KILL): S.KILLED for state in _ALIVE},
    **{(state, T.EXIT): S.GONE for state in (*_ALIVE, S.KILLED)},
}
SERVING = frozenset({S.READY, S.RECYCLING})  # the states that take new connections


class TransitionError(RuntimeError):
    """A move the table does not allow: a bug in the policy, never the user's doing."""


@dataclass(eq=False)
class Worker:
    """The dispatcher's picture of one worker process."""

    pid: int
    generation: int
    state: WorkerState = S.STARTING
    capacity: int = 0  # from READY: connections it takes at once
    # Kept by the hot path: conn_id -> (when sent, listener, peer), oldest first.
    handed: dict[int, tuple[float, str, str]] = field(default_factory=dict)
    served: int = 0
    last_heard: float = 0.0  # its last message or completion
    max_served: int = 0  # recycle after this many connections (0: never)
    failure: str = ""  # what it said when it could not start
    reason: ExitReason | None = None  # why we ended it, once we did
    deadline: float = 0.0  # the current state's: start timeout, stacks' grace, or retire
    hung_on: tuple[int, float, str, str] = (0, 0.0, "", "")  # conn_id, since, listener, peer
    listening: bool = True  # its channel is open; False once it closed (exiting)
    succeeded: bool = False  # recycled: its successor is started, so its exit needs none


def advance(w: Worker, trigger: Trigger) -> WorkerState:
    """Move `w` along TRANSITIONS, or raise TransitionError."""
    new = TRANSITIONS.get((w.state, trigger))
    if new is None:
        raise TransitionError(f"worker {w.pid}: no transition from {w.state.value} on {trigger}")
    w.state = new
    return new


def can(w: Worker, trigger: Trigger) -> bool:
    return (w.state, trigger) in TRANSITIONS


@dataclass(eq=False)
class Generation:
    """Workers started from one configuration; a reload starts the next one."""

    number: int
    config: Config
    start_failures: int = 0  # consecutive workers that died before READY
    last_failure: str = ""
    spawn_failure_said: bool = False  # a fork that fails is logged once per generation
    recycling: list[Worker] = field(default_factory=list)  # retire as replacements get ready

    @property
    def max_start_failures(self) -> int:
        return self.config.workers + 4
