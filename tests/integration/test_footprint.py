"""What a pool of sync workers loads: nothing it does not use, since every module the
dispatcher imports before forking is start-up time, and every one a worker imports after
is memory of its own (issue 14: cold start, PSS per worker)."""

from __future__ import annotations

from harness import free_port, request


def test_a_sync_worker_and_its_dispatcher_never_load_asyncio(serve) -> None:
    # The worker inherits every module the dispatcher had loaded when it forked, so this
    # answer covers both.
    service = serve(["--workers=1", "loaded:heavy_modules"], listen=[f"127.0.0.1:{free_port()}"])
    assert request(service.address, b"which?\n") == b"loaded: \n"
