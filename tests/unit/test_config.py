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


def test_start_timeout() -> None:
    assert config.load(None, {}).start_timeout == 30
    assert config.build({"start_timeout": 2.5}, {}, "f.toml").start_timeout == 2.5
    for bad in (0, -1, True, "1", float("inf"), float("nan"), 86401):
        with pytest.raises(
            ConfigError, match="start_timeout: expected a number of seconds above 0"
        ):
            config.build({"start_timeout": bad}, {}, "f.toml")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"a = " + b"[" * 5000 + b"]" * 5000, "not valid TOML: nested too deeply"),
        (b"x = 1\n\n# \xe9t\xe9\n", "not UTF-8: byte 0xe9 on line 3"),
        (b"#" * (1024 * 1024 + 1), "larger than 1,048,576 bytes"),
        (b"a = 1\na = 2\n", "not valid TOML: Cannot overwrite a value (at line 2, column 6)"),
    ],
)
def test_unfit_files_are_one_config_error(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        config.read_file(str(path))
    assert err.value.message == f"config {path}: {message}"


def test_the_file_is_read_bounded() -> None:
    with pytest.raises(ConfigError, match="larger than"):
        config.read_file("/dev/zero")


def test_listener_tables_are_bounded() -> None:
    tables = {f"l{i}": {} for i in range(config.MAX_LISTENER_TABLES)}
    assert len(config.build({"listeners": tables}, {}, "f.toml").listeners) == 1024
    with pytest.raises(ConfigError, match=r"1,025 \[listeners.NAME\] tables, at most 1024"):
        config.build({"listeners": {**tables, "one more": {}}}, {}, "f.toml")


@pytest.mark.parametrize(
    "values",
    [
        {"name": "n" * 10_000_000},
        {"listeners": {"x" * 1_000_000: {}, "y": 1}},
        {"listeners": {"t": {"k" * 1_000_000: 1}}},
        {"workers": [[[[[[[[[[1]]]]]]]]]]},
        {"k\n" * 1_000_000: 1},
        {"overload_reply": 1, "handler": "a" * 100_000 + ":b" + "\n"},
        {"listen": ["h" * 1_000_000 + ":80"]},
    ],
)
def test_error_lines_stay_short(values: dict) -> None:
    with pytest.raises(ConfigError) as err:
        config.build(values, {}, "f.toml")
    assert len(err.value.message) < 250 and "\n" not in err.value.message, err.value.message
