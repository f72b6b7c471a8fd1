"""Which processes `sockpool --reload=PID` takes for a sockpool, by their command lines."""

from __future__ import annotations

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
