"""What every test tree shares: that it tests this checkout's sockpool."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from harness import REPO


def editable_checkout() -> Path | None:
    """The checkout that the environment's editable install of sockpool points at (its
    file:// URL, PEP 610, as a path with symlinks resolved), or None for any other
    install: a wheel, the Debian or RPM build's package, or none."""
    try:
        dist = metadata.distribution("sockpool")
    except metadata.PackageNotFoundError:
        return None
    try:
        url = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    dir_info = url.get("dir_info") if isinstance(url, dict) else None
    if not isinstance(dir_info, dict) or not dir_info.get("editable"):
        return None
    where = urlparse(str(url.get("url", "")))
    return Path(unquote(where.path)).resolve() if where.scheme == "file" else None


def pytest_configure(config: pytest.Config) -> None:
    """The tests import sockpool, and the services they start run the environment's
    `sockpool` command: both find the package where its editable install points. From a
    second checkout using the first's virtualenv, they would test the first's code and
    pass for this one. Refused in one line instead."""
    found = editable_checkout()
    if found is not None and found != REPO:
        raise pytest.UsageError(
            f"this environment's sockpool is the checkout in {found}, not this one "
            f"({REPO}): these tests would test that code. Run `make venv` here first."
        )
