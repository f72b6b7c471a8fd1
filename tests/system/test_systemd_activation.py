"""Socket activation and what `systemctl status` tells an admin."""

from __future__ import annotations

import re

import pytest

from conftest import ECHO_PORT, MakeInstance
from harness import custom_slices
from sockpool import cpuslice
from support import Unit, listen_on, request, wait_until

pytestmark = pytest.mark.system

ECHO = ("127.0.0.1", ECHO_PORT)


def test_first_connection_starts_the_service(echo: Unit) -> None:
    echo.start_socket()
    assert echo.machine.show(echo.socket, "ActiveState") == "active"
    assert echo.state() == "inactive", "the service must wait for a connection"

    assert request(ECHO, b"wake up\n") == b"wake up\n"
    echo.wait_state("active")  # READY=1 may reach systemd just after our answer
    assert echo.prop("TriggeredBy") == echo.socket


def test_start_returns_once_the_pool_is_ready(instance: MakeInstance) -> None:
    """Type=notify: `systemctl start` waits for READY=1, sent when every worker is up."""
    unit = instance(
        "slow",
        'handler = "sockpool_systemtest:fail"\nworkers = 2\n',
        service="[Service]\nEnvironment=SOCKPOOL_TEST_IMPORT_DELAY=1.5\n",
    )
    unit.machine.systemctl("start", unit.service)  # and its socket (Requires=)
    assert unit.state() == "active"
    assert unit.prop("StatusText").startswith("workers 2/2,"), "READY=1 comes with STATUS="
    assert len(unit.workers()) == 2


def test_status_shows_live_status_and_workers(echo: Unit) -> None:
    echo.start_socket()
    for n in range(5):
        assert request(ECHO, b"%d\n" % n) == b"%d\n" % n
    main_pid, workers = echo.wait_running(), echo.workers()
    status_line = re.compile(
        r'Status: "workers (\d+)/(\d+), busy \d+, parked \d+, served (\d+), refused \d+"'
    )

    def status() -> str | None:
        """The output once STATUS= (sent at most once a second) counts our connections."""
        out = echo.machine.systemctl("status", echo.service, check=False)
        found = status_line.search(out)
        return out if found and int(found[3]) >= 5 else None

    out = wait_until(status, "STATUS= counting 5 connections", timeout=15)
    found = status_line.search(out)
    assert found and found[1] == found[2] == str(len(workers)) != "0"
    cgroup = out[out.index("CGroup:") :]
    for pid in (main_pid, *workers):
        assert re.search(rf"[├└]─{pid} ", cgroup), f"process {pid} not in\n{cgroup}"


@pytest.mark.skipif(not custom_slices(), reason="no custom CPU slices before Linux 6.12")
def test_the_sandboxed_dispatcher_gets_its_short_cpu_slice(echo: Unit) -> None:
    """The shipped unit's SystemCallFilter= lets sched_setattr through (cpuslice.py); a
    worker forked after it, the replacement of a killed one, has the default slice."""
    echo.start_socket()
    assert request(ECHO, b"slice\n") == b"slice\n"
    main_pid = echo.wait_running()
    assert echo.slice_ns(main_pid) == cpuslice.SHORTEST_NS
    count, victim = len(echo.workers()), min(echo.workers())
    default = echo.slice_ns(1)  # the machine's systemd: a task that asked for nothing
    assert default != cpuslice.SHORTEST_NS
    echo.machine.run("kill", "-KILL", str(victim))
    # Listed as soon as it is forked, before it can reset its slice: wait for what it reads.
    wait_until(
        lambda: (
            victim not in (workers := echo.workers())
            and [echo.slice_ns(w) for w in workers] == [default] * count
        ),
        "a replacement worker with the default slice",
    )


KILLS = ("127.0.0.1", 7133)


def test_a_unit_that_kills_on_sched_setattr_still_serves(instance: MakeInstance) -> None:
    """An admin's unit that denies sched_setattr with systemd's default action, SIGSYS
    (no SystemCallErrorNumber=): the dispatcher makes the call in a child first
    (cpuslice.py), sees it killed, and serves with the kernel's slice."""
    unit = instance(
        "kills",
        'handler = "sockpool.handlers:echo"\nworkers = 1\n',
        socket=listen_on(KILLS),
        service="[Service]\nSystemCallFilter=~sched_setattr\nSystemCallErrorNumber=kill\n",
    )
    unit.start_socket()
    assert request(KILLS, b"one\n") == b"one\n"
    main_pid = unit.wait_running()
    assert request(KILLS, b"two\n") == b"two\n"
    assert unit.main_pid() == main_pid and unit.state() == "active"
    if custom_slices():  # (before 6.12 the slice is the same either way)
        assert unit.slice_ns(main_pid) == unit.slice_ns(1) != cpuslice.SHORTEST_NS
