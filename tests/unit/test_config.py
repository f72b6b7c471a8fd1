"""Configuration: file and flags merged, every bad value one line naming its key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockpool import config, wire
from sockpool.errors import ConfigError, ExitCode
from sockpool.spec import WorkerSpec


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'workers = 4\nhandler = "a:b"\ngraceful_timeout = 30\n[listeners.admin]\nhandler = "c:d"\n'
    )
    cfg = config.load(str(path), {"workers": "2", "graceful_timeout": "2.5"})
    assert (cfg.workers, cfg.graceful_timeout, cfg.handler) == (2, 2.5, "a:b")
    assert cfg.target_for("admin") == config.Target("handler", "c:d")
    assert cfg.target_for("web") == config.Target("handler", "a:b")


@pytest.mark.parametrize("name", ["sockpool@-srv-app\\x20one", "sockpool@" + "a" * 246])
def test_any_unit_name_systemd_gives_as_percent_n_is_a_name(name: str) -> None:
    """The template unit passes --name=%N: escaped (systemd-escape), up to 255 characters."""
    assert config.load(None, {"name": name}).name == name


def test_defaults() -> None:
    cfg = config.load(None, {})
    assert cfg.workers >= 1 and cfg.graceful_timeout == 30 and cfg.capacity == 100
    assert cfg.handler is None and cfg.name == "sockpool"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workers": True}, "workers: expected an integer from 1 to 4096, got True"),
        ({"workers": 1.5}, "workers: expected an integer from 1 to 4096"),
        ({"workers": 4097}, "workers: expected an integer from 1 to 4096, got 4097"),
        ({"workers": 2**63 - 1}, "workers: expected an integer from 1 to 4096"),
        ({"capacity": 0}, "capacity: expected a positive integer"),
        ({"name": "has space"}, "name: expected a name"),
        ({"name": "app\n"}, "name: expected a name"),  # a regex's `$` takes a last newline
        ({"name": "n" * 256}, "name: expected a name of up to 255 letters"),
        ({"handler": "m:h\n"}, "handler: expected 'module:callable'"),
        ({"log_level": "loud"}, "log_level: expected one of debug"),
        ({"listen": ["nonsense:port"]}, "port must be a number"),
        ({"listen": ["/run/a.sock", "x=/run/a.sock"]}, "'x=/run/a.sock': the same address as"),
        ({"listen": ["127.0.0.1:80", "127.0.0.1:80"]}, "the same address as '127.0.0.1:80'"),
        ({"listen": ["8123", "127.0.0.1:8123"]}, "'8123' has that port on every address already"),
        ({"listen": ["127.0.0.1:8123", "8123"]}, "'8123': would take the port of '127.0.0.1:8123'"),
        ({"listen": ["h\0:80"]}, "'h\\x00:80': not a host name or address"),
        ({"listen": ["[h\udcff]:80"]}, "not a host name or address"),
        ({"listeners": {"a": "x"}}, "listeners: a: expected a table"),
        ({"listeners": {"a": {"handler": 3}}}, "listeners: a.handler: expected 'module:callable'"),
        ({"unknown": 1}, "unknown: unknown key"),
    ],
)
def test_bad_file_values(values: dict, message: str) -> None:
    assert_one_line_config_error(values, message)


def assert_one_line_config_error(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.build(values, {}, "f.toml")
    assert err.value.code == ExitCode.CONFIG
    assert err.value.message.startswith("config f.toml: ")
    assert message in err.value.message
    assert "\n" not in err.value.message


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--graceful-timeout: expected a number"):
        config.build({}, {"graceful_timeout": "soon"}, None)


def test_a_flag_takes_what_toml_takes() -> None:
    """A 64-bit integer: TOML's, so the same value works in either place."""
    big = str(2**62)
    assert config.build({}, {"max_requests_jitter": big}, None).max_requests_jitter == 2**62


def test_only_what_a_worker_waits_in_one_poll_stops_at_its_limit() -> None:
    """park_after, idle_timeout and request_timeout (socket timeouts in the workers): poll()
    takes milliseconds in a C int. The dispatcher's own timeouts take what they took
    before (a century)."""
    assert config.build({}, {"graceful_timeout": "3000000"}, None).graceful_timeout == 3e6
    assert config.build({}, {"first_byte_timeout": "3000000"}, None).first_byte_timeout == 3e6
    with pytest.raises(ConfigError, match=r"request-timeout: .* at most 2147483 "):
        config.build({}, {"request_timeout": "3000000"}, None)


def test_a_bad_handler_argument_is_named_as_it_is_given() -> None:
    with pytest.raises(ConfigError, match=r"^HANDLER: expected 'module:callable', got 'x'$"):
        config.build({}, {"handler": "x"}, None)


@pytest.mark.parametrize(("key", "text"), [("workers", "\u0663"), ("graceful_timeout", "\uff15")])
def test_a_flag_takes_ascii_digits_only(key: str, text: str) -> None:
    """int() and float() read Arabic-Indic and fullwidth digits as numbers nobody typed."""
    with pytest.raises(ConfigError, match=f"got {text!r}$"):
        config.build({}, {key: text}, None)


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


def test_a_pipe_in_place_of_the_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "c.toml"
    os.mkfifo(fifo)  # with no writer, opening it to read used to wait for ever
    with pytest.raises(ConfigError) as err:
        config.read_file(str(fifo))
    assert err.value.message == f"config {fifo}: a pipe, not a file"


@pytest.mark.usefixtures("no_descriptor_leaks")  # a reload reads it again on each SIGHUP
def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        config.read_file(str(tmp_path))
    assert err.value.message == f"config {tmp_path}: cannot read: Is a directory"


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


def test_ready_work_defaults() -> None:
    cfg = config.load(None, {})
    assert cfg.handoff is None  # as each handler declares
    assert (cfg.first_byte_timeout, cfg.request_timeout, cfg.park_after) == (10, 30, 0.002)
    assert cfg.max_carry == 16384
    assert cfg.handoff_for("web") is None


def test_ready_work_keys_from_file_and_flags() -> None:
    values = {
        "handoff": "immediate",
        "first_byte_timeout": 0,
        "request_timeout": 2.5,
        "park_after": 0,
        "max_carry": 0,
        "listeners": {"web": {"handoff": "ready"}, "smtp": {"handler": "a:b"}},
    }
    cfg = config.build(values, {"max_carry": "65536", "park_after": "0.01"}, "f.toml")
    assert (cfg.first_byte_timeout, cfg.request_timeout, cfg.park_after) == (0, 2.5, 0.01)
    assert cfg.max_carry == 65536
    # A listener's own handoff wins; the others take the top-level one.
    assert cfg.handoff_for("web") == "ready"
    assert cfg.handoff_for("smtp") == "immediate" and cfg.handoff_for("other") == "immediate"


def test_max_carry_is_what_one_park_message_can_hold() -> None:
    assert config.MAX_CARRY == wire.MAX_CARRY
    assert config.build({"max_carry": wire.MAX_CARRY}, {}, "f.toml").max_carry == wire.MAX_CARRY


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"handoff": "later"}, "handoff: expected one of ready, immediate, got 'later'"),
        ({"handoff": True}, "handoff: expected one of ready, immediate"),
        ({"first_byte_timeout": -1}, "first_byte_timeout: expected a number of seconds >= 0"),
        ({"first_byte_timeout": "10"}, "first_byte_timeout: expected a number of seconds"),
        ({"request_timeout": float("nan")}, "request_timeout: expected a number of seconds"),
        # time_t ends below: inf passed, and then every sync handler's settimeout() failed
        ({"idle_timeout": float("inf")}, "idle_timeout: expected a number of seconds >= 0, at"),
        ({"idle_timeout": 1e10}, "idle_timeout: expected a number of seconds >= 0, at most"),
        # poll()'s milliseconds end below: a worker waiting this long failed with a traceback
        (
            {"park_after": 3e6},
            "park_after: expected a number of seconds >= 0, at most 2147483 (24.9 days)",
        ),
        ({"overload_reply": "busy\udcff"}, "overload_reply: expected UTF-8 text"),
        ({"request_timeout": False}, "request_timeout: expected a number of seconds"),
        ({"park_after": -0.001}, "park_after: expected a number of seconds >= 0"),
        ({"max_carry": -1}, "max_carry: expected bytes from 0 to 65536, got -1"),
        ({"max_carry": 65537}, "max_carry: expected bytes from 0 to 65536, got 65537"),
        ({"max_carry": 1.5}, "max_carry: expected bytes from 0 to 65536"),
        ({"max_carry": True}, "max_carry: expected bytes from 0 to 65536"),
        # SO_RCVLOWAT is an int: a larger one failed in the dispatcher, with a traceback
        (
            {"max_buffered_body": 3_000_000_000},
            "max_buffered_body: expected bytes from 0 to 1073741824, got 3000000000",
        ),
        ({"max_buffered_body": -1}, "max_buffered_body: expected bytes from 0 to 1073741824"),
        ({"listeners": {"web": {"handoff": "soon"}}}, "listeners: web.handoff: expected one of"),
        ({"listeners": {"web": {"park_after": 1}}}, "listeners: web.park_after: unknown key"),
    ],
)
def test_bad_ready_work_values(values: dict, message: str) -> None:
    assert_one_line_config_error(values, message)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"handoff": "sometimes"}, "--handoff: expected one of ready, immediate"),
        ({"max_carry": "lots"}, "--max-carry: expected bytes from 0 to 65536, got 'lots'"),
        ({"max_carry": "70000"}, "--max-carry: expected bytes from 0 to 65536, got 70000"),
        ({"first_byte_timeout": "-3"}, "--first-byte-timeout: expected a number of seconds"),
        ({"park_after": "soon"}, "--park-after: expected a number of seconds >= 0"),
    ],
)
def test_bad_ready_work_flags_name_the_flag(flags: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.build({}, flags, None)
    assert err.value.message.startswith(message) and "\n" not in err.value.message


def test_web_apps_serve_listeners_beside_handlers(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'wsgi = "site:app"\naccess_log = true\nmax_body = 1024\n'
        '[listeners.api]\nasgi = "api:app"\n[listeners.raw]\nhandler = "raw:serve"\n'
    )
    cfg = config.load(str(path), {})
    assert cfg.target_for("web") == config.Target("wsgi", "site:app")
    assert cfg.target_for("api") == config.Target("asgi", "api:app")
    assert cfg.target_for("raw") == config.Target("handler", "raw:serve")
    assert (cfg.access_log, cfg.max_body) == (True, 1024)
    assert str(cfg.target_for("api")) == "asgi app 'api:app'"


def test_a_flag_replaces_what_the_file_serves(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('handler = "a:b"\n')
    cfg = config.load(str(path), {"asgi": "web:app"})
    assert cfg.default_target() == config.Target("asgi", "web:app") and cfg.handler is None


@pytest.mark.parametrize(
    ("text", "flags", "message"),
    [
        ('handler = "a:b"\nwsgi = "c:d"\n', {}, "give one of HANDLER, --wsgi and --asgi"),
        ("", {"wsgi": "a:b", "asgi": "c:d"}, "command line: give one of"),
        ('[listeners.x]\nwsgi = "a:b"\nasgi = "c:d"\n', {}, "listeners: x: give one of"),
        ('wsgi = "not a target"\n', {}, "wsgi: expected 'module:callable'"),
        ("access_log = 1\n", {}, "access_log: expected true or false"),
        ("max_headers = 0\n", {}, "max_headers: expected a positive integer"),
    ],
)
def test_bad_web_app_settings(tmp_path: Path, text: str, flags: dict, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(str(path), flags)


def test_proxy_protocol_is_off_unless_a_listener_turns_it_on() -> None:
    cfg = config.load(None, {})
    assert cfg.proxy_protocol_for("web") is None
    assert cfg.proxy_allow_for("web") == ("127.0.0.0/8", "::1") and cfg.proxy_timeout == 3.0


def test_proxy_protocol_keys_per_listener() -> None:
    values = {
        "proxy_allow": ["10.0.0.0/8", "2001:db8::1"],
        "proxy_timeout": 0.5,
        "listeners": {
            "web": {"proxy_protocol": "v2"},
            "smtp": {"proxy_protocol": "any", "proxy_allow": "192.0.2.7"},
            "admin": {"handler": "a:b"},
        },
    }
    cfg = config.build(values, {}, "f.toml")
    assert cfg.proxy_timeout == 0.5
    assert cfg.proxy_protocol_for("web") == "v2" and cfg.proxy_protocol_for("smtp") == "any"
    assert cfg.proxy_protocol_for("admin") is None and cfg.proxy_protocol_for("other") is None
    # A listener's own proxy_allow replaces the top-level one; the others take the top level's.
    assert cfg.proxy_allow_for("smtp") == ("192.0.2.7",)
    assert cfg.proxy_allow_for("web") == ("10.0.0.0/8", "2001:db8::1")
    assert (
        config.build({"listeners": {"w": {"proxy_allow": []}}}, {}, "f").proxy_allow_for("w") == ()
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"proxy_protocol": "v2"}, "config f.toml: proxy_protocol: unknown key"),
        (
            {"listeners": {"web": {"proxy_protocol": "v3"}}},
            "listeners: web.proxy_protocol: expected one of v1, v2, any, got 'v3'",
        ),
        (
            {"listeners": {"web": {"proxy_protocol": True}}},
            "listeners: web.proxy_protocol: expected one of v1, v2, any, got True",
        ),
        (
            {"proxy_allow": ["127.0.0.1", "10.0.0.5/8"]},
            "proxy_allow: '10.0.0.5/8' has host bits set: did you mean 10.0.0.0/8?",
        ),
        (
            {"proxy_allow": ["haproxy.internal"]},
            "proxy_allow: 'haproxy.internal' is not an IPv4 or IPv6 address or network",
        ),
        ({"proxy_allow": 10}, "proxy_allow: expected a list of addresses or networks, got 10"),
        (
            {"listeners": {"web": {"proxy_allow": ["::1/129"]}}},
            "listeners: web.proxy_allow: '::1/129' is not an IPv4 or IPv6 address or network",
        ),
        ({"proxy_timeout": 0}, "proxy_timeout: expected a number of seconds above 0"),
        ({"proxy_timeout": -1}, "proxy_timeout: expected a number of seconds above 0"),
        ({"proxy_timeout": "3"}, "proxy_timeout: expected a number of seconds above 0"),
        ({"listeners": {"web": {"proxy_timeout": 1}}}, "web.proxy_timeout: unknown key"),
    ],
)
def test_bad_proxy_protocol_values(values: dict, message: str) -> None:
    assert_one_line_config_error(values, message)


def test_pull_is_off_unless_set_and_reaches_the_workers_spec(tmp_path: Path) -> None:
    assert not config.load(None, {}).pull
    path = tmp_path / "c.toml"
    path.write_text("pull = true\n")
    assert WorkerSpec.of(1, config.load(str(path), {}), ["main"]).pull
    assert config.load(None, {"pull": True}).pull  # --pull
    path.write_text("pull = 1\n")
    with pytest.raises(ConfigError, match=r"pull: expected true or false, got 1$"):
        config.load(str(path), {})


def test_accept_is_the_dispatchers_unless_set_and_reaches_the_workers_spec(
    tmp_path: Path,
) -> None:
    listening = (("main", 3, (2, 1, 6)), ("edge", 4, (2, 1, 6)))
    assert config.load(None, {}).accept == "dispatcher"
    assert not WorkerSpec.of(1, config.load(None, {}), ["main"], listening=listening).accepts
    path = tmp_path / "c.toml"
    path.write_text('accept = "workers"\n[listeners.edge]\nproxy_protocol = "v1"\n')
    spec = WorkerSpec.of(1, config.load(str(path), {}), ["main", "edge"], listening=listening)
    assert spec.accepts == listening[:1]  # a PROXY listener's headers are the dispatcher's
    path.write_text('accept = "worker"\n')
    with pytest.raises(ConfigError, match=r"accept: expected one of dispatcher, workers"):
        config.load(str(path), {})


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_source"])
def test_workers_that_accept_cannot_enforce_the_connection_limits(limit: str) -> None:
    with pytest.raises(ConfigError, match=f"^--accept: workers cannot enforce {limit}, "):
        config.load(None, {"accept": "workers", limit: "10"})
    assert config.load(None, {"accept": "dispatcher", limit: "10"})


def test_dispatcher_count() -> None:
    assert config.dispatcher_count(config.build({"workers": 8, "dispatchers": 3}, {}, None)) == 3
    auto = config.build({"workers": 8, "dispatchers": "auto"}, {}, None)
    counts = [config.dispatcher_count(auto, cores) for cores in (1, 2, 4, 7, 8, 16, 64)]
    assert counts == [1, 1, 1, 1, 2, 4, 8]
    few = config.build({"workers": 2, "dispatchers": "auto"}, {}, None)
    assert config.dispatcher_count(few, 64) == 2  # at most one per worker


def test_port_zero_twice_is_two_sockets_not_the_same_address() -> None:
    assert config.build({"listen": ["127.0.0.1:0", "127.0.0.1:0"]}, {}, None).listen == (
        "127.0.0.1:0",
        "127.0.0.1:0",
    )


def test_a_web_apps_head_limit_over_max_carry_is_refused() -> None:
    """A head under max_header_bytes that paused on its way was parked and closed as
    too-large, unanswered, when it was over max_carry."""
    with pytest.raises(config.ConfigError) as err:
        config.build({"wsgi": "a:b", "max_header_bytes": 32768}, {}, "f.toml")
    assert str(err.value) == (
        "config f.toml: max_header_bytes: max_header_bytes (32768) is more than max_carry "
        "(16384), so a head that long would be closed if it paused on its way; raise "
        "max_carry to 32768"
    )
    with pytest.raises(config.ConfigError, match=r"^--max-header-bytes: .*at most 65536"):
        config.build({"max_carry": 65536}, {"asgi": "a:b", "max_header_bytes": "70000"}, None)
    for fine in (
        {"wsgi": "a:b", "max_header_bytes": 32768, "max_carry": 32768},
        {"wsgi": "a:b", "max_header_bytes": 32768, "max_carry": 0},  # closes every partial
        {"handler": "a:b", "max_carry": 100},  # no web app: its own heads, its own limits
    ):
        config.build(fine, {}, "f.toml")
