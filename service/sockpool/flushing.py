"""Waiting for a client to take what an async connection has buffered for it.

A client that reads nothing must not hold a task, a slot and a descriptor for ever; one that
reads slowly but steadily must get its whole response, however long that takes. So a wait
ends when nothing has moved for `idle_timeout`, not after it in all.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where it runs: sync workers and the dispatcher never load it
    import asyncio


async def taken(
    wait: Awaitable[None], transport: asyncio.WriteTransport, idle: float | None
) -> bool:
    """Await `wait` (the writer's drain() or wait_closed()) while the client takes what is
    buffered; False, `wait` cancelled, once it has taken nothing for `idle` seconds (None:
    no limit). The caller then drops the connection (transport.abort()). Raises what
    `wait` raises (a reset)."""
    import asyncio

    task = asyncio.ensure_future(wait)
    left = transport.get_write_buffer_size()
    try:
        while True:
            done, _ = await asyncio.wait((task,), timeout=idle)
            if done:
                task.result()
                return True
            now = transport.get_write_buffer_size()
            if now >= left:
                task.cancel()
                return False
            left = now
    except BaseException:  # cancelled from outside: leave no task behind
        task.cancel()
        raise
