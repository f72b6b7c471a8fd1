"""Logging: the native journal with structured fields, or stderr for a terminal.

Every record made while a connection is being served (the handler's own `logging` calls
included, in threads and asyncio tasks alike) carries CONN_ID, LISTENER, PEER (and for
AF_UNIX peers PEER_PID, PEER_UID), derived when a record is made from the connection's
context variable, so serving a connection that logs nothing costs nothing here.
WORKER_PID and GENERATION are set once per worker. journald keeps only UPPERCASE field
names, hence the spelling.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from .connection import current_connection
from .events import Event

log = logging.getLogger("sockpool")
_base_fields: dict[str, str] = {}
JOURNAL_SOCKET = "/run/systemd/journal/socket"


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
    """One line a record; fields follow the message so grep finds them as in the journal."""

    KEYS = ("CONN_ID", "LISTENER", "PEER", "PEER_PID", "PEER_UID", "WORKER_PID", "GENERATION")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={record.__dict__[k]}" for k in self.KEYS if k in record.__dict__)
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return f"{head} [{fields}]{sep}{tail}"


def journal_wanted(target: str, env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """auto: the journal when systemd connected our stderr to it (JOURNAL_STREAM)."""
    if target == "journal":
        return True
    if target == "stderr":
        return False
    return bool(env.get("JOURNAL_STREAM")) and os.path.exists(JOURNAL_SOCKET)


def setup(name: str, level: str, target: str) -> None:
    """Replace the root logger's handlers; called by the dispatcher, inherited by workers."""
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    handler: logging.Handler
    if journal_wanted(target):
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER=name)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            _StderrFormatter(f"%(asctime)s {name}[%(process)d] %(levelname)s: %(message)s")
        )
    handler.addFilter(_AddFields())
    root.addHandler(handler)
    root.setLevel(level.upper())


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
