"""The stderr log format: one record, one line that starts with a timestamp; nothing a
peer names or sends can forge another."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from sockpool import records
from sockpool.log import _StderrFormatter, names

FORGED = "\n2026-01-01 00:00:00,000 sockpool[1] ERROR: forged"


def formatted(msg: str, *args: object, exc: bool = False, **fields: str) -> list[str]:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("bad peer" + FORGED)
        except RuntimeError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("t", logging.INFO, __file__, 1, msg, args or None, exc_info)
    record.__dict__.update(fields)
    return _StderrFormatter("%(levelname)s: %(message)s").format(record).split("\n")


def test_fields_are_escaped() -> None:
    peer = "/tmp/c" + FORGED + "\r\x1b[2K\u202e\udcff"
    [line] = formatted("served", PEER=peer, LISTENER="web")
    assert line == (
        "INFO: served [LISTENER=web PEER=/tmp/c\\n2026-01-01 00:00:00,000 sockpool[1] ERROR: "
        "forged\\r\\x1b[2K\\u202e\\udcff]"
    )


def test_message_arguments_are_escaped() -> None:
    [line] = formatted("peer %s said %r", "/tmp/c" + FORGED, "x\ny")
    assert line == (
        "INFO: peer /tmp/c\\n2026-01-01 00:00:00,000 sockpool[1] ERROR: forged said 'x\\\\ny'"
    )
    [line] = formatted("peer %(peer)s", {"peer": "a\nb"})
    assert line == "INFO: peer a\\nb"


def test_text_spanning_lines_is_indented_so_it_forges_nothing() -> None:
    """Our own multi-line text (a hang report's stacks) stays readable, indented."""
    lines = formatted("stacks:\n  File x\x1b[31m" + FORGED, CONN_ID="7")
    assert lines == [
        "INFO: stacks: [CONN_ID=7]",
        "    File x\\x1b[31m",
        "  2026-01-01 00:00:00,000 sockpool[1] ERROR: forged",
    ]


def test_tracebacks_stay_multi_line_and_indented() -> None:
    lines = formatted("handler raised", exc=True, PEER="p")
    assert lines[0] == "INFO: handler raised [PEER=p]"
    assert lines[1] == "  Traceback (most recent call last):"
    assert lines[-2:] == [
        "  RuntimeError: bad peer",
        "  2026-01-01 00:00:00,000 sockpool[1] ERROR: forged",
    ]
    assert all(ln.startswith("  ") for ln in lines[1:])


def test_journal_stream_counts_only_when_it_names_our_output() -> None:
    """systemd.exec(5): compare JOURNAL_STREAM's device and inode with the output's. A shell
    started by a user's service manager inherits the variable with its stderr on a
    terminal: its errors must stay there."""
    read, write = os.pipe()
    try:
        st = os.fstat(write)
        assert names(f"{st.st_dev}:{st.st_ino}", write)
        for other in (f"{st.st_dev}:{st.st_ino + 1}", "8:12345", "", None, "x:y", f"{st.st_ino}"):
            assert not names(other, write), other
        os.close(write)
        assert not names(f"{st.st_dev}:{st.st_ino}", write)  # no such descriptor
    finally:
        os.close(read)
        with contextlib.suppress(OSError):
            os.close(write)


def test_a_hang_reports_stacks_stay_on_lines_of_their_own(caplog) -> None:
    """records.write() puts them in the format: as an argument they were escaped into one
    line (README: the stacks stay readable, indented)."""
    stacks = 'Current thread 0x7f (most recent call first):\n  File "/srv/app.py", line 7 in h'
    with caplog.at_level(logging.INFO):
        records.write(records.problem("worker 9 hung: 100% busy"), stacks)
    (record,) = caplog.records
    lines = _StderrFormatter("%(levelname)s: %(message)s").format(record).split("\n")
    assert lines[0].startswith("WARNING: worker 9 hung: 100% busy")  # (and any fields)
    assert lines[1:] == [
        "  Current thread 0x7f (most recent call first):",
        '    File "/srv/app.py", line 7 in h',
    ]
