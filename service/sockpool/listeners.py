"""Listening sockets: taken over from systemd's socket activation, or bound by us for development.

Activation sockets belong to systemd, which keeps them (and their queued connections)
across restarts: we never re-listen(), shutdown() or unlink them, only accept on them.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
import socket
import stat
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from . import log
from .errors import ExitCode, Fatal, quote, utf8_text, whole_number
from .events import Event

LISTEN_FDS_START = 3
MAX_LISTEN_FDS = 1024
MAX_PID = 1 << 22  # Linux's pids end at 2**22 (pid_max's limit)
MAX_NAME = 255  # bytes of a listener name: systemd's FDNAME_MAX, and the wire's u8 length
MAX_UNIX_PATH = 107  # bytes of sun_path, less the NUL (or, abstract, the leading NUL)
_NAME_PREFIX = re.compile(r"([\w.@-]+)=(.+)", re.DOTALL)  # fullmatch: `$` passes a last LF
# In the journal and on stderr the address is written as it was given: a newline in it
# would forge a log line. (A NUL is refused by what it is in: no host, path or name has one.)
_CONTROL = re.compile(r"[\x01-\x1f\x7f]")
_FAMILIES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6", socket.AF_UNIX: "UNIX"}
# accept()'s errors: a peer gone before it was accepted (skip it), and no descriptor or
# memory for it (pause: retrying at once would spin), whoever accepts (hotpath, direct).
PEER_GONE = {errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET, errno.EINTR}
NO_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_PAUSE = 0.5  # seconds
ACCEPT_ERROR_LOG_INTERVAL = 10.0


class AcceptPause:
    """After EMFILE & co.: no accepting until `until` (ACCEPT_PAUSE on), the backlog waits.
    The first failure is said, then a count at most every ACCEPT_ERROR_LOG_INTERVAL."""

    def __init__(self, who: str) -> None:
        self.who = who  # "accept" (the dispatcher), "worker accept"
        self.until = 0.0
        self.errors = 0
        self.next_log = 0.0

    def __call__(self, now: float, exc: OSError) -> None:
        self.until = now + ACCEPT_PAUSE
        self.errors += 1
        if now >= self.next_log:
            self.next_log = now + ACCEPT_ERROR_LOG_INTERVAL
            log.event(
                Event.ACCEPT_ERROR,
                "%s failed %d times: %s; retrying every %gs (logged at most every %gs)",
                self.who,
                self.errors,
                exc.strerror,
                ACCEPT_PAUSE,
                ACCEPT_ERROR_LOG_INTERVAL,
                level=logging.WARNING,
            )
            self.errors = 0


def _format_inet(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}"


def _format_inet6(addr: Any) -> str:
    return f"[{addr[0]}]:{addr[1]}"


def _format_unix(addr: Any) -> str:
    if isinstance(addr, bytes):  # abstract namespace
        # systemd's way: a leading NUL shows as "@", and so does one inside the name, so
        # no PEER ever holds a NUL (proxyproto's TLVs ride behind one).
        return "@" + addr.lstrip(b"\0").replace(b"\0", b"@").decode(errors="replace")
    return utf8_text(addr) if addr else "unix"


PEER_FORMAT: dict[int, Callable[[Any], str]] = {
    socket.AF_INET: _format_inet,
    socket.AF_INET6: _format_inet6,
    socket.AF_UNIX: _format_unix,
}


@dataclass(eq=False)
class Listener:
    name: str
    sock: socket.socket
    address: str
    owned: bool = False  # bound by us (--listen): ours to close and unlink
    path: str | None = None

    def __post_init__(self) -> None:
        self.format_peer: Callable[[Any], str] = PEER_FORMAT[self.sock.family]
        # What its connections are: (family, type, proto), as socket.socket() takes them.
        # The kernel's proto (IPPROTO_TCP), not 0 as a socket we made may have been given.
        proto = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        self.kind = (int(self.sock.family), int(self.sock.type), proto)
        # TCP_DEFER_ACCEPT as systemd set it (DeferAcceptSec=), read in the main process
        # before any dispatcher: a PROXY listener's is ours, to put back (hotpath.configure).
        # Read later, in one of N dispatchers, it could be what a sibling set.
        self.defer_accept: int | None = None
        if self.sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                self.defer_accept = self.sock.getsockopt(
                    socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT
                )

    def close(self) -> None:
        """Close our copy; an owned UNIX socket's file goes too."""
        self.sock.close()
        if self.owned and self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def kinds(listeners: list[Listener]) -> dict[str, tuple[int, int, int]]:
    """What each name's connections are, for workers to build them without asking the
    kernel: only names whose sockets are all of one kind. A socket unit's sockets share one
    name (the template's TCP and AF_UNIX ones), and a connection built as the other family
    gets the other's peer credentials (none for UNIX clients, pid 0 and uid -1 for TCP)."""
    known: dict[str, tuple[int, int, int]] = {}
    mixed = set()
    for lst in listeners:
        if known.setdefault(lst.name, lst.kind) != lst.kind:
            mixed.add(lst.name)
    return {name: kind for name, kind in known.items() if name not in mixed}


@dataclass(frozen=True)
class Address:
    name: str | None
    family: int
    sockaddr: Any
    text: str

    @property
    def listener(self) -> str:
        """The name its listener goes by: NAME, else ADDR as given."""
        return self.name or self.text


def parse_address(text: str) -> Address:
    """`[NAME=]ADDR` with ADDR one of HOST:PORT, [V6]:PORT, PORT, /path.sock, @abstract.

    The listener's name (NAME, else ADDR as text) must fit the handoff's 255 bytes; the
    text is kept valid UTF-8 (undecodable bytes escaped) while a path is bound byte for byte.
    """
    if _CONTROL.search(text):
        raise ValueError(f"{quote(text)}: a control character in an address")
    name = None
    match = _NAME_PREFIX.fullmatch(text)
    if match and not text.startswith(("/", "@", "[")):
        name, text = match.groups()
    address = _parse(name, text)
    own = address.listener
    if len(own.encode()) > MAX_NAME:
        raise ValueError(
            f"{quote(own)}: a listener name is at most {MAX_NAME} bytes"
            + ("" if address.name else ": give NAME=ADDR")
        )
    return address


_EVERY4 = ipaddress.IPv4Address("0.0.0.0")
_EVERY = ipaddress.IPv6Address("::")  # bound dual-stack (bind()): every IPv4 address too


def clashes(addresses: list[Address]) -> tuple[int, int, int | None] | None:
    """The first two of `addresses` that cannot both be bound, as Linux has it for two
    listening sockets (EADDRINUSE), as (earlier, later, the wildcard's index or None); None
    if there are none. The same path; or the same port with the same IP address, or a
    wildcard that covers the other. An IPv4-mapped IPv6 address counts as its IPv4 one. A
    host name is compared as written: it is resolved only at bind. Port 0 gets one of its
    own."""
    paths: dict[str, int] = {}
    ports: dict[int, list[tuple[object, int]]] = {}
    for i, address in enumerate(addresses):
        if address.family == socket.AF_UNIX:
            if (j := paths.setdefault(_path(address.sockaddr), i)) != i:
                return j, i, None
            continue
        host, port = _host(address.sockaddr[0]), address.sockaddr[1]
        if not port:
            continue
        for other, j in ports.get(port, []):
            if other == host:
                return j, i, None
            if other == _EVERY or _covers(other, host):
                return j, i, j
            if host == _EVERY or _covers(host, other):
                return j, i, i
        ports.setdefault(port, []).append((host, i))
    return None


def _covers(wide: object, host: object) -> bool:
    return wide == _EVERY4 and isinstance(host, ipaddress.IPv4Address)


def _path(path: str) -> str:
    """A socket file's path as the kernel finds it (`/a/./b.sock`, `//a/b.sock`: `/a/b.sock`);
    an abstract name as it is. `..` stays: after a symbolic link it leads elsewhere."""
    if path.startswith("\0"):
        return path
    return "/" + "/".join(part for part in path.split("/") if part not in ("", "."))


def _host(host: str) -> object:
    """An IP address as the kernel reads it (`127.1` is 127.0.0.1; `[]`, Python's any
    address, is `::`), else the name."""
    if not host:
        return _EVERY
    with contextlib.suppress(OSError):
        return ipaddress.IPv4Address(socket.inet_aton(host))
    with contextlib.suppress(OSError):
        v6 = ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, host))
        return v6.ipv4_mapped or v6
    return host.lower()


def _parse(name: str | None, text: str) -> Address:
    shown = utf8_text(text)
    if text.startswith("/") or (text.startswith("@") and len(text) > 1):
        path = text if text.startswith("/") else "\0" + text[1:]
        size = len(os.fsencode(text.lstrip("@")))
        if size > MAX_UNIX_PATH:
            raise ValueError(
                f"{quote(shown)}: a UNIX socket path is at most {MAX_UNIX_PATH} bytes, not {size}"
            )
        return Address(name, socket.AF_UNIX, path, shown)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{quote(shown)}: expected [IPV6]:PORT")
        host = _hostname(shown, host, ascii_as_is=True)
        return Address(name, socket.AF_INET6, (host, _port(shown, port)), shown)
    host, sep, port = text.rpartition(":")
    if not sep:
        if not socket.has_ipv6:
            return Address(name, socket.AF_INET, ("0.0.0.0", _port(shown, text)), shown)
        return Address(name, socket.AF_INET6, ("::", _port(shown, text)), shown)
    if not host or ":" in host:
        raise ValueError(f"{quote(shown)}: expected HOST:PORT, [IPV6]:PORT, PORT or /path")
    return Address(name, socket.AF_INET, (_hostname(shown, host), _port(shown, port)), shown)


def _hostname(text: str, host: str, ascii_as_is: bool = False) -> str:
    """What Python's getaddrinfo() can take (HOST:PORT goes through it): no NUL, and a name
    IDNA can encode (an empty label, one over 63 bytes, bytes that are not UTF-8 raise).
    `ascii_as_is`: for bind() ([HOST]:PORT), which encodes only a name that is not ASCII
    (/etc/hosts may name `a..b`)."""
    try:
        if "\0" in host:
            raise UnicodeError
        if not (ascii_as_is and host.isascii()):
            host.encode("idna")
    except UnicodeError:
        raise ValueError(f"{quote(text)}: not a host name or address") from None
    return host


def _port(text: str, port: str) -> int:
    number = whole_number(port, 65535)
    if number is None:
        raise ValueError(f"{quote(text)}: port must be a number from 0 to 65535")
    return number


def bind(address: Address) -> Listener:
    """Bind and listen on an address given with --listen (development, or no systemd)."""
    family, sockaddr = address.family, address.sockaddr
    if family == socket.AF_INET and not _is_ip(sockaddr[0]):
        family, sockaddr = _resolve(address)
    sock = None
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)  # out of descriptors: EMFILE here
        if family == socket.AF_UNIX:
            _remove_stale_unix_socket(address.sockaddr)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and _host(sockaddr[0]) == _EVERY:  # ::, ::0, [] alike
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # as systemd does
        sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise Fatal(ExitCode.BIND, f"cannot listen on {address.text}: {exc.strerror}") from None
    path = sockaddr if family == socket.AF_UNIX and sockaddr[0] != "\0" else None
    return Listener(address.listener, sock, address.text, owned=True, path=path)


def _is_ip(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def _resolve(address: Address) -> tuple[int, Any]:
    host, port = address.sockaddr
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Fatal(ExitCode.BIND, f"cannot listen on {address.text}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _remove_stale_unix_socket(path: str) -> None:
    """Unlink a socket file nobody listens on any more; refuse to steal a live one."""
    if path.startswith("\0"):
        return
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # bind will fail with EADDRINUSE and say so
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


def from_activation(env: MutableMapping[str, str]) -> list[Listener] | None:
    """Take the sockets systemd passed us; None when this is no socket activation.

    We validate the variables ourselves first: sd_listen_fds() silently returns 0 for a
    LISTEN_PID that is not ours, which would turn a wiring mistake into "no sockets".
    """
    if "LISTEN_FDS" not in env and "LISTEN_PID" not in env:
        return None
    count = _check_environment(env)
    names = env.get("LISTEN_FDNAMES")
    for index in range(count):
        _check_descriptor(LISTEN_FDS_START + index, count, names)

    from systemd import daemon  # after the checks: it would accept what we refuse

    passed = daemon.listen_fds_with_names(unset_environment=True)
    for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(var, None)  # the C unsetenv leaves os.environ's copy for children to inherit
    return [_adopt(fd, name) for fd, name in sorted(passed.items())]


def _check_environment(env: MutableMapping[str, str]) -> int:
    pid, fds = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    # systemd writes both in decimal, and libsystemd reads a leading 0 as octal: refused.
    number = whole_number(pid, MAX_PID)
    if number is None or pid.startswith("0"):
        raise Fatal(ExitCode.ACTIVATION, f"LISTEN_PID={quote(pid)} is not a process id")
    if number != os.getpid():
        raise Fatal(
            ExitCode.ACTIVATION,
            f"LISTEN_PID={pid} is another process (this is {os.getpid()}): "
            "the sockets were passed to someone else; start sockpool directly from systemd",
        )
    count = whole_number(fds, MAX_LISTEN_FDS)
    if count is None or count < 1 or fds.startswith("0"):
        raise Fatal(
            ExitCode.ACTIVATION,
            f"LISTEN_FDS={quote(fds)} is not a count from 1 to {MAX_LISTEN_FDS}",
        )
    names = check_fdnames(env)
    if names is not None and len(names) != count:
        raise Fatal(
            ExitCode.ACTIVATION,
            f"LISTEN_FDNAMES={quote(env['LISTEN_FDNAMES'])} names {len(names)} sockets, "
            f"LISTEN_FDS={fds} passes {fds}",
        )
    return count


def check_fdnames(env: Mapping[str, str]) -> list[str] | None:
    """LISTEN_FDNAMES split, each name one systemd could have passed (its fdname_is_valid:
    printable ASCII without ':', at most 255 characters); None when it is not set.
    Anything else, undecodable bytes included, is refused here: python-systemd would
    fail on it with a SystemError, and the wire and the journal could not carry it."""
    text = env.get("LISTEN_FDNAMES")
    if text is None:
        return None
    names = text.split(":")
    for number, name in enumerate(names, 1):
        if len(name) > MAX_NAME or not (name.isascii() and name.isprintable()):
            raise Fatal(
                ExitCode.ACTIVATION,
                f"LISTEN_FDNAMES: name {number} {quote(name)} is not a socket name systemd "
                f"passes: printable ASCII, at most {MAX_NAME} characters",
            )
    return names


def _describe(fd: int, names: str | None) -> str:
    name = names.split(":")[fd - LISTEN_FDS_START] if names else None
    return f"descriptor {fd}" + (f" ({quote(name)})" if name else "")


def _check_descriptor(fd: int, count: int, names: str | None) -> None:
    what = _describe(fd, names)
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        raise Fatal(ExitCode.BAD_DESCRIPTOR, f"LISTEN_FDS={count} but {what} is not open") from None
    if not stat.S_ISSOCK(mode):
        raise Fatal(ExitCode.BAD_DESCRIPTOR, f"{what} from LISTEN_FDS is not a socket")


def _adopt(fd: int, name: str) -> Listener:
    sock = socket.socket(fileno=fd)
    what = f"descriptor {fd} ({quote(name)})"
    problem = None
    if sock.type != socket.SOCK_STREAM:
        problem = "is not a stream socket: use ListenStream=, not ListenDatagram= and the like"
    elif sock.family not in _FAMILIES:
        problem = f"has address family {sock.family!r}: sockpool serves TCP and UNIX sockets"
    elif not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        problem = "is not listening: use Accept=no in the .socket unit"
    if problem:
        sock.detach()  # not ours to close
        raise Fatal(ExitCode.BAD_DESCRIPTOR, f"{what} {problem}")
    try:
        address = PEER_FORMAT[sock.family](sock.getsockname())
    except OSError:
        address = "?"
    return Listener(name, sock, address)
