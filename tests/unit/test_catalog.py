"""The journal catalog explains every lifecycle MESSAGE_ID sockpool logs, and nothing else.

Parsed here the way journald's catalog compiler reads it (`-- ID` starts an entry, then
`Key: value` headers, a blank line, the body); tests/integration/test_catalog_journalctl.py
feeds the same file to journalctl itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from sockpool.events import Event

CATALOG = Path(__file__).resolve().parents[2] / "packaging" / "sockpool.catalog"
ENTRY_START = re.compile(r"^-- ([0-9a-fA-F]{32})(?: (\S+))?\s*$")
HEADER = re.compile(r"^([A-Za-z][A-Za-z0-9-]*): (.+)$")


@dataclass
class Entry:
    message_id: str
    line: int
    headers: dict[str, str]
    body: str


def parse_catalog(text: str) -> list[Entry]:
    entries: list[Entry] = []
    current: Entry | None = None
    in_headers = False
    for number, line in enumerate(text.splitlines(), 1):
        start = ENTRY_START.match(line)
        if start:
            assert start.group(2) is None, f"line {number}: a language-specific entry"
            current = Entry(start.group(1), number, {}, "")
            entries.append(current)
            in_headers = True
        elif current is None:
            assert not line or line.startswith("#"), f"line {number}: text before any entry"
        elif in_headers and line:
            header = HEADER.match(line)
            assert header, f"line {number}: not a 'Key: value' header: {line!r}"
            assert header.group(1) not in current.headers, f"line {number}: repeated header"
            current.headers[header.group(1)] = header.group(2)
        elif in_headers:
            in_headers = False
        else:
            current.body += line + "\n"
    return entries


@pytest.fixture(scope="module")
def entries() -> list[Entry]:
    return parse_catalog(CATALOG.read_text(encoding="utf-8"))


def test_every_event_has_exactly_one_entry(entries: list[Entry]) -> None:
    ids = [entry.message_id for entry in entries]
    for event in Event:
        count = ids.count(event.value)
        assert count == 1, f"{event.name} ({event.value}) is in the catalog {count} times"


def test_no_stale_entries(entries: list[Entry]) -> None:
    known = {event.value for event in Event}
    stale = [f"{e.message_id} (line {e.line})" for e in entries if e.message_id not in known]
    assert not stale, f"catalog entries for no sockpool Event: {stale}"


def test_ids_are_lowercase_as_logged(entries: list[Entry]) -> None:
    # journalctl matches MESSAGE_ID as text: an uppercase id in the catalog never matches.
    assert [e.message_id for e in entries] == [e.message_id.lower() for e in entries]


def test_each_entry_says_what_it_is_and_what_to_do(entries: list[Entry]) -> None:
    for entry in entries:
        where = f"entry {entry.message_id} (line {entry.line})"
        assert entry.headers.get("Subject", "").strip(), f"{where}: no Subject"
        assert entry.headers.get("Defined-By") == "sockpool", f"{where}: Defined-By is not sockpool"
        paragraphs = [p.strip() for p in entry.body.split("\n\n") if p.strip()]
        assert len(paragraphs) >= 2, f"{where}: needs an explanation and a 'What to do:' part"
        assert not paragraphs[0].startswith("What to do:"), f"{where}: no explanation"
        todo = [p for p in paragraphs if p.startswith("What to do:")]
        assert len(todo) == 1, f"{where}: needs exactly one paragraph starting 'What to do:'"
        assert len(todo[0]) > len("What to do:") + 3, f"{where}: empty 'What to do:'"


def test_substitutions_name_uppercase_fields(entries: list[Entry]) -> None:
    # journalctl -x replaces @FIELD@ by the record's field; journald keeps only uppercase names.
    for entry in entries:
        text = entry.headers.get("Subject", "") + "\n" + entry.body
        for field in re.findall(r"@([^@\s]+)@", text):
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", field), f"{entry.message_id}: @{field}@"


def test_parser_rejects_what_the_tests_rely_on() -> None:
    # The checks above are only as good as the parser: make sure it sees through a bad file.
    bad = "-- 36f08e4571ea4223b5c91b4b51c8bfd6\nSubject: x\nDefined-By: other\n\nbody\n"
    (entry,) = parse_catalog(bad)
    assert entry.headers == {"Subject": "x", "Defined-By": "other"}
    assert entry.body == "body\n"
    with pytest.raises(AssertionError):
        parse_catalog("-- 36f08e4571ea4223b5c91b4b51c8bfd6\nnot a header\n")
