"""reload, restart, stop and a hung dispatcher, as systemd drives them, under client load.

The listening socket belongs to systemd, so no client may notice any of these: each
connection that was in flight finishes, each new one waits in the backlog and is answered.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conftest import ECHO_PORT, MakeInstance
from sockpool.events import Event
from support import Held, Unit, journal, listen_on, request, steady_load, wait_until

pytestmark = pytest.mark.system

ECHO = ("127.0.0.1", ECHO_PORT)
WATCHDOG = ("127.0.0.1", 7110)
IN_FLIGHT = ("127.0.0.1", 7111)
HTTP_GET = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n"
UNIT_SUCCESS = "7ad2d189f7e94e70a38c781354912448"  # systemd's "Deactivated successfully."


def _serving(echo: Unit) -> tuple[int, str]:
    """Start the socket, let a first client start the service; its MainPID and InvocationID."""
    echo.start_socket()
    assert request(ECHO, b"start\n") == b"start\n"
    return echo.wait_running(), echo.prop("InvocationID")


def _across(echo: Unit, operation: Callable[[], None], keeps_idle: bool) -> int:
    """Run operation under load with connections in flight; return the MainPID after it.

    One connection answered before the operation then sits idle, waiting in the dispatcher;
    one arrives during the operation (while the old dispatcher drains). A reload keeps the
    idle one (the new generation answers it); a stop closes it cleanly, with no data lost.
    Fails if any is cut or left unanswered, or if any client of the load is refused, reset
    or answered wrongly.
    """
    with steady_load(ECHO) as load:
        load.progress()
        held = Held(ECHO)
        assert held.echo(b"before\n") == b"before\n"
        operation()
        late = Held(ECHO)
        late.send(b"late\n")
        if keeps_idle:
            assert held.echo(b"during\n") == b"during\n"
        assert held.finish() == b""  # an orderly close (a reset would raise)
        assert late.receive(5) == b"late\n"
        assert late.finish() == b""
        pid = echo.wait_running()
        load.progress()
    assert load.done == load.ok, load.summary()
    assert load.ok > 0
    return pid


def _stopping(echo: Unit, verb: str) -> Callable[[], None]:
    """systemctl VERB without waiting, then wait until the old dispatcher has begun to stop
    (its STOPPING record: with nothing in flight the stop is too quick to catch the unit
    in "deactivating")."""

    def operation() -> None:
        before = echo.main_pid()
        echo.machine.systemctl("--no-block", verb, echo.service)
        wait_until(
            lambda: echo.journal(f"MESSAGE_ID={Event.STOPPING.value}", f"_PID={before}"),
            f"the dispatcher {before} stopping",
        )

    return operation


def test_reload_under_load(echo: Unit) -> None:
    before, invocation = _serving(echo)

    after = _across(echo, lambda: echo.machine.systemctl("reload", echo.service), True)

    assert after == before, "a reload keeps the dispatcher"

    def generations() -> list[str]:
        ready = echo.journal(f"MESSAGE_ID={Event.READY.value}", f"_PID={before}")
        return [e["GENERATION"] for e in ready]

    wait_until(lambda: len(generations()) == 2, "READY of the reload's generation")
    assert generations() == ["1", "2"]
    assert echo.prop("InvocationID") == invocation


@pytest.mark.parametrize("verb", ["restart", "stop"])
def test_restart_and_stop_under_load(echo: Unit, verb: str) -> None:
    """Both drain what is in flight; after a stop, the waiting clients start it again."""
    before, invocation = _serving(echo)

    after = _across(echo, _stopping(echo, verb), False)

    assert after != before
    stopped = journal(echo.machine, f"MESSAGE_ID={UNIT_SUCCESS}", f"INVOCATION_ID={invocation}")
    assert stopped, "the old dispatcher exited 0 (no crash, no SIGKILL at TimeoutStopSec=)"
    stopping = echo.journal(f"MESSAGE_ID={Event.STOPPING.value}", f"_PID={before}")
    assert len(stopping) == 1


def test_stop_waits_for_the_request_in_flight(instance: MakeInstance) -> None:
    """Without new clients, a stop closes the idle connections at once and ends once the
    request in flight is answered: here one whose client sent half of it, then the rest."""
    unit = instance(
        "inflight",
        'handler = "sockpool.handlers:http_hello"\nworkers = 1\n',
        socket=listen_on(IN_FLIGHT),
    )
    unit.start_socket()
    idle, half = Held(IN_FLIGHT), Held(IN_FLIGHT)
    idle.send(HTTP_GET)
    assert idle.receive(len(HTTP_OK)) == HTTP_OK
    half.send(HTTP_GET[:10])
    wait_until(lambda: "parked 2," in unit.prop("StatusText"), "both connections parked")
    _stopping(unit, "stop")()
    assert idle.receive(1) == b""  # closed at once, cleanly
    half.send(HTTP_GET[10:])
    assert half.receive(len(HTTP_OK)) == HTTP_OK
    assert half.finish() == b""
    unit.wait_state("inactive")
    assert unit.prop("Result") == "success"
    assert unit.machine.show(unit.socket, "ActiveState") == "active", "still listening"


def test_watchdog_restarts_a_frozen_dispatcher(instance: MakeInstance) -> None:
    unit = instance(
        "wd",
        'handler = "sockpool.handlers:echo"\nworkers = 1\n',
        socket=listen_on(WATCHDOG),
        # Short, for a fast test: a missed ping after 3 s, SIGKILL 2 s after the SIGABRT.
        service="[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n",
    )
    unit.start_socket()
    assert request(WATCHDOG, b"start\n") == b"start\n"
    frozen = unit.wait_running()
    restarts = int(unit.prop("NRestarts"))

    unit.machine.run("kill", "-STOP", str(frozen))
    # Accepted by the kernel now, answered by the dispatcher systemd starts in its place.
    assert request(WATCHDOG, b"while frozen\n") == b"while frozen\n"

    assert unit.main_pid() != frozen
    assert int(unit.prop("NRestarts")) == restarts + 1
    assert any("Watchdog timeout" in e["MESSAGE"] for e in unit.journal())
    assert unit.machine.show(unit.socket, "ActiveState") == "active"
    wait_until(lambda: unit.state() == "active", "the new dispatcher ready")


def test_reload_with_a_broken_config_fails_and_keeps_serving(instance: MakeInstance) -> None:
    unit = instance("broken", 'handler = "sockpool.handlers:echo"\nworkers = 1\n')
    unit.start_socket()
    path = unit.machine.host_path("/run/sockpool/broken.sock")
    assert request(path, b"start\n") == b"start\n"
    pid = unit.wait_running()

    unit.machine.put_files({"/etc/sockpool/broken.toml": 'handler = "no.such.module:handle"\n'})
    done = unit.machine.run("systemctl", "reload", unit.service, check=False)

    assert done.returncode != 0, "the admin is told at once"
    assert "no.such.module" in "".join(e["MESSAGE"] for e in unit.journal())
    assert request(path, b"still here\n") == b"still here\n"
    assert unit.main_pid() == pid
    assert unit.state() == "active"
