"""What the unit tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness import open_fds


@pytest.fixture
def no_descriptor_leaks() -> Iterator[None]:
    """Fails a test that leaves a descriptor open (modules opt in with usefixtures)."""
    before = open_fds()
    yield
    assert open_fds() == before, "descriptors leaked"
