"""Logging: the native journal with structured fields, or stderr for a terminal.

Every record made while a connection is being served (the handler's own `logging` calls
included, in threads and asyncio tasks alike) carries CONN_ID, LISTENER, PEER (and for
AF_UNIX peers PEER_PID, PEER_UID), derived when a record is made from the connection's
context variable, so serving a connection that logs nothing costs nothing here.
WORKER_PID and GENERATION are set once per worker. journald keeps only UPPERCASE field
names, hence the spelling.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from .connection import current_connection
from .errors import printable, utf8_text
from .events import Event
from .journal import Journal

log = logging.getLogger("sockpool")
_base_fields: dict[str, str] = {}
JOURNAL_SOCKET = "/run/systemd/journal/socket"
EXIT_DRAIN = 1.0  # seconds the last records get to reach a stalled journald at exit
journal: Journal | None = None  # the journal writer, when records go to the journal


class _AddFields(logging.Filter):
    """Copy the current context's fields onto each record (explicit `extra` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = dict(_base_fields)
        info = current_connection()
        if info is not None:
            fields.update(CONN_ID=str(info.conn_id), LISTENER=info.listener, PEER=info.peer)
            if info.peer_pid is not None:
                fields.update(PEER_PID=str(info.peer_pid), PEER_UID=str(info.peer_uid))
        for key, value in fields.items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


class _StderrFormatter(logging.Formatter):
    """One line a record; fields follow the message so grep finds them as in the journal.

    Nothing a peer sends or names can forge a record: every field and every string argument
    of a message has its control characters escaped (errors.printable). Text that spans
    lines of its own, such as a traceback or the stacks in a hang report, stays readable
    but continues on lines indented by two spaces, so only a record's first line starts
    with a timestamp; its other control characters are escaped too.
    """

    KEYS = ("CONN_ID", "LISTENER", "PEER", "PEER_PID", "PEER_UID", "WORKER_PID", "GENERATION")

    def format(self, record: logging.LogRecord) -> str:
        first, *more = _message(record).split("\n")
        record.message = printable(first)
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        fields = " ".join(
            f"{k}={printable(str(record.__dict__[k]))}" for k in self.KEYS if k in record.__dict__
        )
        if fields:
            line = f"{line} [{fields}]"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            more += record.exc_text.split("\n")
        if record.stack_info:
            more += self.formatStack(record.stack_info).split("\n")
        return "".join([line, *("\n  " + printable(ln) for ln in more)])


def _message(record: logging.LogRecord) -> str:
    """record.getMessage() with its string arguments escaped, whole lines and all."""
    msg = str(record.msg)
    args = record.args
    if not args:
        return msg
    if isinstance(args, Mapping):
        return msg % {k: printable(v) if isinstance(v, str) else v for k, v in args.items()}
    return msg % tuple(printable(a) if isinstance(a, str) else a for a in args)


class _JournalFormatter(logging.Formatter):
    """The journal keeps fields apart, so only undecodable bytes need care: python-systemd
    cannot send a lone surrogate and would drop the record with a "Logging error"."""

    def format(self, record: logging.LogRecord) -> str:
        return utf8_text(super().format(record))


def journal_wanted(target: str, env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """auto: the journal when systemd connected our stderr to it (JOURNAL_STREAM)."""
    if target == "journal":
        return True
    if target == "stderr":
        return False
    stream = env.get("JOURNAL_STREAM")
    return (names(stream, 2) or names(stream, 1)) and os.path.exists(JOURNAL_SOCKET)


def names(stream: str | None, fd: int) -> bool:
    """Whether JOURNAL_STREAM ("device:inode") is descriptor `fd`'s, as systemd.exec(5) asks
    to check: a shell that inherited it from a service manager has its output on a
    terminal, and errors sent to the journal would leave it with nothing but an exit code."""
    if not stream:
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup(name: str, level: str, target: str) -> None:
    """Replace the root logger's handlers; called by the dispatcher, inherited by workers."""
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    handler: logging.Handler
    if journal_wanted(target):
        from systemd.journal import JournalHandler

        global journal
        journal = Journal(JOURNAL_SOCKET, name=name)
        atexit.register(journal.drain, EXIT_DRAIN)  # not in workers: they leave by _exit
        handler = JournalHandler(SYSLOG_IDENTIFIER=name, sender_function=journal.send)
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            _StderrFormatter(f"%(asctime)s {name}[%(process)d] %(levelname)s: %(message)s")
        )
    handler.addFilter(_AddFields())
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    """This process's level (a config log_level); a reload's is set as its generation
    takes over, so a reload that fails changes nothing."""
    logging.getLogger().setLevel(level.upper())


def set_process_fields(**fields: Any) -> None:
    """Fields for every record of this process from now on (a worker's pid and generation)."""
    _base_fields.clear()
    _base_fields.update({k: str(v) for k, v in fields.items()})


def event(
    event: Event,
    msg: str,
    *args: Any,
    level: int = logging.INFO,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """A lifecycle record with its MESSAGE_ID, for `journalctl MESSAGE_ID=` and the catalog."""
    log.log(level, msg, *args, exc_info=exc_info, extra={"MESSAGE_ID": event.value, **fields})
