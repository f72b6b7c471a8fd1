"""Addresses for --listen, parsed the way systemd's ListenStream= reads them."""

from __future__ import annotations

import socket

import pytest

from sockpool.listeners import Address, parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", Address(None, socket.AF_INET, ("127.0.0.1", 80), "127.0.0.1:80")),
        ("localhost:8080", Address(None, socket.AF_INET, ("localhost", 8080), "localhost:8080")),
        ("[::1]:443", Address(None, socket.AF_INET6, ("::1", 443), "[::1]:443")),
        ("7007", Address(None, socket.AF_INET6, ("::", 7007), "7007")),
        ("/run/x.sock", Address(None, socket.AF_UNIX, "/run/x.sock", "/run/x.sock")),
        ("@abstract", Address(None, socket.AF_UNIX, "\0abstract", "@abstract")),
        ("admin=127.0.0.1:81", Address("admin", socket.AF_INET, ("127.0.0.1", 81), "127.0.0.1:81")),
        ("admin=/run/a.sock", Address("admin", socket.AF_UNIX, "/run/a.sock", "/run/a.sock")),
    ],
)
def test_addresses(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host:", ":80", "1.2.3.4:http", "[::1]", "70000", "::1:80"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)
