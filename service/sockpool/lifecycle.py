"""What goes into the lifecycle policy (events) and what comes out of it (actions): plain data.

The dispatcher turns signals, worker messages, exits and the clock into events; the policy
(policy.py) answers each with actions; the dispatcher carries them out. Neither side needs
the other to test it: a policy test is a list of events and the actions it expects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .errors import ExitCode
from .events import Event
from .states import ExitReason, Generation

# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawned:
    pid: int
    generation: int
    now: float


@dataclass(frozen=True)
class SpawnFailed:
    """fork() or the worker's channel could not be made (a process or descriptor limit)."""

    generation: int
    reason: str
    now: float


@dataclass(frozen=True)
class Ready:
    pid: int
    capacity: int
    now: float


@dataclass(frozen=True)
class Failed:
    """The worker's own word on why it cannot start (its handler would not import)."""

    pid: int
    reason: str


@dataclass(frozen=True)
class Beat:
    pid: int
    now: float


@dataclass(frozen=True)
class ChannelClosed:
    pid: int


@dataclass(frozen=True)
class Exited:
    pid: int
    how: str  # the wait status in words
    natural: ExitReason  # what the status alone says (oom, crashed, killed, exited)
    lost: int  # connections in its hands that died with it
    stacks: str  # faulthandler's output, for a crash
    now: float


@dataclass(frozen=True)
class Tick:
    now: float
    undelivered: int = 0  # accepted connections not yet handed to a worker


@dataclass(frozen=True)
class Completions:
    """Workers that finished connections (their `served` counts went up)."""

    pids: frozenset[int]
    now: float


@dataclass(frozen=True)
class Memory:
    rss_mib: dict[int, float]  # pid -> resident MiB, for the pids CheckMemory named
    now: float


@dataclass(frozen=True)
class ReloadRequested:
    config: Config | None  # None: it failed to load, and `error` says why
    error: str
    now: float


@dataclass(frozen=True)
class StopRequested:
    signal: str  # "SIGTERM" or "SIGINT"
    now: float
    busy: int = 0  # connections in the workers' hands


# -- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    generation: Generation


@dataclass(frozen=True)
class SendStop:
    pid: int


@dataclass(frozen=True)
class Kill:
    pid: int
    reason: ExitReason
    hang: Record | None = None  # for a hung worker: its record, to log with its stacks


@dataclass(frozen=True)
class AskStacks:
    pid: int


@dataclass(frozen=True)
class CheckMemory:
    pids: tuple[int, ...]


@dataclass(frozen=True)
class Swap:
    """`generation` serves from now on: its limits apply."""

    generation: Generation


@dataclass(frozen=True)
class Notify:
    state: str  # "ready", "reloading" or "stopping": sd_notify with the current STATUS=


@dataclass(frozen=True)
class StopAccepting:
    pass


@dataclass(frozen=True)
class Wake:
    """Tick the policy again by this time (a deadline, a backoff, a periodic check)."""

    at: float


@dataclass(frozen=True)
class GiveUp:
    code: ExitCode
    message: str


@dataclass(frozen=True)
class Record:
    """A journal record: a lifecycle event with its fields."""

    event: Event | None
    message: str
    level: int = logging.INFO
    fields: dict[str, Any] = field(default_factory=dict)


Action = (
    Spawn
    | SendStop
    | Kill
    | AskStacks
    | CheckMemory
    | Swap
    | Notify
    | StopAccepting
    | Wake
    | GiveUp
    | Record
)
