"""Configuration: a TOML file and command-line flags with the same keys; flags win.

Pure validation with one error per problem, naming the key, so a bad value becomes a
one-line message and exit code 78 (EX_CONFIG) instead of a traceback at 3 a.m.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .listeners import parse_address

LOG_LEVELS = ("debug", "info", "warning", "error")
_HANDLER_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_NAME_RE = re.compile(r"^[\w.@:-]{1,64}$")


def default_workers() -> int:
    """The CPUs this process may run on (honours CPUAffinity= and cgroup cpusets)."""
    return len(os.sched_getaffinity(0)) or 1


@dataclass(frozen=True)
class ListenerConfig:
    handler: str | None = None


@dataclass(frozen=True)
class Config:
    handler: str | None = None
    workers: int = field(default_factory=default_workers)
    graceful_timeout: float = 30.0
    capacity: int = 100
    name: str = "sockpool"
    listen: tuple[str, ...] = ()
    log_level: str = "info"
    listeners: Mapping[str, ListenerConfig] = field(default_factory=dict)
    # Resilience; 0 turns a limit off.
    start_timeout: float = 60.0  # from fork to READY: a worker slower than this failed to start
    timeout: float = 0.0  # per connection: a worker holding one longer is hung
    idle_timeout: float = 60.0  # built-in handlers, and sync handlers' socket timeout
    max_requests: int = 0  # recycle a worker after this many connections...
    max_requests_jitter: int | None = None  # ...plus up to this many (default a tenth)
    max_memory: int = 0  # MiB resident: recycle a worker above it
    max_connections: int = 0  # in flight at once; more are refused, not queued
    max_connections_per_source: int = 0  # in flight from one IP address
    overload_reply: str = ""  # one line sent to a refused connection before it is closed
    path: str | None = None

    def handler_for(self, listener: str) -> str | None:
        own = self.listeners.get(listener)
        return own.handler if own and own.handler else self.handler


# key -> (kind, validator). The kind tells the CLI how to read a flag's text.
def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _non_negative_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"expected a number of seconds >= 0, got {value!r}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _reply(value: Any) -> str:
    if not isinstance(value, str) or "\n" in value.rstrip("\n") or len(value) > 1024:
        raise ValueError("expected one line of at most 1024 characters")
    return value


def _handler(value: Any) -> str:
    if not isinstance(value, str) or not _HANDLER_RE.match(value):
        raise ValueError(f"expected 'module:callable', got {value!r}")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"expected a name of letters, digits and ._@:-, got {value!r}")
    return value


def _log_level(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.lower()


def _addresses(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"expected a list of addresses, got {value!r}")
    for text in value:
        parse_address(text)  # raises ValueError naming the bad one
    return tuple(value)


def _listeners(value: Any) -> dict[str, ListenerConfig]:
    if not isinstance(value, dict):
        raise ValueError("expected a table of [listeners.NAME] tables")
    result = {}
    for name, table in value.items():
        if not isinstance(table, dict):
            raise ValueError(f"{name}: expected a table, got {table!r}")
        unknown = sorted(set(table) - {"handler"})
        if unknown:
            raise ValueError(f"{name}.{unknown[0]}: unknown key")
        try:
            handler = _handler(table["handler"]) if "handler" in table else None
        except ValueError as exc:
            raise ValueError(f"{name}.handler: {exc}") from None
        result[name] = ListenerConfig(handler)
    return result


Validator = Callable[[Any], Any]
_KEYS: dict[str, tuple[type, Validator]] = {
    "handler": (str, _handler),
    "workers": (int, _positive_int),
    "graceful_timeout": (float, _non_negative_number),
    "capacity": (int, _positive_int),
    "name": (str, _name),
    "listen": (list, _addresses),
    "log_level": (str, _log_level),
    "listeners": (dict, _listeners),
    "start_timeout": (float, _non_negative_number),
    "timeout": (float, _non_negative_number),
    "idle_timeout": (float, _non_negative_number),
    "max_requests": (int, _count),
    "max_requests_jitter": (int, _count),
    "max_memory": (int, _count),
    "max_connections": (int, _count),
    "max_connections_per_source": (int, _count),
    "overload_reply": (str, _reply),
}


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: not valid TOML: {exc}") from None


def _coerce_flag(kind: type, text: Any) -> Any:
    """Read a flag's text as the type its key has in TOML; leave it alone if it won't parse."""
    if isinstance(text, str):
        try:
            if kind is int:
                return int(text)
            if kind is float:
                return float(text)
        except ValueError:
            return text
    return text


def build(file_values: Mapping[str, Any], flags: Mapping[str, Any], path: str | None) -> Config:
    """Validate both sources and merge them, flags over file values."""
    values: dict[str, Any] = {"path": path}
    for key, raw in file_values.items():
        if key not in _KEYS:
            raise ConfigError(f"config {path}: {key}: unknown key")
        values[key] = _check(f"config {path}: {key}", _KEYS[key][1], raw)
    for key, raw in flags.items():
        kind, validator = _KEYS[key]
        values[key] = _check(flag_name(key), validator, _coerce_flag(kind, raw))
    return Config(**values)


def load(path: str | None, flags: Mapping[str, Any]) -> Config:
    return build(read_file(path) if path else {}, flags, path)


def _check(where: str, validator: Validator, raw: Any) -> Any:
    try:
        return validator(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_handlers(config: Config, names: list[str]) -> None:
    """Every listener the dispatcher serves must get a handler."""
    for name in names:
        if config.handler_for(name) is None:
            where = f"config {config.path}" if config.path else "command line"
            raise ConfigError(
                f"{where}: no handler for listener {name!r}: give HANDLER, "
                f"'handler = ...' or [listeners.{name}]"
            )
