from __future__ import annotations

import resource
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import ACTIVATE, Service

# 1,000 concurrent clients need more descriptors than the usual soft limit of 1,024.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(_soft, 8192), _hard), _hard))


@pytest.fixture
def serve() -> Iterator[Callable[..., Service]]:
    """serve(args, listen=[...], ...) -> a started sockpool; stopped after the test."""
    if not Path(ACTIVATE).exists():
        pytest.skip("systemd-socket-activate is not installed (scripts/ensure-deps run)")
    services: list[Service] = []

    def start(args: list[str], listen: list[str], wait_ready: bool = True, **kw) -> Service:
        service = Service(Path(tempfile.gettempdir()), args, listen, **kw)
        services.append(service)
        return service.start(wait_ready)

    yield start
    for service in services:
        service.stop()
