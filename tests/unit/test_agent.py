"""HAProxy's agent-check line (agent.reply) and the `kind = "haproxy-agent"` listener's
configuration: what a balancer reads for each state of the pool."""

from __future__ import annotations

import socket

import pytest

from sockpool import agent, config
from sockpool.errors import ConfigError

MIN = f"{agent.MIN_WEIGHT}%"


@pytest.mark.parametrize(
    ("free", "total", "held", "max_connections", "draining", "line"),
    [
        # An idle pool takes its full weight; a quarter busy, three quarters of it.
        (8, 8, 0, 0, False, "up ready 100%"),
        (6, 8, 2, 0, False, "up ready 75%"),
        (1, 3, 2, 0, False, "up ready 33%"),
        # Every worker busy, or connections waiting for one (free below 0): the floor,
        # never 0, which HAProxy would take as drain.
        (0, 8, 8, 0, False, f"up ready {MIN}"),
        (-5, 8, 13, 0, False, f"up ready {MIN}"),
        # No worker ready yet (starting): the floor, up.
        (0, 0, 0, 0, False, f"up ready {MIN}"),
        # Under max_connections: HAProxy gets the limit, and the weight is no more than the
        # share of the limit left (idle keep-alive connections take no worker but count).
        (8, 8, 0, 40, False, "up ready 100% maxconn:40"),
        (8, 8, 30, 40, False, "up ready 25% maxconn:40"),
        (2, 8, 10, 40, False, "up ready 25% maxconn:40"),
        (8, 8, 40, 40, False, f"up ready {MIN} maxconn:40"),
        (8, 8, 55, 40, False, f"up ready {MIN} maxconn:40"),
        # Stopping or reloading: drain, whatever the load.
        (8, 8, 0, 0, True, "drain"),
        (0, 8, 8, 40, True, "drain"),
    ],
)
def test_reply(
    free: int, total: int, held: int, max_connections: int, draining: bool, line: str
) -> None:
    assert agent.reply(free, total, held, max_connections, draining) == line.encode() + b"\n"


def test_one_of_n_dispatchers_announces_the_whole_limit() -> None:
    """Its weight is its own share's, its maxconn the service's: HAProxy limits a server."""
    assert agent.reply(4, 4, 15, 20, False, whole=40) == b"up ready 25% maxconn:40\n"
    assert agent.reply(4, 4, 0, 0, False, whole=0) == b"up ready 100%\n"


def test_an_agent_listener_has_no_handler_and_needs_none() -> None:
    cfg = config.build(
        {"handler": "a:b", "listeners": {"lb": {"kind": "haproxy-agent"}, "web": {}}}, {}, "c"
    )
    assert cfg.is_agent("lb") and not cfg.is_agent("web") and not cfg.is_agent("other")
    assert cfg.target_for("lb") is None  # not the top-level handler: no worker serves it
    assert cfg.target_for("web") == config.Target("handler", "a:b")
    config.check_handlers(cfg, ["lb", "web"])
    explicit = config.build({"listeners": {"web": {"kind": "serve", "handler": "a:b"}}}, {}, "c")
    assert not explicit.is_agent("web")
    config.check_handlers(
        config.build({"listeners": {"lb": {"kind": "haproxy-agent"}}}, {}, ""), ["lb"]
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"kind": "haproxy"},
            "listeners: lb.kind: expected one of serve, haproxy-agent, got 'haproxy'",
        ),
        ({"kind": 1}, "listeners: lb.kind: expected one of serve, haproxy-agent, got 1"),
        (
            {"kind": "haproxy-agent", "handler": "a:b"},
            "listeners: lb.handler: a haproxy-agent listener takes no handler",
        ),
        (
            {"kind": "haproxy-agent", "handoff": "ready"},
            "listeners: lb.handoff: a haproxy-agent listener takes no handoff",
        ),
    ],
)
def test_bad_agent_tables_are_one_line(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.build({"listeners": {"lb": table}}, {}, "c.toml")
    assert err.value.message == f"config c.toml: {message}"


def test_a_reload_cannot_change_what_a_listener_is() -> None:
    old = config.build({"handler": "a:b", "listeners": {"lb": {"kind": "haproxy-agent"}}}, {}, "c")
    new = config.build({"handler": "a:b"}, {}, "c")
    config.check_kinds(old, old, ["lb", "web"])
    with pytest.raises(ConfigError, match="listener 'lb': kind cannot change on reload"):
        config.check_kinds(old, new, ["lb", "web"])


def test_answer_serves_a_bounded_batch_and_never_blocks() -> None:
    """Each connection gets the line (computed once per call) and is closed; a call takes at
    most BATCH, the next the rest; what a balancer sent first (agent-send) is no reset."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(agent.BATCH + 3)]
        clients[0].sendall(b"backend web\n")  # agent-send
        asked = []

        def text() -> bytes:
            asked.append(1)
            return b"up ready 50%\n"

        assert agent.answer(listener, text) and len(asked) == 1
        assert agent.answer(listener, text) and len(asked) == 2
        assert agent.answer(listener, text) and len(asked) == 2  # nothing left: not asked
        for client in clients:
            with client:
                client.settimeout(5)
                assert client.recv(100) == b"up ready 50%\n"
                assert client.recv(100) == b""
