from __future__ import annotations

import resource
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import ACTIVATE, SOCKPOOL, Service, disk_path  # noqa: F401 (a fixture)

HERE = Path(__file__).resolve().parent  # apps.py and broken_app.py: the tests' handlers

# 1,000 concurrent clients need more descriptors than the usual soft limit of 1,024.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(_soft, 8192), _hard), _hard))


@pytest.fixture(scope="session", autouse=True)
def _scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test's temporary directories (services' logs and notify sockets, the web
    tests' files) under this run's pytest directory: pytest keeps the last three runs', for
    a failure's logs, and removes older ones, where /tmp would gather them run after run.
    Short still, for AF_UNIX's 107 bytes (/tmp/pytest-of-USER/pytest-N/t/sockpool-X/notify)."""
    before, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("t", False))
    yield
    tempfile.tempdir = before


def _serving() -> Iterator[Callable[..., Service]]:
    """serve(args, listen=[...], ...) -> a started sockpool; stopped after the test (or
    module, for serve_module).

    wait_ready=False does not wait for READY=1; wrapper (e.g. ["env", "LISTEN_PID=1"]) runs
    between systemd-socket-activate and sockpool; env adds to sockpool's environment.
    """
    if not Path(ACTIVATE).exists():
        pytest.skip("systemd-socket-activate is not installed (scripts/ensure-deps run)")
    services: list[Service] = []

    def start(
        args: list[str],
        listen: list[str],
        wait_ready: bool = True,
        wrapper: list[str] | None = None,
        env: dict[str, str] | None = None,
        **kw,
    ) -> Service:
        tmp = Path(tempfile.mkdtemp(prefix="sockpool-"))  # short: AF_UNIX paths take 107 bytes
        service = Service(
            [*(wrapper or []), SOCKPOOL, "--log-target=stderr", *args],
            listen,
            log=tmp / "sockpool.log",
            notify=tmp / "notify",
            env={"PYTHONPATH": str(HERE), **(env or {})},
            **kw,
        )
        services.append(service)
        return service.start().activate(wait_ready)

    yield start
    for service in services:
        service.stop()


@pytest.fixture
def serve() -> Iterator[Callable[..., Service]]:
    yield from _serving()


@pytest.fixture(scope="module")
def serve_module() -> Iterator[Callable[..., Service]]:
    """serve, for services a module's tests share."""
    yield from _serving()


@pytest.fixture(params=["dispatcher", "workers"], ids=["accept=dispatcher", "accept=workers"])
def either(request: pytest.FixtureRequest, serve) -> Callable[..., Service]:
    """serve, once as each `accept` setting has it: the dispatcher accepts, or idle sync
    workers do (direct.py). What a test of it asserts holds either way; `either.accept`
    says which it is."""

    def start(args: list[str], *more, **kw) -> Service:
        return serve([*args, f"--accept={request.param}"], *more, **kw)

    start.accept = request.param  # type: ignore[attr-defined]  # for a test that asks
    return start
