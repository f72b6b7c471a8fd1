"""HAProxy's agent-check listener under the real systemd-socket-activate: what a balancer
reads from it as the pool fills up, reloads and stops."""

from __future__ import annotations

import signal
from pathlib import Path

from harness import Service, connect, free_port, read_to_eof, wait_until

MIN = b"up ready 10%\n"  # agent.MIN_WEIGHT: all workers busy


def write_config(path: Path, handler: str) -> None:
    path.write_text(
        f'handler = "{handler}"\nworkers = 2\nstart_timeout = 60\n'
        '[listeners.agent]\nkind = "haproxy-agent"\n'
    )


def start(serve, tmp_path: Path, handler: str = "apps:slow_echo") -> tuple[Service, Path]:
    config = tmp_path / "agent.toml"
    write_config(config, handler)
    listen = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    return serve([f"--config={config}"], listen=listen, fdnames=["web", "agent"]), config


def agent_line(service: Service) -> bytes:
    """What HAProxy's agent-check reads: one line, then the close."""
    with connect(service.addresses[1]) as sock:
        return read_to_eof(sock)


def says(service: Service, line: bytes) -> bytes:
    return wait_until(lambda: agent_line(service) == line, f"the agent to say {line!r}")


def test_the_weight_follows_the_busy_workers(serve, tmp_path: Path) -> None:
    service, _ = start(serve, tmp_path)
    says(service, b"up ready 100%\n")  # once activation's own connection is done
    held = []
    for expected in (b"up ready 50%\n", MIN):  # two sync workers: each one takes half
        held.append(connect(service.address))
        assert held[-1].recv(1) == b"+"  # in a worker's hands (apps.slow_echo)
        assert agent_line(service) == expected
    for n, sock in enumerate(held):
        sock.sendall(f"done {n}\n".encode())
        assert read_to_eof(sock) == f"done {n}\n".encode()
        sock.close()
    says(service, b"up ready 100%\n")
    assert "Traceback" not in service.output()


def test_two_dispatchers_announce_the_services_limit(serve, tmp_path: Path) -> None:
    """Each of two dispatchers holds half of max_connections; HAProxy's maxconn is the
    server's, so whichever answers gives the whole limit."""
    config = tmp_path / "agent.toml"
    write_config(config, "sockpool.handlers:echo")
    listen = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    args = [f"--config={config}", "--dispatchers=2", "--max-connections=7"]
    service = serve(args, listen=listen, fdnames=["web", "agent"])
    service.wait_for("READY=1")
    for _ in range(6):  # either dispatcher may answer: neither says its share (4 or 3)
        assert agent_line(service).endswith(b" maxconn:7\n")


def test_drain_while_a_reload_starts_its_workers(serve, tmp_path: Path) -> None:
    """A reload whose workers cannot get ready drains until a newer one replaces it."""
    service, config = start(serve, tmp_path, "sockpool.handlers:echo")
    says(service, b"up ready 100%\n")
    write_config(config, "block_at_import:handle")
    service.signal(signal.SIGHUP)
    service.wait_for("RELOADING=1")
    assert agent_line(service) == b"drain\n"
    write_config(config, "sockpool.handlers:echo")
    service.signal(signal.SIGHUP)
    wait_until(lambda: "generation 3 serves" in service.output(), "generation 3")
    assert agent_line(service) == b"up ready 100%\n"


def test_drain_while_stopping_with_a_request_in_flight(serve, tmp_path: Path) -> None:
    service, _ = start(serve, tmp_path)
    says(service, b"up ready 100%\n")
    slow = connect(service.address)
    assert slow.recv(1) == b"+"
    service.signal(signal.SIGTERM)
    service.wait_for("STOPPING=1")
    assert agent_line(service) == b"drain\n"  # while the request is still in flight
    slow.sendall(b"last one\n")
    assert read_to_eof(slow) == b"last one\n"
    slow.close()
    assert service.wait() == 0
