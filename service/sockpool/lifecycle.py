"""What goes into the lifecycle policy (events) and what comes out of it (actions): plain data.

NamedTuples, not dataclasses: two dozen dataclasses cost the cold start some 15 ms.

The dispatcher turns signals, worker messages, exits and the clock into events; the policy
(policy.py) answers each with actions; the dispatcher carries them out. Neither side needs
the other to test it: a policy test is a list of events and the actions it expects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from .config import Config
from .errors import ExitCode
from .events import Event
from .states import ExitReason, Generation

# -- events ----------------------------------------------------------------------------------


class Spawned(NamedTuple):
    pid: int
    generation: int
    now: float


class SpawnFailed(NamedTuple):
    """fork() or the worker's channel could not be made (a process or descriptor limit)."""

    generation: int
    reason: str
    now: float


class Ready(NamedTuple):
    pid: int
    capacity: int
    now: float


class Failed(NamedTuple):
    """The worker's own word on why it cannot start (its handler would not import)."""

    pid: int
    reason: str


class Beat(NamedTuple):
    pid: int
    now: float


class Retire(NamedTuple):
    """The worker asks to be recycled: it cannot go on as it should."""

    pid: int
    reason: str
    now: float


class ChannelClosed(NamedTuple):
    pid: int


class Exited(NamedTuple):
    pid: int
    how: str  # the wait status in words
    natural: ExitReason  # what the status alone says (oom, crashed, killed, exited)
    lost: int  # connections in its hands that died with it
    stacks: str  # faulthandler's output, for a crash
    now: float


class Tick(NamedTuple):
    now: float
    undelivered: int = 0  # accepted connections not yet handed to a worker


class Completions(NamedTuple):
    """Workers that finished connections (their `served` counts went up)."""

    pids: frozenset[int]
    now: float


class Memory(NamedTuple):
    rss_mib: dict[int, float]  # pid -> resident MiB, for the pids CheckMemory named
    now: float


class ReloadRequested(NamedTuple):
    config: Config | None  # None: it failed to load, and `error` says why
    error: str
    now: float


class StopRequested(NamedTuple):
    signal: str  # "SIGTERM" or "SIGINT"
    now: float
    busy: int = 0  # connections in the workers' hands


# -- actions ---------------------------------------------------------------------------------


class Spawn(NamedTuple):
    generation: Generation


class SendStop(NamedTuple):
    pid: int
    # Still starting: it reads its channel only once its import is done, which may be
    # never (a database it waits for), so a SIGTERM goes too. Importing, it dies of it (it
    # holds nothing); from its ASGI lifespan's startup on, it stops as it would by the
    # channel, its startup and then its shutdown run.
    starting: bool = False


class Kill(NamedTuple):
    pid: int
    reason: ExitReason
    hang: Record | None = None  # for a hung worker: its record, to log with its stacks


class AskStacks(NamedTuple):
    pid: int


class CheckMemory(NamedTuple):
    pids: tuple[int, ...]


class Swap(NamedTuple):
    """`generation` serves from now on: its limits apply."""

    generation: Generation


class Notify(NamedTuple):
    state: str  # "ready", "reloading" or "stopping": sd_notify with the current STATUS=


class StopAccepting(NamedTuple):
    pass


class Wake(NamedTuple):
    """Tick the policy again by this time (a deadline, a backoff, a periodic check)."""

    at: float


class GiveUp(NamedTuple):
    code: ExitCode
    message: str


class Record(NamedTuple):
    """A journal record: a lifecycle event with its fields."""

    event: Event | None
    message: str
    level: int = logging.INFO
    fields: Mapping[str, Any] = MappingProxyType({})


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
