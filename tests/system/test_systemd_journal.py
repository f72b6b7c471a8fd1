"""What an admin finds in the journal: attributed, structured, filterable records."""

from __future__ import annotations

import socket

import pytest

from conftest import MakeInstance
from sockpool.events import Event
from support import connect, journal, wait_until

pytestmark = pytest.mark.system

CONNECTION_FIELDS = ("CONN_ID", "LISTENER", "PEER", "WORKER_PID", "GENERATION")


def test_journal_has_structured_records_and_tracebacks(instance: MakeInstance) -> None:
    """A failing handler, reached over the instance's default AF_UNIX socket."""
    unit = instance("boom", 'handler = "sockpool_systemtest:fail"\nworkers = 2\n')
    unit.start_socket()
    path = unit.machine.host_path("/run/sockpool/boom.sock")
    with connect(path) as sock:
        sock.sendall(b"please fail\n")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b"", "the failed connection is closed, not left hanging"
    main_pid, workers = unit.main_pid(), unit.workers()

    def failures() -> list[dict[str, str]]:
        return unit.journal(f"MESSAGE_ID={Event.HANDLER_ERROR.value}")

    [error] = wait_until(failures, "the handler's exception in the journal", timeout=15)
    entries = unit.journal()

    # The service's own records (not systemd's about it, nor its exec helper's "(sockpool)").
    ours = [e for e in entries if e.get("_COMM") == "python3"]
    assert {e["_SYSTEMD_UNIT"] for e in ours} == {unit.service}
    assert {e["SYSLOG_IDENTIFIER"] for e in ours} == {unit.name}
    pids = {int(e["_PID"]) for e in ours}
    assert main_pid in pids, "the dispatcher logs"
    assert pids - {main_pid}, "workers log too"
    assert pids <= {main_pid, *workers}
    ids = {e.get("MESSAGE_ID") for e in ours}
    for event in (Event.STARTED, Event.WORKER_STARTED, Event.READY, Event.HANDLER_ERROR):
        assert event.value in ids, event

    assert error["PRIORITY"] == "3"
    assert int(error["_PID"]) in workers
    assert error["WORKER_PID"] == error["_PID"]
    assert error["LISTENER"] == "boom"  # FileDescriptorName=%i
    assert error["GENERATION"] == "1"
    text = error["MESSAGE"] + error.get("EXCEPTION_TEXT", "")
    assert "Traceback (most recent call last)" in text
    assert "DeliberateFailure: failing on purpose after 12 bytes on boom" in text

    # What the README tells admins to type: everything about one connection (CONN_ID
    # counts from 1 in each run of the service, hence the invocation).
    invocation = error["_SYSTEMD_INVOCATION_ID"]
    assert invocation == unit.prop("InvocationID")
    by_conn = journal(
        unit.machine, f"CONN_ID={error['CONN_ID']}", f"_SYSTEMD_INVOCATION_ID={invocation}"
    )
    assert error["__CURSOR"] in {e["__CURSOR"] for e in by_conn}
    assert all(e["CONN_ID"] == error["CONN_ID"] for e in by_conn)
    for name in CONNECTION_FIELDS:
        assert error.get(name), name
