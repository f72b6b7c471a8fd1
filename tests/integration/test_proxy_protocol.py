"""PROXY protocol listeners (issue 15): the client behind the balancer is the peer.

Real sockets under the real systemd-socket-activate; the balancer is the test, writing the
headers HAProxy writes (send-proxy-v2 / send-proxy).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from harness import connect, cpu_seconds, free_port, inet4, read_to_eof, tlv, v2, wait_until
from test_ready_work import assert_closed_by_server, settle, wait_closed

CLIENT = inet4("203.0.113.7", "198.51.100.1", 40000, 443)  # a client on the far side
TLVS = tlv(0x05, b"req-42") + tlv(0x02, b"shop.example") + tlv(0x01, b"h2")


def tcp() -> str:
    return f"127.0.0.1:{free_port()}"


def start(serve, tmp_path: Path, listener: str = "", top: str = "", *args: str):
    config = tmp_path / "proxy.toml"
    config.write_text(f'handler = "apps:proxied"\n{top}\n[listeners.edge]\n{listener}\n')
    service = serve(["--workers=2", f"--config={config}", *args], listen=[tcp()], fdnames=["edge"])
    service.wait_idle()
    return service


def ask(sock: socket.socket, line: bytes = b"hi\n") -> str:
    sock.sendall(line)
    got = b""
    while not got.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, f"closed after {got!r}"
        got += chunk
    return got.decode()


@pytest.mark.parametrize("version", ["v2", "any"])
def test_the_client_behind_a_v2_balancer_is_the_peer_with_its_tlvs(serve, tmp_path, version):
    service = start(serve, tmp_path, f'proxy_protocol = "{version}"')
    with connect(service.address) as sock:
        sock.sendall(v2(block=CLIENT, tlvs=TLVS))
        assert ask(sock) == "proxied 203.0.113.7:40000 b'req-42' shop.example b'h2'\n"
        # Between lines the connection parks in the dispatcher, and comes back the same.
        settle(service, busy=0, parked=1)
        assert ask(sock) == "proxied 203.0.113.7:40000 b'req-42' shop.example b'h2'\n"


def test_a_v1_header_and_a_header_with_the_request_in_one_segment(serve, tmp_path) -> None:
    service = start(serve, tmp_path, 'proxy_protocol = "v1"')
    with connect(service.address) as sock:
        sock.sendall(b"PROXY TCP6 2001:db8::5 2001:db8::1 5555 443\r\nhi\n")
        assert ask(sock, b"") == "proxied [2001:db8::5]:5555 None None None\n"


def test_a_local_header_is_served_as_the_balancer_itself(serve, tmp_path) -> None:
    service = start(serve, tmp_path, 'proxy_protocol = "v2"')
    with connect(service.address) as sock:
        sock.sendall(v2(command=0, fam=0))  # LOCAL: HAProxy's own health check
        answer = ask(sock)
        own = sock.getsockname()
        assert answer == f"proxied {own[0]}:{own[1]} None None None\n"


def test_a_header_split_across_segments_is_waited_for(serve, tmp_path) -> None:
    service = start(serve, tmp_path, 'proxy_protocol = "v2"')
    header = v2(block=CLIENT)
    with connect(service.address) as sock:
        sock.sendall(header[:7])  # inside the signature
        wait_until(lambda: "parked 1" in service.statuses()[-1], "the connection held")
        # Held, the dispatcher waits for more: it used to wake for the same 7 bytes again
        # and again, a busy loop until proxy_timeout.
        cpu = cpu_seconds(service.pid)
        time.sleep(2)
        assert cpu_seconds(service.pid) - cpu < 0.5, "the dispatcher spins on a partial header"
        sock.sendall(header[7:] + b"hi\n")
        assert ask(sock, b"") == "proxied 203.0.113.7:40000 None None None\n"


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\n\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", b"\r\n\r\n\0\r\nQUIX\n"],
    ids=["no-header", "v1-on-v2", "bad-signature"],
)
def test_an_invalid_header_is_dropped_and_counted(serve, tmp_path, garbage) -> None:
    service = start(serve, tmp_path, 'proxy_protocol = "v2"')
    with connect(service.address) as sock:
        sock.sendall(garbage)
        assert_closed_by_server(sock)
    wait_closed(service, "proxy-invalid", 1)


def test_a_header_that_never_completes_is_closed_at_proxy_timeout(serve, tmp_path) -> None:
    service = start(serve, tmp_path, 'proxy_protocol = "v2"', "proxy_timeout = 1")
    with connect(service.address) as sock:
        sock.sendall(v2(block=CLIENT)[:20])
        assert_closed_by_server(sock, timeout=5)
    wait_closed(service, "proxy-header", 1)


def test_a_header_from_an_untrusted_peer_is_dropped_and_counted(serve, tmp_path) -> None:
    service = start(serve, tmp_path, 'proxy_protocol = "v2"\nproxy_allow = ["10.0.0.0/8"]')
    with connect(service.address) as sock:
        sock.sendall(v2(block=CLIENT, tlvs=TLVS) + b"hi\n")
        assert_closed_by_server(sock)
    # Two: the connection that activated the service came from loopback too. The count is
    # logged at most every 10 s, so the second one may take that long.
    wait_closed(service, "proxy-untrusted", 2, timeout=15)


def test_the_per_source_limit_counts_the_client_not_the_balancer(serve, tmp_path) -> None:
    service = start(serve, tmp_path, 'proxy_protocol = "v2"', "", "--max-connections-per-source=1")
    first, second, other = (connect(service.address) for _ in range(3))
    with first, second, other:
        first.sendall(v2(block=CLIENT))
        assert ask(first).startswith("proxied 203.0.113.7:40000 ")
        second.sendall(v2(block=inet4("203.0.113.7", "198.51.100.1", 40001, 443)))
        assert_closed_by_server(second)  # the same client again: over its limit of 1
        other.sendall(v2(block=inet4("203.0.113.8", "198.51.100.1", 40000, 443)))
        assert ask(other).startswith("proxied 203.0.113.8:40000 ")  # another client: served


def test_a_local_header_split_in_two_counts_against_the_balancers_limit(serve, tmp_path) -> None:
    """A LOCAL header's connection is the balancer's own, and counts as its: also when the
    header came in two segments (it was admitted as nobody's, past the limit)."""
    service = start(serve, tmp_path, 'proxy_protocol = "v2"', "", "--max-connections-per-source=1")
    header = v2(command=0, fam=0)
    first, second = connect(service.address), connect(service.address)
    with first, second:
        for n, sock in enumerate((first, second)):
            sock.sendall(header[:7])
            wait_until(lambda n=n: f"parked {n + 1}" in service.statuses()[-1], "it held")
        first.sendall(header[7:])
        assert ask(first).startswith("proxied 127.0.0.1:")
        second.sendall(header[7:] + b"hi\n")
        assert_closed_by_server(second)  # the balancer again: over its limit of 1, unanswered


@pytest.mark.parametrize(
    ("kind", "app", "path", "field"),
    [
        ("wsgi", "webapps:flask_app", "/environ", "REMOTE_ADDR"),
        ("asgi", "webapps:starlette_app", "/scope", "client"),
    ],
)
def test_web_apps_see_the_client_behind_the_balancer(serve, tmp_path, kind, app, path, field):
    config = tmp_path / "web.toml"
    config.write_text(f'{kind} = "{app}"\n[listeners.edge]\nproxy_protocol = "v2"\n')
    service = serve(["--workers=2", f"--config={config}"], listen=[tcp()], fdnames=["edge"])
    request = f"GET {path} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n"
    with connect(service.address) as sock:
        sock.sendall(v2(block=CLIENT) + request.encode())
        answer = read_to_eof(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    seen = json.loads(body)[field]
    assert seen in ("203.0.113.7", ["203.0.113.7", 40000]), seen


def test_the_journal_fields_name_the_client_behind_the_balancer(serve, tmp_path) -> None:
    config = tmp_path / "boom.toml"
    config.write_text('handler = "apps:boom"\n[listeners.edge]\nproxy_protocol = "v2"\n')
    service = serve(["--workers=1", f"--config={config}"], listen=[tcp()], fdnames=["edge"])
    with connect(service.address) as sock:
        sock.sendall(v2(block=CLIENT) + b"go\n")
        read_to_eof(sock)
    wait_until(lambda: "about to fail" in service.output(), "the handler's record")
    line = next(ln for ln in service.output().splitlines() if "about to fail" in ln)
    assert "PEER=203.0.113.7:40000" in line, line  # the connection's fields, on every record
