"""The system tests act on a container only once they know it is the container.

In a chroot, `nsenter -t LEADER -a` once landed in the host's namespaces, where the fixtures
would have installed files and run systemctl. Container.run now refuses any place whose root
lacks the container's token. These tests point a Container at this very process (the host's
namespaces) and check that nothing runs there; they need no container, so they run (and
prove the refusal) wherever the system tests themselves are skipped.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nspawn import Container, NotTheContainer

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nsenter") is None,
    reason="needs root and nsenter (entering namespaces, even one's own)",
)


def pointed_at_the_host() -> Container:
    box = Container("sockpool-guard-test")
    box._leader = os.getpid()  # as if the leader found were in the host's namespaces
    return box


@pytest.mark.parametrize("check", [True, False])
def test_refuses_to_run_anything_outside_the_container(tmp_path: Path, check: bool) -> None:
    witness = tmp_path / "ran"  # what the command would leave behind had it run
    with pytest.raises(NotTheContainer, match="lacks its token"):
        pointed_at_the_host().run("touch", str(witness), check=check)
    assert not witness.exists()


def test_refuses_file_and_unit_actions_outside_the_container(tmp_path: Path) -> None:
    box = pointed_at_the_host()
    target = tmp_path / "unit.service"
    with pytest.raises(NotTheContainer):
        box.put_files({str(target): "[Service]\nExecStart=/bin/true\n"})
    with pytest.raises(NotTheContainer):
        box.remove(str(tmp_path))
    assert not target.exists() and tmp_path.exists()
