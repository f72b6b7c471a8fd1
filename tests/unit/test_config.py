"""Configuration: file and flags merged, every bad value one line naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sockpool import config
from sockpool.errors import ConfigError, ExitCode


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'workers = 4\nhandler = "a:b"\ngraceful_timeout = 30\n[listeners.admin]\nhandler = "c:d"\n'
    )
    cfg = config.load(str(path), {"workers": "2", "graceful_timeout": "2.5"})
    assert (cfg.workers, cfg.graceful_timeout, cfg.handler) == (2, 2.5, "a:b")
    assert cfg.handler_for("admin") == "c:d"
    assert cfg.handler_for("web") == "a:b"


def test_defaults() -> None:
    cfg = config.load(None, {})
    assert cfg.workers >= 1 and cfg.graceful_timeout == 30 and cfg.capacity == 100
    assert cfg.handler is None and cfg.name == "sockpool"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workers": True}, "workers: expected a positive integer, got True"),
        ({"workers": 1.5}, "workers: expected a positive integer"),
        ({"capacity": 0}, "capacity: expected a positive integer"),
        ({"name": "has space"}, "name: expected a name"),
        ({"log_level": "loud"}, "log_level: expected one of debug"),
        ({"listen": ["nonsense:port"]}, "port must be a number"),
        ({"listeners": {"a": "x"}}, "listeners: a: expected a table"),
        ({"listeners": {"a": {"handler": 3}}}, "listeners: a.handler: expected 'module:callable'"),
        ({"unknown": 1}, "unknown: unknown key"),
    ],
)
def test_bad_file_values(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.build(values, {}, "f.toml")
    assert err.value.code == ExitCode.CONFIG
    assert err.value.message.startswith("config f.toml: ")
    assert message in err.value.message
    assert "\n" not in err.value.message


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--graceful-timeout: expected a number"):
        config.build({}, {"graceful_timeout": "soon"}, None)


def test_every_listener_needs_a_handler() -> None:
    cfg = config.build({"listeners": {"admin": {"handler": "a:b"}}}, {}, "c.toml")
    config.check_handlers(cfg, ["admin"])
    with pytest.raises(ConfigError, match="no handler for listener 'web'"):
        config.check_handlers(cfg, ["admin", "web"])
