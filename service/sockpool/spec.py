"""What a worker needs to know, decided by the dispatcher before the fork."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .config import Config


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to know, decided by the dispatcher before the fork."""

    generation: int
    handlers: Mapping[str, str]  # listener name -> "module:callable"
    default_handler: str | None
    capacity: int  # for async handlers; sync handlers take one connection at a time
    idle_timeout: float | None = None  # sync handlers' socket timeout; built-in handlers' idle
    timeout: float | None = None  # async: cancel a connection older than this
    park_after: float = 0.0  # wait this long for a keep-alive connection's next request

    @classmethod
    def of(cls, generation: int, config: Config, listeners: Iterable[str]) -> WorkerSpec:
        handlers = {name: h for name in listeners if (h := config.handler_for(name))}
        return cls(
            generation=generation,
            handlers=handlers,
            default_handler=config.handler,
            capacity=config.capacity,
            idle_timeout=config.idle_timeout or None,
            timeout=config.timeout or None,
            park_after=config.park_after,
        )
