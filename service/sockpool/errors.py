"""Exit codes and the one exception type that turns bad input into a one-line error.

The codes follow sysexits(3) where one fits, so `systemctl status` shows a meaningful
status and units can list the non-retryable ones in `RestartPreventExitStatus=`.
"""

from __future__ import annotations

import reprlib
from enum import IntEnum
from typing import Any

from .events import Event


class ExitCode(IntEnum):
    OK = 0
    USAGE = 64  # EX_USAGE: bad command line
    ACTIVATION = 65  # EX_DATAERR: LISTEN_* environment malformed or not for this process
    NO_LISTENERS = 66  # EX_NOINPUT: neither socket activation nor --listen
    NO_PROCESS = 67  # --reload=PID: no such process (EX_NOUSER, "addressee unknown")
    BAD_DESCRIPTOR = 69  # a passed descriptor is closed, not a socket, or not listening
    WORKERS_FAILING = 70  # EX_SOFTWARE: workers keep dying before they are ready
    BIND = 71  # EX_OSERR: a --listen address cannot be bound
    CONFIG = 78  # EX_CONFIG: a bad configuration value


# What a handler or an application may raise and be answered for (a 500 for HTTP, a
# HANDLER_ERROR record) while its worker goes on: sys.exit() in a request ends that request,
# as in uvicorn, not the worker and every connection it holds. Its life is the dispatcher's.
HANDLER_FAULTS = (Exception, SystemExit)


def cancelled_from_outside(exc: BaseException) -> bool:
    """A CancelledError sent to this task (a time limit, a shutdown) must go on up; one a
    handler raised by itself (an inner task's, awaited) is its fault, like any other."""
    import asyncio  # here: a sync worker and the dispatcher never load it (15 ms)

    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling() > 0


class Fatal(Exception):
    """An error the user must fix; the CLI prints `sockpool: MESSAGE` and exits with `code`."""

    def __init__(self, code: ExitCode, message: str, event: Event | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.event = event


class ConfigError(Fatal):
    def __init__(self, message: str) -> None:
        super().__init__(ExitCode.CONFIG, message)


QUOTE_LIMIT = 60  # characters of a bad value an error line quotes before cutting it


def digits(text: str) -> bool:
    """Whether `text` is a whole number in 0-9 only. str.isdigit() alone is true for '¹' and
    for fullwidth digits too, which int() then refuses or turns into a number nobody wrote."""
    return text.isascii() and text.isdigit()


def whole_number(text: str, most: int) -> int | None:
    """`text` as a number from 0 to `most` in ASCII digits (leading zeros taken); None for
    anything else, a number thousands of digits long too (int() raises ValueError)."""
    figures = text.lstrip("0") or "0"
    if not digits(text) or len(figures) > len(str(most)):
        return None
    value = int(figures)
    return value if value <= most else None


def printable(text: str) -> str:
    """`text` with every character that could break or forge a line escaped as in repr():
    control characters (newline, CR, ESC...), lone surrogates (undecodable bytes), and the
    other non-printables such as bidi overrides. Printable text comes back as it is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def utf8_text(text: str) -> str:
    """`text` as valid UTF-8: undecodable bytes, which Python keeps as lone surrogates in
    argv and in the paths the kernel reports, shown as \\udcNN escapes instead. Listener names
    and peers must be valid UTF-8 for the wire, the journal and the handler alike."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = QUOTE_LIMIT
_repr.maxlevel = 3  # a value nested deeper shows as [...]
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6


def quote(value: Any) -> str:
    """repr() of a bad value for a one-line error, cut to about QUOTE_LIMIT characters;
    a cut string or list says how long it was, so a 50 MB value costs a short line."""
    text = _repr.repr(value)
    if isinstance(value, str | bytes) and len(value) > QUOTE_LIMIT:
        text += f" ({len(value):,} characters)"
    elif isinstance(value, list | tuple | dict) and len(value) > _repr.maxlist:
        text += f" ({len(value):,} items)"
    return text


def cut(text: str, limit: int = 200) -> str:
    """Unquoted text (an exception's message, a key) for one line: escaped, then cut."""
    text = printable(text[: limit + 1])
    return text if len(text) <= limit else f"{text[:limit]}..."
