"""What an admin finds in the journal: attributed, structured, filterable records."""

from __future__ import annotations

import socket
import time

import pytest

from conftest import MakeInstance
from sockpool.events import Event
from support import connect, journal, listen_on, request, steady_load, wait_until

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


def test_a_bad_configurations_line_is_under_the_units_identifier(instance: MakeInstance) -> None:
    """It goes to stderr, before the journal records begin: `journalctl -t sockpool@NAME`,
    which finds the records, finds it too (it was under the program's name)."""
    unit = instance("badconf", "workers = [\n")  # not TOML
    unit.machine.systemctl("start", unit.service, check=False)
    unit.wait_state("failed")
    assert unit.prop("ExecMainStatus") == "78"

    def said() -> list[dict[str, str]]:
        found = journal(unit.machine, "-t", unit.name)
        return [e for e in found if e.get("MESSAGE", "").startswith("sockpool: config ")]

    wait_until(said, "the configuration's line under the unit's identifier", timeout=15)


STALL = ("127.0.0.1", 7132)
# Fills journald's socket queue from inside the machine: datagrams until the kernel refuses
# one (net.unix.max_dgram_qlen is 10 in the container, 512 on a normal host). Prints the count.
FILL = """
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect("/run/systemd/journal/socket")
s.setblocking(False)
n = 0
try:
    while n < 100000:
        s.send(b"MESSAGE=sockpool test: filling the stalled journal\\nPRIORITY=7\\n")
        n += 1
except BlockingIOError:
    print(n)
"""


def test_a_stalled_journald_neither_stops_accepting_nor_starves_the_watchdog(
    instance: MakeInstance,
) -> None:
    """journald frozen (SIGSTOP) with its queue full, for longer than WatchdogSec=, while
    the service reloads and serves: nothing refused, the dispatcher never killed, and its
    records reach the journal once journald runs again."""
    unit = instance(
        "stall",
        'handler = "sockpool.handlers:echo"\nworkers = 2\n',
        socket=listen_on(STALL),
        service="[Service]\nWatchdogSec=3s\n",
    )
    machine = unit.machine
    unit.start_socket()
    assert request(STALL, b"first\n") == b"first\n"
    pid = unit.wait_running()
    journald = int(machine.show("systemd-journald.service", "MainPID"))
    machine.run("kill", "-STOP", str(journald))
    try:
        filled = int(machine.run("python3", "-c", FILL).stdout)
        assert filled > 0, "the journal's queue was not full"
        with steady_load(STALL, seconds=60) as load:
            load.progress()
            # Every reload makes records: RELOADING, the new workers, READY, the old exits.
            old = unit.workers()
            machine.run("kill", "-HUP", str(pid))
            wait_until(lambda: unit.workers().isdisjoint(old), "the reload's new workers", 20)
            started = time.monotonic()
            while time.monotonic() - started < 8:  # well past WatchdogSec=3s
                load.progress(20)
            assert unit.main_pid() == pid, "killed while journald was stalled"
        assert load.done == load.ok, load.summary()
    finally:
        machine.run("kill", "-CONT", str(journald))
    assert unit.prop("NRestarts") == "0" and unit.main_pid() == pid

    def reloaded() -> list[dict[str, str]]:
        ready = unit.journal(f"MESSAGE_ID={Event.READY.value}")
        return [e for e in ready if e["MESSAGE"].startswith("reloaded: generation 2")]

    wait_until(reloaded, "the reload's records, once journald runs again", timeout=30)
