"""What a worker needs to know, decided by the dispatcher before the fork."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .config import Config, Target
from .direct import Accepts


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to know, decided by the dispatcher before the fork."""

    generation: int
    handlers: Mapping[str, Target]  # listener name -> what serves it
    default_handler: Target | None
    capacity: int  # for async handlers; sync handlers take one connection at a time
    idle_timeout: float | None = None  # sync handlers' socket timeout; built-in handlers' idle
    timeout: float | None = None  # async: cancel a connection older than this
    park_after: float = 0.0  # wait this long for a keep-alive connection's next request
    access_log: bool = False  # web apps: a journal record per request
    http_limits: tuple[int, int, int, int] = (8190, 16384, 100, 16 << 20)  # see http11.py
    request_timeout: float = 0.0  # a request not read whole this long after it began
    max_carry: int = 16384  # a partial request parked may hold this many bytes (web apps)
    max_unsent: int = 0  # an answer's rest a slow client has not taken, left to the dispatcher
    max_unsent_total: int = 0  # all the answers' rests the dispatcher holds (0: no limit)
    max_buffered_body: int = 0  # a body still to come that the dispatcher waits for (TCP)
    max_buffered_body_total: int = 0  # all such bodies it waits for at once (0: no limit)
    handoff: Mapping[str, str | None] = field(default_factory=dict)  # listener -> its setting
    # `queue_ahead`: a sync worker takes connections queued behind the one it serves, and
    # starts the next the moment it is done, without waiting for the dispatcher to hear of
    # it; from 2 on, it reports what it finished a few at a time (completions.py).
    # A queued one stays in the channel, where the dispatcher reads it back for another
    # worker when this one is not heard from for a while (hotpath.rebalance): so it never
    # waits out a long request. Never with several dispatchers: a busy one would accept into
    # its queue a connection another one's idle worker could serve.
    queue_ahead: int = 0
    pull: bool = False  # an async worker's loop says when it waits for work (pull.py)
    # listener -> its sockets' (family, type, proto): a worker builds each connection's
    # socket object from these instead of asking the kernel (two of the three system calls
    # each: CPython still checks every descriptor with getsockname).
    sockets: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    log_level: str = "info"  # its generation's: a reload's workers log at the new one
    # `accept = workers`: the listening sockets a sync worker accepts from (direct.py):
    # all but PROXY listeners', whose headers the dispatcher reads and checks.
    accepts: Accepts = ()

    @classmethod
    def of(
        cls,
        generation: int,
        config: Config,
        listeners: Iterable[str],
        sockets: Mapping[str, tuple[int, int, int]] | None = None,
        listening: Accepts = (),
    ) -> WorkerSpec:
        """`listening`: every listening socket the workers serve, as `accepts` lists them."""
        listeners = list(listeners)
        workers_accept = config.accept == "workers"
        handlers = {name: t for name in listeners if (t := config.target_for(name))}
        return cls(
            generation=generation,
            handlers=handlers,
            default_handler=config.default_target(),
            capacity=config.capacity,
            idle_timeout=config.idle_timeout or None,
            timeout=config.timeout or None,
            park_after=config.park_after,
            access_log=config.access_log,
            http_limits=(
                config.max_request_line, config.max_header_bytes, config.max_headers,
                config.max_body,
            ),
            request_timeout=config.request_timeout,
            max_carry=config.max_carry,
            max_unsent=config.max_unsent,
            max_unsent_total=config.max_unsent_total,
            max_buffered_body=config.max_buffered_body,
            max_buffered_body_total=config.max_buffered_body_total,
            handoff={name: config.handoff_for(name) for name in listeners},
            queue_ahead=0 if config.shares_sockets else config.queue_ahead,
            pull=config.pull,
            sockets=sockets or {},
            log_level=config.log_level,
            accepts=tuple(
                one for one in listening if workers_accept and not config.proxy_protocol_for(one[0])
            ),
        )  # fmt: skip
