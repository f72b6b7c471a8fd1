"""journalctl itself compiles packaging/sockpool.catalog and finds every sockpool MESSAGE_ID.

`journalctl --root=DIR --update-catalog` reads DIR/usr/lib/systemd/catalog/*.catalog exactly as
the systemd package's trigger does after the .deb installs the file; no running systemd needed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sockpool.events import Event

CATALOG = Path(__file__).resolve().parents[2] / "packaging" / "sockpool.catalog"

pytestmark = pytest.mark.skipif(shutil.which("journalctl") is None, reason="needs journalctl")


def journalctl(root: Path, *args: str) -> str:
    return subprocess.run(
        ["journalctl", f"--root={root}", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("catalog-root")
    catalog_dir = root / "usr/lib/systemd/catalog"
    catalog_dir.mkdir(parents=True)
    (root / "var/lib/systemd/catalog").mkdir(parents=True)
    shutil.copy(CATALOG, catalog_dir / "sockpool.catalog")
    journalctl(root, "--update-catalog")
    return root


def test_journalctl_lists_every_event_once(root: Path) -> None:
    listed = journalctl(root, "--list-catalog").splitlines()
    ids = [line.split()[0] for line in listed]
    assert sorted(ids) == sorted(event.value for event in Event)
    for line in listed:
        # "<id> sockpool: <subject>": the Defined-By header reached the database.
        assert line.split()[1] == "sockpool:", line


def test_journalctl_shows_explanation_and_advice(root: Path) -> None:
    for event in Event:
        text = journalctl(root, "--dump-catalog", event.value)
        assert text.startswith(f"-- {event.value}\n"), text
        assert "\nSubject: " in text
        assert "\nWhat to do: " in text, f"{event.name}: journalctl shows no 'What to do:'"
