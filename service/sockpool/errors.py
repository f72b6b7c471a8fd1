"""Exit codes and the one exception type that turns bad input into a one-line error.

The codes follow sysexits(3) where one fits, so `systemctl status` shows a meaningful
status and units can list the non-retryable ones in `RestartPreventExitStatus=`.
"""

from __future__ import annotations

from enum import IntEnum

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
