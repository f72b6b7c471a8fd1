"""One disposable systemd machine per session, with sockpool installed like a distro package.

Everything here skips, with the reason, only where no container can boot; once one boots,
a failure is a failure.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nspawn import Container, ContainerError, unavailable_reason
from support import REPO, Unit, listen_on

HERE = Path(__file__).parent
ECHO_PORT = 7107  # the shipped 7007 may be in use by `make run` on the shared network


def _reason() -> str | None:
    if reason := unavailable_reason():
        return reason
    probe = ["/usr/bin/python3", "-c", "import systemd.daemon"]
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        return "python3-systemd is not installed (scripts/ensure-deps system)"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report ends with the machine's journal: what the services said."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    machine = getattr(item, "funcargs", {}).get("machine")
    if report.when == "call" and report.failed and isinstance(machine, Container):
        tail = ["journalctl", "--no-pager", "-n", "80", "-o", "short-precise"]
        report.sections.append(("machine's journal", machine.run(*tail, check=False).stdout))


@pytest.fixture(scope="session")
def _session_machine() -> Iterator[Container | ContainerError]:
    """The session's machine, or why it could not be made ready.

    A session fixture that raises makes pytest repeat the whole error for each of its tests;
    `machine` below reports it in full once and names it in one line after that.
    """
    if reason := _reason():
        pytest.skip(f"no systemd container here: {reason}")
    container = Container(f"sockpool-test-{os.getpid()}")
    try:
        container.start()
        container.install_sockpool(REPO, extra_modules=[HERE / "sockpool_systemtest.py"])
    except ContainerError as exc:
        container.stop()
        yield exc
        return
    try:
        yield container
    finally:
        container.stop()


_boot_reported: list[ContainerError] = []


@pytest.fixture
def machine(_session_machine: Container | ContainerError) -> Container:
    if isinstance(error := _session_machine, ContainerError):
        if error in _boot_reported:
            pytest.fail("the session's machine did not boot (see the first error)", pytrace=False)
        _boot_reported.append(error)
        pytest.fail(f"the session's machine did not boot: {error}", pytrace=False)
    return _session_machine


@pytest.fixture
def echo(machine: Container) -> Iterator[Unit]:
    """The shipped echo units, moved to ECHO_PORT the way an admin would (a drop-in)."""
    unit = Unit(machine, "sockpool-echo")
    machine.drop_in(unit.socket, "port", listen_on(("127.0.0.1", ECHO_PORT)))
    unit.stop()
    yield unit
    unit.stop()


MakeInstance = Callable[..., Unit]


@pytest.fixture
def instance(machine: Container) -> Iterator[MakeInstance]:
    """make(name, config, socket=drop-in, service=drop-in, units={file: text}) -> Unit.

    Sets up sockpool@NAME as an admin would: /etc/sockpool/NAME.toml, drop-ins from
    `systemctl edit`, extra unit files in /etc/systemd/system. All removed afterwards.
    """
    made: list[tuple[Unit, list[str], list[str]]] = []

    def make(
        name: str,
        config: str,
        socket: str = "",
        service: str = "",
        units: dict[str, str] | None = None,
    ) -> Unit:
        unit = Unit(machine, f"sockpool@{name}")
        extra = dict(units or {})
        files = {f"/etc/sockpool/{name}.toml": config}
        files.update({f"/etc/systemd/system/{u}": text for u, text in extra.items()})
        machine.put_files(files)
        for unit_name, text in ((unit.socket, socket), (unit.service, service)):
            if text:
                machine.drop_in(unit_name, "test", text)
        machine.daemon_reload()
        dirs = [f"/etc/systemd/system/{u}.d" for u in (unit.socket, unit.service)]
        made.append((unit, list(extra), [*files, *dirs]))
        return unit

    yield make
    for unit, extra, paths in made:
        unit.stop()
        if extra:
            machine.systemctl("stop", *extra, check=False)
        machine.remove(*paths)
    machine.daemon_reload()
