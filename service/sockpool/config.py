"""Configuration: a TOML file and command-line flags with the same keys; flags win.

Pure validation with one error per problem, naming the key, so a bad value becomes a
one-line message and exit code 78 (EX_CONFIG) instead of a traceback at 3 a.m.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from .completions import MAX_QUEUE_AHEAD
from .errors import QUOTE_LIMIT, ConfigError, cut, quote
from .listeners import MAX_LISTEN_FDS, clashes, parse_address
from .proxyproto import DEFAULT_ALLOW, VERSIONS, parse_network

LOG_LEVELS = ("debug", "info", "warning", "error")
# fullmatch, never `$`: it matches before a last newline, which would split log lines.
_HANDLER_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
# What systemd's %N can be (a unit's name, escaped: systemd-escape's \x20), and no more:
# the name goes into every log line's prefix.
_NAME_RE = re.compile(r"[\w.@:\\-]{1,255}")
MAX_FILE_SIZE = 1024 * 1024  # bytes: a real config is a few hundred
# No more sockets can be passed (LISTEN_FDS), so more tables could never all be used.
MAX_LISTENER_TABLES = MAX_LISTEN_FDS
MAX_START_TIMEOUT = 86400.0
# Any other duration: a century, where socket timeouts (a time_t) end near 292 years and
# infinity would pass a check but break every connection; 0 already means never.
MAX_SECONDS = 100 * 365 * 86400.0
# What a worker waits for its peer in one poll(): milliseconds in a C int (24.9 days). A
# longer park_after, idle_timeout or request_timeout (socket timeouts) would fail in every
# worker that waited for it.
MAX_WAIT = float((2**31 - 1) // 1000)
HANDOFFS = ("ready", "immediate")
ACCEPTERS = ("dispatcher", "workers")  # who accepts new connections (direct.py)
MAX_CARRY = 65536  # wire.MAX_CARRY: what one PARK message can hold
# Each worker is a process of its own (7 MiB at rest): more than this is a typo, and would
# fork until the kernel or TasksMax= refused, not a pool.
MAX_WORKERS = 4096


def default_workers() -> int:
    """The CPUs this process may run on (honours CPUAffinity= and cgroup cpusets)."""
    return min(len(os.sched_getaffinity(0)) or 1, MAX_WORKERS)


AUTO = "auto"  # dispatchers = "auto": as many as the cores call for (dispatcher_count)
# One dispatcher keeps about this many cores of workers busy before it becomes the limit:
# with workers that answer at once it spends some 45 us of CPU per connection (issue 14's
# profile) against roughly 100-150 us for the worker and the client, so about 3-4 cores.
# `auto` starts one dispatcher per this many cores. bench/ measures the one-dispatcher
# ceiling; change the figure here when it says otherwise.
CORES_PER_DISPATCHER = 4
# What a reload cannot change: the sockets --listen bound, the journal's SYSLOG_IDENTIFIER.
RESTART_ONLY = ("listen", "name")


KINDS = ("handler", "wsgi", "asgi")  # what serves a listener; one per scope
# What a [listeners.NAME] table is: served by the workers (the default), or answered by the
# dispatcher itself with HAProxy's agent-check line (agent.py).
LISTENER_KINDS = ("serve", "haproxy-agent")


class Target(NamedTuple):
    """What serves a listener: a sockpool handler, a WSGI app or an ASGI app."""

    kind: str  # one of KINDS
    spec: str  # module:attribute

    def __str__(self) -> str:
        return f"{'handler' if self.kind == 'handler' else self.kind + ' app'} {quote(self.spec)}"


def _target_of(scope: Any) -> Target | None:
    for kind in KINDS:
        if spec := getattr(scope, kind):
            return Target(kind, spec)
    return None


@dataclass(frozen=True)
class ListenerConfig:
    handler: str | None = None
    handoff: str | None = None  # None: as the handler declares (client_speaks_first)
    wsgi: str | None = None
    asgi: str | None = None
    proxy_protocol: str | None = None  # "v1", "v2" or "any"; None: no PROXY header (off)
    proxy_allow: tuple[str, ...] | None = None  # None: the top level's
    kind: str | None = None  # one of LISTENER_KINDS; None: "serve"


@dataclass(frozen=True)
class Config:
    handler: str | None = None
    workers: int = field(default_factory=default_workers)
    dispatchers: int | str = 1  # dispatcher processes sharing the sockets, or AUTO
    graceful_timeout: float = 30.0
    capacity: int = 100
    name: str = "sockpool"
    listen: tuple[str, ...] = ()
    log_level: str = "info"
    listeners: Mapping[str, ListenerConfig] = field(default_factory=dict)
    # Resilience; 0 turns a limit off.
    timeout: float = 0.0  # per connection: a worker holding one longer is hung
    idle_timeout: float = 60.0  # built-in handlers, and sync handlers' socket timeout
    max_requests: int = 0  # recycle a worker after this many connections...
    max_requests_jitter: int | None = None  # ...plus up to this many (default a tenth)
    max_memory: int = 0  # MiB resident: recycle a worker above it
    max_connections: int = 0  # in flight at once; more are refused, not queued
    max_connections_per_source: int = 0  # in flight from one IP address
    # One of N dispatchers (supervisor.share()) holds a share of max_connections: this is
    # the whole, which HAProxy's agent-check announces. 0 in the service's own.
    whole_max_connections: int = 0
    overload_reply: str = ""  # one line sent to a refused connection before it is closed
    start_timeout: float = 30.0  # seconds from fork to READY before a start counts as failed
    # Ready-work dispatch (giveback.py, parking.py).
    handoff: str | None = None  # "ready" or "immediate"; None: as each handler declares
    first_byte_timeout: float = 10.0  # a new connection silent this long is closed
    request_timeout: float = 30.0  # a request not read whole this long after it began
    park_after: float = 0.002  # a worker waits this long for the next request, then parks
    queue_ahead: int = 1  # connections a sync worker holds queued behind the one it serves
    pull: bool = False  # async workers take a connection only while their loop waits (pull.py)
    accept: str = "dispatcher"  # or "workers": idle sync workers accept (direct.py)
    max_carry: int = 16384  # bytes of a partial request the dispatcher holds per connection
    max_unsent: int = 1 << 20  # bytes of an answer a sync worker may leave it to send (unsent.py)
    max_unsent_total: int = 64 << 20  # and of all such answers a dispatcher holds at once
    max_buffered_body: int = 1 << 20  # bytes of a request body still to come it waits for
    max_buffered_body_total: int = 64 << 20  # and of all such bodies a dispatcher waits for
    # Web applications (http11.py, wsgi.py, asgi.py).
    wsgi: str | None = None  # module:app, served on sync workers
    asgi: str | None = None  # module:app, served on async workers
    access_log: bool = False  # one journal record per request: off, it is on the hot path
    max_request_line: int = 8190  # bytes; longer: 414
    max_header_bytes: int = 16384  # bytes of the whole head; more: 431
    max_headers: int = 100  # header fields; more: 431
    max_body: int = 16 * 1024 * 1024  # bytes of a request body; more: 413 (0: no limit)
    # PROXY protocol (proxyproto.py), turned on per listener by its proxy_protocol.
    proxy_allow: tuple[str, ...] = DEFAULT_ALLOW  # peers that may send a PROXY header
    proxy_timeout: float = 3.0  # the header must be whole this long after the accept
    path: str | None = None
    # Which read of the file this is (the main process of N counts its reloads): read again,
    # the same file may name new code, so it is another configuration, with another digest.
    loaded: int = 0

    @property
    def digest(self) -> str:
        """Which configuration this is, the same in every process that built it from the
        same values: the main process of N tells by it what each dispatcher serves."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]

    @property
    def shares_sockets(self) -> bool:
        """This dispatcher is one of several accepting from the same sockets (supervisor.py
        gives each its share with `dispatchers` set to their count)."""
        return self.dispatchers not in (1, AUTO)

    def target_for(self, listener: str) -> Target | None:
        """What serves `listener`: its own table's handler, wsgi or asgi, else the top
        level's."""
        own = self.listeners.get(listener)
        if self.is_agent(listener):
            return None
        return (own and _target_of(own)) or self.default_target()

    def is_agent(self, listener: str) -> bool:
        """The dispatcher answers this listener's connections itself (HAProxy's agent-check)."""
        own = self.listeners.get(listener)
        return bool(own) and own.kind == "haproxy-agent"

    def default_target(self) -> Target | None:
        """What serves a listener without a table of its own."""
        return _target_of(self)

    def handoff_for(self, listener: str) -> str | None:
        own = self.listeners.get(listener)
        return own.handoff if own and own.handoff else self.handoff

    def proxy_protocol_for(self, listener: str) -> str | None:
        """The PROXY header versions `listener` takes; None: it takes none (only a listener's
        own table turns it on: a header is never guessed at)."""
        own = self.listeners.get(listener)
        return own.proxy_protocol if own else None

    def proxy_allow_for(self, listener: str) -> tuple[str, ...]:
        """The networks whose peers may send `listener` a PROXY header (proxyproto.Trusted)."""
        own = self.listeners.get(listener)
        return own.proxy_allow if own and own.proxy_allow is not None else self.proxy_allow


# key -> (kind, validator). The kind tells the CLI how to read a flag's text.
def _workers(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"expected an integer from 1 to {MAX_WORKERS}, got {quote(value)}")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer, got {quote(value)}")
    return value


def _dispatchers(value: Any) -> int | str:
    if value == AUTO:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer or {AUTO!r}, got {quote(value)}")
    return value


def _queue_ahead(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUEUE_AHEAD:
        raise ValueError(f"expected an integer from 0 to {MAX_QUEUE_AHEAD}, got {quote(value)}")
    return value


def _non_negative_number(value: Any, most: float = MAX_SECONDS) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= most:
        days = f" ({most / 86400:.1f} days)" if most < MAX_SECONDS else ""
        raise ValueError(
            f"expected a number of seconds >= 0, at most {most:.0f}{days}, got {quote(value)}"
        )
    return float(value)


def _wait(value: Any) -> float:
    return _non_negative_number(value, MAX_WAIT)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {quote(value)}")
    return value


def _seconds_above_zero(value: Any) -> float:
    """Not 0 for start_timeout: a start that can never time out is what hangs a reload (and
    --check) forever; nor for proxy_timeout: a connection is only ever handed to a worker
    with its whole PROXY header, so one that never sends it would stay in the dispatcher."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_START_TIMEOUT
    ):
        raise ValueError(
            f"expected a number of seconds above 0, at most {MAX_START_TIMEOUT:g}, "
            f"got {quote(value)}"
        )
    return float(value)


def _proxy_protocol(value: Any) -> str:
    if not isinstance(value, str) or value not in VERSIONS:
        raise ValueError(f"expected one of {', '.join(VERSIONS)}, got {quote(value)}")
    return value


def _networks(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of addresses or networks, got {quote(value)}")
    for text in value:
        parse_network(text)  # raises ValueError naming the bad one
    return tuple(value)


def _reply(value: Any) -> str:
    if not isinstance(value, str) or "\n" in value.rstrip("\n") or len(value) > 1024:
        raise ValueError("expected one line of at most 1024 characters")
    try:
        value.encode()  # as admission.py sends it
    except UnicodeEncodeError:
        raise ValueError(f"expected UTF-8 text, got {quote(value)}") from None
    return value


def _handoff(value: Any) -> str:
    if not isinstance(value, str) or value not in HANDOFFS:
        raise ValueError(f"expected one of {', '.join(HANDOFFS)}, got {quote(value)}")
    return value


def _accept(value: Any) -> str:
    if not isinstance(value, str) or value not in ACCEPTERS:
        raise ValueError(f"expected one of {', '.join(ACCEPTERS)}, got {quote(value)}")
    return value


def _listener_kind(value: Any) -> str:
    if not isinstance(value, str) or value not in LISTENER_KINDS:
        raise ValueError(f"expected one of {', '.join(LISTENER_KINDS)}, got {quote(value)}")
    return value


def _bytes_up_to(limit: int) -> Callable[[Any], int]:
    """A validator of a number of bytes from 0 to `limit`."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise ValueError(f"expected bytes from 0 to {limit}, got {quote(value)}")
        return value

    return check


MAX_BUFFERED_BODY = 1 << 30  # SO_RCVLOWAT is an int; the kernel caps it far lower anyway
_carry = _bytes_up_to(MAX_CARRY)
_buffered = _bytes_up_to(MAX_BUFFERED_BODY)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {quote(value)}")
    return value


def _bytes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a number of bytes >= 0, got {quote(value)}")
    return value


def _handler(value: Any) -> str:
    if not isinstance(value, str) or not _HANDLER_RE.fullmatch(value):
        raise ValueError(f"expected 'module:callable', got {quote(value)}")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"expected a name of up to 255 letters, digits and ._@:-\\, got {quote(value)}"
        )
    return value


def _log_level(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {quote(value)}")
    return value.lower()


def _addresses(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"expected a list of addresses, got {quote(value)}")
    addresses = [parse_address(text) for text in value]  # a ValueError names the bad one
    # The second bind would fail: say why before any socket exists.
    if clash := clashes(addresses):
        earlier, later, wide = clash
        first, second = quote(value[earlier]), quote(value[later])
        if wide is None:
            raise ValueError(f"{second}: the same address as {first}")
        if wide == earlier:
            raise ValueError(f"{second}: {first} has that port on every address already")
        raise ValueError(f"{second}: would take the port of {first} on every address")
    return tuple(value)


def _listeners(value: Any) -> dict[str, ListenerConfig]:
    if not isinstance(value, dict):
        raise ValueError("expected a table of [listeners.NAME] tables")
    if len(value) > MAX_LISTENER_TABLES:
        raise ValueError(
            f"{len(value):,} [listeners.NAME] tables, at most {MAX_LISTENER_TABLES} "
            "(as many as sockets can be passed)"
        )
    result = {}
    for name, table in value.items():
        where = cut(name, QUOTE_LIMIT)
        if not isinstance(table, dict):
            raise ValueError(f"{where}: expected a table, got {quote(table)}")
        unknown = sorted(set(table) - set(_LISTENER_KEYS))
        if unknown:
            raise ValueError(f"{where}.{cut(unknown[0], QUOTE_LIMIT)}: unknown key")
        values = {}
        for key, check in _LISTENER_KEYS.items():
            try:
                values[key] = check(table[key]) if key in table else None
            except ValueError as exc:
                raise ValueError(f"{where}.{key}: {exc}") from None
        if len([k for k in KINDS if values[k]]) > 1:
            raise ValueError(f"{where}: give one of handler, wsgi and asgi")
        # The dispatcher answers an agent listener itself: there is nothing to serve it with.
        given = [k for k, v in values.items() if v is not None and k != "kind"]
        if values["kind"] == "haproxy-agent" and given:
            raise ValueError(f"{where}.{given[0]}: a haproxy-agent listener takes no {given[0]}")
        result[name] = ListenerConfig(**values)
    return result


Validator = Callable[[Any], Any]
_LISTENER_KEYS: dict[str, Validator] = {
    "handler": _handler,
    "handoff": _handoff,
    "wsgi": _handler,
    "asgi": _handler,
    "proxy_protocol": _proxy_protocol,
    "proxy_allow": _networks,
    "kind": _listener_kind,
}
_KEYS: dict[str, tuple[type, Validator]] = {
    "handler": (str, _handler),
    "workers": (int, _workers),
    "dispatchers": (int, _dispatchers),
    "graceful_timeout": (float, _non_negative_number),
    "capacity": (int, _positive_int),
    "name": (str, _name),
    "listen": (list, _addresses),
    "log_level": (str, _log_level),
    "listeners": (dict, _listeners),
    "timeout": (float, _non_negative_number),
    "idle_timeout": (float, _wait),
    "max_requests": (int, _count),
    "max_requests_jitter": (int, _count),
    "max_memory": (int, _count),
    "max_connections": (int, _count),
    "max_connections_per_source": (int, _count),
    "overload_reply": (str, _reply),
    "start_timeout": (float, _seconds_above_zero),
    "handoff": (str, _handoff),
    "first_byte_timeout": (float, _non_negative_number),
    "request_timeout": (float, _wait),  # also a socket timeout (wsgi.py, handlers.py)
    "park_after": (float, _wait),
    "queue_ahead": (int, _queue_ahead),
    "pull": (bool, _flag),
    "accept": (str, _accept),
    "max_carry": (int, _carry),
    "max_unsent": (int, _bytes),
    "max_unsent_total": (int, _bytes),
    "max_buffered_body": (int, _buffered),
    "max_buffered_body_total": (int, _bytes),
    "wsgi": (str, _handler),
    "asgi": (str, _handler),
    "access_log": (bool, _flag),
    "max_request_line": (int, _positive_int),
    "max_header_bytes": (int, _positive_int),
    "max_headers": (int, _positive_int),
    "max_body": (int, _bytes),
    "proxy_allow": (list, _networks),
    "proxy_timeout": (float, _seconds_above_zero),
}


def flag_name(key: str) -> str:
    """How the command line names `key`: the handler is the one positional argument."""
    return "HANDLER" if key == "handler" else "--" + key.replace("_", "-")


def _where(path: str | None) -> str:
    return f"config {cut(str(path))}"


def read_file(path: str) -> dict[str, Any]:
    """The file's TOML table; any way the file is unfit is a ConfigError, never a traceback."""
    try:
        # Not blocking: a FIFO in its place would hang --check, or a reload's dispatcher.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:  # closed here, not by open(): a directory opens, then open() refuses it
            with open(fd, "rb", closefd=False) as f:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    raise ConfigError(f"{_where(path)}: a pipe, not a file")
                data = f.read(MAX_FILE_SIZE + 1)  # bounded: the path may name /dev/zero
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"{_where(path)}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError(f"{_where(path)}: larger than {MAX_FILE_SIZE:,} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{_where(path)}: not UTF-8: byte 0x{data[exc.start]:02x} on line {line}"
        ) from None
    import tomllib  # here: most starts have no config file

    try:
        return tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or a value tomllib itself cannot build
        raise ConfigError(f"{_where(path)}: not valid TOML: {cut(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{_where(path)}: not valid TOML: nested too deeply") from None


def _coerce_flag(kind: type, text: Any) -> Any:
    """Read a flag's text as the type its key has in TOML; leave it alone if it won't parse."""
    # int() and float() take any script's digits (Arabic-Indic, fullwidth), spaces and
    # underscores ("1_0" is 10): a flag's number is written plainly, or left for its check
    # to refuse, named.
    number = _NUMBER.get(kind)
    if number and isinstance(text, str) and number.fullmatch(text):
        return kind(text)
    return text


_NUMBER = {  # bounded: int() of thousands of digits is slow, then refused (4,300)
    int: re.compile(r"-?[0-9]{1,30}"),  # what TOML takes (64 bits, 19 digits), and more
    float: re.compile(r"-?([0-9]{1,18}(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]{1,3})?"),
}


def build(file_values: Mapping[str, Any], flags: Mapping[str, Any], path: str | None) -> Config:
    """Validate both sources and merge them, flags over file values."""
    values: dict[str, Any] = {"path": path}
    for key, raw in file_values.items():
        if key not in _KEYS:
            raise ConfigError(f"{_where(path)}: {cut(key, QUOTE_LIMIT)}: unknown key")
        values[key] = _check(f"{_where(path)}: {key}", _KEYS[key][1], raw)
    if set(flags) & set(KINDS):  # HANDLER, --wsgi or --asgi replaces what the file serves
        values = {k: v for k, v in values.items() if k not in KINDS}
    for key, raw in flags.items():
        kind, validator = _KEYS[key]
        values[key] = _check(flag_name(key), validator, _coerce_flag(kind, raw))
    given = [k for k in KINDS if values.get(k)]
    if len(given) > 1:
        where = _where(path) if set(given) - set(flags) else "command line"
        raise ConfigError(f"{where}: give one of HANDLER, --wsgi and --asgi ({', '.join(given)})")
    cfg = Config(**values)
    if isinstance(cfg.dispatchers, int) and cfg.dispatchers > cfg.workers:
        where = "--dispatchers" if "dispatchers" in flags else f"{_where(path)}: dispatchers"
        raise ConfigError(
            f"{where}: {cfg.dispatchers} is more than workers ({cfg.workers}): "
            "each dispatcher needs a worker of its own"
        )
    _check_carry(cfg, flags, path)
    _check_accept(cfg, flags, path)
    return cfg


def _check_accept(cfg: Config, flags: Mapping[str, Any], path: str | None) -> None:
    """The connection limits count what the dispatcher accepts; workers that accept for
    themselves would pass them by."""
    limits = [k for k in ("max_connections", "max_connections_per_source") if getattr(cfg, k)]
    if cfg.accept != "workers" or not limits:
        return
    where = "--accept" if "accept" in flags else f"{_where(path)}: accept"
    raise ConfigError(
        f"{where}: workers cannot enforce {' and '.join(limits)}, which count the "
        "connections the dispatcher accepts: use accept = dispatcher, or drop the limit"
    )


def _check_carry(cfg: Config, flags: Mapping[str, Any], path: str | None) -> None:
    """A web app's head that pauses on its way waits in the dispatcher, up to max_carry
    bytes: a longer one, under a max_header_bytes that allows it, would be closed there
    (too-large) with no answer. max_carry 0 asks for exactly that, for every partial one."""
    targets = [cfg.default_target(), *(cfg.target_for(name) for name in cfg.listeners)]
    web = any(t is not None and t.kind in ("wsgi", "asgi") for t in targets)
    if not web or not 0 < cfg.max_carry < cfg.max_header_bytes:
        return
    key = next((k for k in ("max_header_bytes", "max_carry") if k in flags), None)
    where = flag_name(key) if key else f"{_where(path)}: max_header_bytes"
    fix = (
        f"raise max_carry to {cfg.max_header_bytes}"
        if cfg.max_header_bytes <= MAX_CARRY
        else f"max_carry is at most {MAX_CARRY}: keep max_header_bytes within it"
    )
    raise ConfigError(
        f"{where}: max_header_bytes ({cfg.max_header_bytes}) is more than max_carry "
        f"({cfg.max_carry}), so a head that long would be closed if it paused on its way; " + fix
    )


def load(path: str | None, flags: Mapping[str, Any]) -> Config:
    return build(read_file(path) if path else {}, flags, path)


def _check(where: str, validator: Validator, raw: Any) -> Any:
    try:
        return validator(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_handlers(config: Config, names: list[str]) -> None:
    """Every listener the workers serve must get a handler (agent listeners need none)."""
    for name in names:
        if config.target_for(name) is None and not config.is_agent(name):
            where = _where(config.path) if config.path else "command line"
            raise ConfigError(
                f"{where}: no handler for listener {quote(name)}: give HANDLER, --wsgi, "
                f"--asgi, 'handler = ...' or [listeners.{cut(name, QUOTE_LIMIT)}]"
            )


def dispatcher_count(config: Config, cores: int | None = None) -> int:
    """How many dispatchers: as configured, or for `auto` one per CORES_PER_DISPATCHER cores
    this process may run on (CPUAffinity=, cpusets), at least one, at most one per worker."""
    if config.dispatchers != AUTO:
        return int(config.dispatchers)
    cores = cores or len(os.sched_getaffinity(0)) or 1
    return max(1, min(config.workers, cores // CORES_PER_DISPATCHER))


def as_reloaded(running: Config, new: Config, parts: int) -> tuple[Config, str | None]:
    """`new` as a reload applies it, with what only a restart changes kept as it runs
    (listen, name, dispatchers: with one dispatcher, `dispatchers = 2` would otherwise
    turn off its workers' queue_ahead, spec.py), and one line naming what was kept, None
    if nothing: a reload serves on rather than fail over what it cannot apply."""
    changed = [key for key in RESTART_ONLY if getattr(running, key) != getattr(new, key)]
    if (wanted := dispatcher_count(new)) != parts:
        changed.append(f"dispatchers ({wanted} asked, {parts} serving)")
    kept = {key: getattr(running, key) for key in (*RESTART_ONLY, "dispatchers")}
    said = f"{', '.join(changed)}: a reload keeps what runs; a restart applies the change"
    return replace(new, **kept), said if changed else None


def check_kinds(old: Config, new: Config, names: list[str]) -> None:
    """Which listeners the dispatcher answers itself is settled at start: a reload that would
    change it fails (a restart applies it)."""
    for name in names:
        if old.is_agent(name) != new.is_agent(name):
            raise ConfigError(
                f"{_where(new.path)}: listener {quote(name)}: kind cannot change on reload "
                "(restart the service)"
            )
