"""The command line's own decisions: which processes `sockpool --reload=PID` takes for a
sockpool, and the signal mask main() leaves."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sockpool.cli import is_sockpool_command


@pytest.mark.parametrize(
    "command",
    [
        "/usr/bin/python3 /usr/bin/sockpool --config /etc/sockpool/web.toml",  # console script
        "/srv/.venv/bin/python /srv/.venv/bin/sockpool app:handle",
        "python3 -m sockpool app:handle",
        "python3 -u -m sockpool app:handle",
        "python3.11 -I -X dev -W error -m sockpool app:handle",
        "python3 -uIm sockpool app:handle",
        "python3 -msockpool",
        "python3 -Xdev ./sockpool",
        "/opt/bin/sockpool app:handle",  # a program named sockpool
        "python3.13t -m sockpool",  # free-threaded
        "python3.11d /usr/bin/sockpool",  # Debian's debug build
        "pypy3.10 -m sockpool",
    ],
)
def test_sockpool_commands(command: str) -> None:
    assert is_sockpool_command([*command.encode().split(b" "), b""])  # /proc's trailing NUL


@pytest.mark.parametrize(
    "command",
    [
        "less /usr/bin/sockpool",  # a SIGHUP would end it
        "cat ./sockpool",
        "python3 -m http.server",
        "python3 -c import sockpool; sockpool",
        "python3 other.py sockpool",
        "python3 -m pytest tests/sockpool",
        "python3 -X sockpool",  # an option's value, not the script
        "python3",
        "",
    ],
)
def test_other_commands(command: str) -> None:
    assert not is_sockpool_command([*command.encode().split(b" "), b""])


@pytest.mark.parametrize("listen", ["/nonexistent/dir/x.sock", "127.0.0.1:0"])
def test_main_leaves_the_signals_as_it_found_them(listen: str) -> None:
    """It blocks SIGHUP, SIGTERM and SIGINT until its loop takes them, with handlers of
    its own: a caller running it in-process (and what that caller starts later, which
    inherits the mask) gets both back, after an error or a stop. In a process of its own:
    main() sets up logging."""
    code = (
        "import os, signal, sys, threading\n"
        "from sockpool import cli\n"
        "sigs = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)\n"
        "now = lambda: (signal.pthread_sigmask(0, ()), [signal.getsignal(s) for s in sigs])\n"
        "before = now()\n"
        "stop = threading.Timer(2, os.kill, (os.getpid(), signal.SIGTERM))\n"
        "stop.start()\n"
        f"cli.main(['--listen={listen}', '--workers=1', 'sockpool.handlers:echo'])\n"
        "stop.cancel()\n"
        "sys.exit(now() != before)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
