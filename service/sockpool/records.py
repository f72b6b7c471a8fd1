"""The lifecycle's journal records: their wording and fields, in one place.

The policy decides *that* something is recorded; this module says *how* it reads, so the
catalog (packaging/sockpool.catalog) and the tests have one place to agree with.
"""

from __future__ import annotations

import logging
import signal

from . import log
from .events import Event
from .lifecycle import Exited, Record
from .states import ExitReason, Generation, Worker


def _ids(w: Worker) -> dict[str, object]:
    return {"WORKER_PID": w.pid, "GENERATION": w.generation}


def worker_started(w: Worker) -> Record:
    return Record(
        Event.WORKER_STARTED, f"worker {w.pid} ready (capacity {w.capacity})", fields=_ids(w)
    )


def worker_exited(w: Worker, e: Exited, reason: ExitReason) -> Record:
    lost = f"; {e.lost} connections in its hands were cut" if e.lost else ""
    stacks = f"\n{e.stacks}" if e.stacks else ""
    quiet = reason in (ExitReason.RETIRED, ExitReason.RECYCLED)
    return Record(
        Event.WORKER_EXITED,
        f"worker {w.pid} {e.how}{lost}{stacks}",
        logging.INFO if quiet else logging.WARNING,
        {**_ids(w), "EXIT_STATUS": e.how, "EXIT_REASON": str(reason), "CONNECTIONS_LOST": e.lost},
    )


def worker_hung(w: Worker, now: float, timeout: float) -> Record:
    conn_id, since, listener, peer = w.hung_on
    return Record(
        Event.WORKER_HUNG,
        f"worker {w.pid} hung: connection {conn_id} in its hands for {now - since:.1f}s, "
        f"over timeout={timeout:g}s; killing it. Its stacks:",
        logging.ERROR,
        {**_ids(w), "CONN_ID": conn_id, "LISTENER": listener, "PEER": peer},
    )


def second_reporter(w: Worker) -> Record:
    message = (
        f"worker {w.pid} reported ready twice: a second process speaks on its channel "
        "(does the handler's module fork at import?)"
    )
    return Record(None, message, logging.ERROR, {"WORKER_PID": w.pid})


def recycling(w: Worker, why: str) -> Record:
    return Record(Event.WORKER_RECYCLED, f"recycling worker {w.pid}: {why}", fields=_ids(w))


def ready(gen: Generation, workers: int) -> Record:
    return Record(Event.READY, f"ready: {workers} workers", fields={"GENERATION": gen.number})


def reloaded(gen: Generation, old: int) -> Record:
    message = f"reloaded: generation {gen.number} serves, {old} old workers drain"
    return Record(Event.READY, message, fields={"GENERATION": gen.number})


def reload_failed(reason: str) -> Record:
    message = f"reload failed, still serving the old generation: {reason}"
    return Record(Event.RELOAD_FAILED, message, logging.ERROR)


def event(event: Event, message: str) -> Record:
    return Record(event, message)


def problem(message: str, level: int = logging.WARNING, **fields: object) -> Record:
    """A record without a lifecycle event of its own."""
    return Record(None, message, level, fields)


def unheeded(signum: int) -> Record:
    """A signal sockpool takes only to say it means nothing: its default action would end
    the dispatcher unlogged."""
    name = signal.Signals(signum).name
    return problem(f"{name} means nothing to sockpool: ignored (SIGHUP reloads, SIGTERM stops)")


def write(record: Record, stacks: str = "") -> None:
    """Into the log; a hang report's stacks go below its message, in the format itself:
    as an argument they would be escaped into one line on stderr (log.py escapes what
    arguments hold) and reach the journal twice (python-systemd's CODE_ARGS). The stderr
    format escapes the format's lines one by one, and indents them."""
    fmt = "%s\n" + stacks.replace("%", "%%") if stacks else "%s"
    if record.event is None:
        log.log.log(record.level, fmt, record.message, extra=record.fields)
    else:
        log.event(record.event, fmt, record.message, level=record.level, **record.fields)
