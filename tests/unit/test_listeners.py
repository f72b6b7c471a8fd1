"""Addresses for --listen, parsed the way systemd's ListenStream= reads them."""

from __future__ import annotations

import socket

import pytest

from sockpool.errors import ExitCode, Fatal
from sockpool.listeners import (
    PEER_FORMAT,
    Address,
    bind,
    check_fdnames,
    clashes,
    parse_address,
)


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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1:" + "9" * 5000, "port must be a number from 0 to 65535"),  # past int()'s
        ("web=/run/x.sock\n", "a control character in an address"),  # a forged log line
        ("/run/x.sock\n", "a control character in an address"),
        ("127.0.0.1:80\r", "a control character in an address"),
    ],
)
def test_bad_addresses_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_address(text)


UNDECODABLE_PATH = b"/run/a\xff.sock".decode(errors="surrogateescape")  # as argv gives it


def test_undecodable_path_is_bound_as_is_and_named_in_utf8() -> None:
    address = parse_address(UNDECODABLE_PATH)
    assert address.sockaddr == UNDECODABLE_PATH  # the bytes bind() gets are the user's
    assert address.text == "/run/a\\udcff.sock"
    address.text.encode()  # the name is valid UTF-8: the wire and the journal can carry it


@pytest.mark.parametrize("host", ["a..b", "h" * 64, "\u200b", "[\u200b]", "h\udcff", "[h\0]"])
def test_what_no_host_can_be_is_refused_before_bind(host: str) -> None:
    """getaddrinfo() (HOST:PORT) and bind() ([HOST]:PORT, a name that is not ASCII) would
    raise UnicodeError or TypeError for these, not OSError: a traceback at start, after
    --check passed them. bind() takes an ASCII name as it is: /etc/hosts may hold it."""
    assert parse_address("[a..b]:80").sockaddr == ("a..b", 80)
    with pytest.raises(ValueError, match="not a host name or address"):
        parse_address(f"{host}:80")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n" * 256 + "=127.0.0.1:80", "a listener name is at most 255 bytes"),
        ("é" * 128 + "=127.0.0.1:80", "a listener name is at most 255 bytes"),
        ("h." * 150 + "h:80", "a listener name is at most 255 bytes: give NAME=ADDR"),
        ("/" + "p" * 107, "a UNIX socket path is at most 107 bytes, not 108"),
        ("@" + "p" * 108, "a UNIX socket path is at most 107 bytes, not 108"),
        ("/" + "\udcff" * 70, "a listener name is at most 255 bytes: give NAME=ADDR"),
    ],
)
def test_names_and_paths_too_long(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        parse_address(text)
    assert len(str(err.value)) < 200  # the bad value is quoted cut


def test_longest_names_and_paths_pass() -> None:
    assert parse_address("n" * 255 + "=127.0.0.1:80").name == "n" * 255
    assert parse_address("/" + "p" * 106).sockaddr == "/" + "p" * 106
    assert parse_address("x=/" + "\udcff" * 106).name == "x"


@pytest.mark.parametrize(
    ("addr", "shown"),
    [
        ("", "unix"),  # an unbound client
        ("/tmp/c.sock", "/tmp/c.sock"),
        (UNDECODABLE_PATH, "/run/a\\udcff.sock"),
        ("/tmp/a\nb", "/tmp/a\nb"),  # escaped where it is printed, not here
        (b"\0abstract", "@abstract"),
        (b"\0\xff", "@\ufffd"),
    ],
)
def test_unix_peers_are_valid_utf8(addr: str | bytes, shown: str) -> None:
    assert PEER_FORMAT[socket.AF_UNIX](addr) == shown


@pytest.mark.parametrize(
    ("names", "bad"),
    [
        ("web:\udcff", "name 2 '\\udcff'"),  # a non-UTF-8 byte, as os.environ holds it
        ("web:é", "name 2 'é'"),
        ("a\nb", "name 1 'a\\nb'"),
        ("n" * 256, "name 1 'nnnn"),
    ],
)
def test_listen_fdnames_systemd_would_not_pass(names: str, bad: str) -> None:
    with pytest.raises(Fatal) as err:
        check_fdnames({"LISTEN_FDNAMES": names})
    assert err.value.code == ExitCode.ACTIVATION
    assert err.value.message.startswith(f"LISTEN_FDNAMES: {bad}")
    assert "\n" not in err.value.message and len(err.value.message) < 200


def test_listen_fdnames_systemd_passes() -> None:
    assert check_fdnames({"LISTEN_FDNAMES": "web:admin:" + "n" * 255}) == [
        "web",
        "admin",
        "n" * 255,
    ]
    assert check_fdnames({"LISTEN_FDNAMES": "a::b"}) == ["a", "", "b"]
    assert check_fdnames({}) is None


# (first, second, what clashes() says: None, or which of the two is the wildcard, or "same"
# for the same address)
PAIRS = [
    ("127.0.0.1:{p}", "127.0.0.1:{p}", "same"),
    ("127.0.0.1:{p}", "127.1:{p}", "same"),  # the kernel reads 127.1 as 127.0.0.1
    ("127.0.0.1:{p}", "127.0.0.2:{p}", None),
    ("0.0.0.0:{p}", "127.0.0.1:{p}", 0),
    ("127.0.0.1:{p}", "0.0.0.0:{p}", 1),
    ("{p}", "127.0.0.1:{p}", 0),  # PORT alone is dual-stack: every address
    ("[::1]:{p}", "{p}", 1),
    ("[::]:{p}", "0.0.0.0:{p}", 0),
    ("[]:{p}", "127.0.0.1:{p}", 0),  # Python's any address, bound dual-stack as `::` is
    ("127.0.0.1:{p}", "[::1]:{p}", None),
    ("127.0.0.1:{p}", "[::ffff:127.0.0.1]:{p}", "same"),
    ("0.0.0.0:{p}", "[::1]:{p}", None),
    ("127.0.0.1:{p}", "127.0.0.1:0", None),
    ("{d}/a.sock", "{d}/./a.sock", "same"),
    ("{d}/a.sock", "/{d}//a.sock", "same"),
    ("{d}/a.sock", "{d}/link/../a.sock", None),  # elsewhere: link leads to b/c
    ("{d}/a.sock", "{d}/b.sock", None),
    ("@sockpool-clash-{p}", "@sockpool-clash-{p}", "same"),
]


@pytest.mark.parametrize(("first", "second", "wildcard"), PAIRS)
def test_clashes_are_those_the_kernel_refuses(first, second, wildcard, tmp_path) -> None:
    """What --check says cannot be bound together is what bind() then refuses."""
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "b" / "c")
    with socket.socket(socket.AF_INET6) as probe:  # a port free on every address
        probe.bind(("::", 0))
        port = probe.getsockname()[1]
    texts = [t.format(p=port, d=tmp_path) for t in (first, second)]
    addresses = [parse_address(t) for t in texts]
    expected = None if wildcard is None else (0, 1, None if wildcard == "same" else wildcard)
    assert clashes(addresses) == expected
    bound = [bind(addresses[0])]
    try:
        if wildcard is None:
            bound.append(bind(addresses[1]))
        else:
            with pytest.raises(Fatal, match="Address already in use"):
                bound.append(bind(addresses[1]))
    finally:
        for listener in bound:
            listener.close()
