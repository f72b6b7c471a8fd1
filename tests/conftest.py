"""What every test tree shares: that it tests this checkout's sockpool."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parent.parent


def editable_checkout() -> str | None:
    """The checkout that the environment's editable install of sockpool points at (a
    file:// URL, PEP 610), or None for any other install: a wheel, the Debian or RPM
    build's package, or none."""
    try:
        dist = metadata.distribution("sockpool")
    except metadata.PackageNotFoundError:
        return None
    try:
        url = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    if not isinstance(url, dict) or not (url.get("dir_info") or {}).get("editable"):
        return None
    return url.get("url")


def pytest_configure(config: pytest.Config) -> None:
    """The tests import sockpool, and the services they start run the environment's
    `sockpool` command: both find the package where its editable install points. From a
    second checkout using the first's virtualenv, they would test the first's code and
    pass for this one. Refused in one line instead."""
    found = editable_checkout()
    if found is not None and found != REPO.as_uri():
        there = unquote(urlparse(found).path) or found
        raise pytest.UsageError(
            f"this environment's sockpool is the checkout in {there}, not this one "
            f"({REPO}): these tests would test that code. Run `make venv` here first."
        )
