"""`dispatchers = 2` under a real systemd: one MainPID that speaks for the service, two
dispatchers below it, and `systemctl status` showing their figures added up."""

from __future__ import annotations

import pytest

from conftest import MakeInstance
from sockpool.events import Event
from support import listen_on, request, wait_until

pytestmark = pytest.mark.system

ADDRESS = ("127.0.0.1", 7121)
CONFIG = 'handler = "sockpool.handlers:echo"\nworkers = 3\ndispatchers = 2\n'
SOCKET = listen_on(ADDRESS)


def test_status_reload_and_records_of_two_dispatchers(instance: MakeInstance) -> None:
    unit = instance("multi", CONFIG, socket=SOCKET)
    unit.dispatchers = 2
    unit.start_socket()
    for n in range(5):
        assert request(ADDRESS, f"{n}\n".encode()) == f"{n}\n".encode()
    main = unit.wait_running()
    assert len(unit.children({main})) == 2 and len(unit.workers()) == 3
    summed = "workers 3/3, busy 0, parked 0, served 5, refused 0, dispatchers 2/2"
    wait_until(lambda: unit.prop("StatusText") == summed, f"StatusText {summed!r}")
    status = unit.machine.systemctl("status", "--no-pager", unit.service, check=False)
    assert f'Status: "{summed}"' in status

    old = unit.workers()
    unit.machine.systemctl("reload", unit.service)  # ExecReload= signals the MainPID
    wait_until(lambda: unit.prop("SubState") == "running", "reloaded")
    wait_until(lambda: len(unit.workers()) == 3 and unit.workers().isdisjoint(old), "new workers")
    assert unit.main_pid() == main
    assert request(ADDRESS, b"after\n") == b"after\n"

    # `systemctl kill` signals every process of the unit: still one reload, not one of the
    # dispatchers' own and then the MainPID's. Its workers are the third generation.
    def ready() -> list[dict[str, str]]:
        return unit.journal(f"MESSAGE_ID={Event.READY.value}")

    old = unit.workers()
    unit.machine.systemctl("kill", "--signal=SIGHUP", unit.service)
    wait_until(lambda: len(ready()) == 3, "reloaded again")
    wait_until(lambda: len(unit.workers()) == 3 and unit.workers().isdisjoint(old), "new workers")
    started = unit.journal(f"MESSAGE_ID={Event.WORKER_STARTED.value}")
    serving = unit.workers()
    assert {e["GENERATION"] for e in started if int(e["WORKER_PID"]) in serving} == {"3"}

    # The lifecycle records come once, from the MainPID; worker records from the dispatchers.
    assert [e["MESSAGE"] for e in ready()] == [
        "ready: 3 workers in 2 dispatchers",
        "reloaded: 2 dispatchers serve",
        "reloaded: 2 dispatchers serve",
    ]
    assert {e["_PID"] for e in ready()} == {str(main)}
    assert {e["_PID"] for e in started} == {str(d) for d in unit.children({main})}
