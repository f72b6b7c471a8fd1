"""The man page names every option `sockpool --help` has, in its SYNOPSIS and with an entry
under OPTIONS, and no option that does not exist: it is what an admin reads first, and an
option added to the parser alone would otherwise go unmentioned there."""

from __future__ import annotations

import re
from pathlib import Path

from sockpool import cli

MAN = Path(__file__).resolve().parents[2] / "packaging" / "sockpool.1"
_OPTION = re.compile(r"\\-\\-([a-z][a-z\\-]*[a-z])")
_ENTRY = re.compile(r"^\.TP\n\.B[IR]? \\-\\-([a-z][a-z\\-]*[a-z])", re.MULTILINE)


def _section(text: str, name: str) -> str:
    return text.split(f"\n.SH {name}\n", 1)[1].split("\n.SH ", 1)[0]


def _unescape(option: str) -> str:
    return "--" + option.replace("\\-", "-")


def _flags() -> set[str]:
    return {
        flag
        for action in cli.parser()._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    }


def test_the_synopsis_names_every_option_and_only_those() -> None:
    synopsis = _section(MAN.read_text(), "SYNOPSIS")
    assert {_unescape(o) for o in _OPTION.findall(synopsis)} == _flags()


def test_every_option_has_one_entry_under_options() -> None:
    entries = [_unescape(o) for o in _ENTRY.findall(_section(MAN.read_text(), "OPTIONS"))]
    assert sorted(entries) == sorted(_flags())
