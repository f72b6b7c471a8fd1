"""The shipped units load cleanly and keep the sandbox a reviewer can score."""

from __future__ import annotations

import re

import pytest

from nspawn import UNIT_DIR, Container
from support import REPO

pytestmark = pytest.mark.system

UNITS = REPO / "units"
SUFFIXES = (".socket", ".service")
SERVICES = ("sockpool-echo.service", "sockpool@.service")
MAX_EXPOSURE = 1.0  # systemd-analyze's scale is 0 (safe) to 10 (exposed)


def test_units_verify(machine: Container) -> None:
    """systemd-analyze verify finds nothing to complain about in any shipped unit."""
    units = sorted(f"{UNIT_DIR}/{u.name}" for u in UNITS.iterdir() if u.suffix in SUFFIXES)
    done = machine.run("systemd-analyze", "verify", *units, check=False)
    assert done.returncode == 0, done.stderr
    complaints = [line for line in done.stderr.splitlines() if "sockpool" in line]
    assert complaints == []


@pytest.mark.parametrize("service", SERVICES)
def test_service_exposure(machine: Container, service: str) -> None:
    """Each service scores <= 1.0 ("SAFE") offline, as a packager or reviewer would check."""
    done = machine.run(
        "systemd-analyze",
        "security",
        "--offline=true",
        "--threshold=10",
        f"{UNIT_DIR}/{service}",
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert exposure, done.stdout
    assert float(exposure[1]) <= MAX_EXPOSURE, done.stdout


def _sandbox(unit: str) -> list[str]:
    """The sandbox block of a service file: from '# Sandbox.' to the end of [Service]."""
    lines = (UNITS / unit).read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("# Sandbox.")))
    end = lines.index("[Install]")
    return [line for line in lines[start:end] if line and not line.startswith("#")]


def test_services_share_one_sandbox() -> None:
    """Unit files cannot include each other: the two copies of the sandbox must not drift."""
    assert _sandbox(SERVICES[0]) == _sandbox(SERVICES[1])
    assert "DynamicUser=yes" in _sandbox(SERVICES[0])
