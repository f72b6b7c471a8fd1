"""What the system tests share: a sockpool unit in the test machine, clients, the journal."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

from nspawn import Container

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
Address = tuple[str, int] | Path  # (host, port) for TCP, a path for AF_UNIX
CLIENT_TIMEOUT = 20.0  # covers a service (re)start while the connection waits in the backlog


def wait_until(check: Callable[[], T], what: str, timeout: float = 30) -> T:
    """Poll check() until it returns something truthy; fail the test naming `what`."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
    return value


# -- the journal -----------------------------------------------------------------------------


def _text(value: Any) -> str:
    """journalctl -o json gives a string, a byte array (list of ints), or a list of values."""
    if isinstance(value, str):
        return value
    if value and all(isinstance(v, int) for v in value):
        return bytes(value).decode(errors="replace")
    return "\n".join(_text(v) for v in value)


def journal(machine: Container, *matches: str) -> list[dict[str, str]]:
    """Entries matching journalctl arguments (`-u UNIT`, `FIELD=VALUE`, ...), oldest first."""
    machine.run("journalctl", "--sync")
    out = machine.run("journalctl", "--no-pager", "-o", "json", *matches).stdout
    return [{k: _text(v) for k, v in json.loads(line).items()} for line in out.splitlines() if line]


# -- units -----------------------------------------------------------------------------------


@dataclass
class Unit:
    """A socket-activated sockpool service (NAME.socket + NAME.service) in the machine."""

    machine: Container
    name: str  # "sockpool-echo", "sockpool@boom"

    @property
    def socket(self) -> str:
        return f"{self.name}.socket"

    @property
    def service(self) -> str:
        return f"{self.name}.service"

    def prop(self, name: str) -> str:
        return self.machine.show(self.service, name)

    def state(self) -> str:
        return self.prop("ActiveState")

    def main_pid(self) -> int:
        return int(self.prop("MainPID"))

    def workers(self) -> set[int]:
        """PIDs of the dispatcher's children."""
        pid = self.main_pid()
        children = self.machine.run("sh", "-c", f"cat /proc/{pid}/task/*/children", check=False)
        return {int(child) for child in children.stdout.split()}

    def start_socket(self) -> None:
        self.machine.systemctl("start", self.socket)

    def wait_state(self, state: str, timeout: float = 30) -> None:
        wait_until(lambda: self.state() == state, f"{self.service} {state}", timeout)

    def wait_running(self, timeout: float = 30) -> int:
        """Wait for the service to be up and return its MainPID."""
        wait_until(lambda: self.prop("SubState") == "running", f"{self.service} running", timeout)
        return self.main_pid()

    def stop(self) -> None:
        """Stop service and socket, forget failures: the next test starts from scratch."""
        self.machine.systemctl("stop", self.service, self.socket, check=False)
        self.machine.systemctl("reset-failed", self.service, self.socket, check=False)

    def journal(self, *matches: str) -> list[dict[str, str]]:
        return journal(self.machine, "-u", self.service, *matches)


# -- clients ---------------------------------------------------------------------------------


def connect(address: Address) -> socket.socket:
    if isinstance(address, Path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = str(address)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        target = address
    sock.settimeout(CLIENT_TIMEOUT)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def request(address: Address, payload: bytes) -> bytes:
    """Send payload, close our side, return everything the server sent until it closed."""
    with connect(address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return read_to_eof(sock)


class Held:
    """A connection kept open across an operation on the service (a long request in flight)."""

    def __init__(self, address: Address) -> None:
        self.sock = connect(address)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, size: int) -> bytes:
        """size bytes, or fewer if the server closes first."""
        got = b""
        while len(got) < size and (chunk := self.sock.recv(size - len(got))):
            got += chunk
        return got

    def echo(self, data: bytes) -> bytes:
        """Send data and read back as many bytes."""
        self.send(data)
        return self.receive(len(data))

    def finish(self) -> bytes:
        """Close our side; what the server still sends before its orderly close."""
        self.sock.shutdown(socket.SHUT_WR)
        try:
            return read_to_eof(self.sock)
        finally:
            self.sock.close()


@dataclass
class EchoLoad:
    """Clients that each connect, echo one message, close, and again; bounded in count and time.

    Every failure is kept: a refused or reset connection, a timeout, a wrong answer.
    """

    address: Address
    clients: int = 3
    max_connections: int = 20_000
    max_seconds: float = 120
    pause: float = 0.01  # per client between connections: steady load, not a CPU hog
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    _started: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Self:
        deadline = time.monotonic() + self.max_seconds
        self._threads = [
            threading.Thread(target=self._client, args=(deadline,), daemon=True)
            for _ in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT + 5)

    def _client(self, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self._started >= self.max_connections:
                    return
                n, self._started = self._started, self._started + 1
            payload = f"load {n}\n".encode()
            try:
                answer = request(self.address, payload)
                error = None if answer == payload else f"#{n}: answer {answer[:40]!r}"
            except OSError as exc:
                error = f"#{n}: {exc!r}"
            with self._lock:
                if error:
                    self.errors.append(error)
                else:
                    self.ok += 1
            time.sleep(self.pause)

    def progress(self, count: int = 30, timeout: float = 30) -> None:
        """Wait until `count` more connections have been answered: the load is flowing."""
        target = self.ok + count
        wait_until(lambda: self.ok >= target or self.errors, f"{count} answered", timeout)
