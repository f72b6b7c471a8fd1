"""What the system tests share: a sockpool unit in the test machine, clients, the journal."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import harness
from harness import REPO, Address, Load, read_to_eof
from nspawn import Container

__all__ = [
    "REPO",
    "Held",
    "Unit",
    "connect",
    "journal",
    "request",
    "steady_load",
    "wait_until",
]
T = TypeVar("T")
CLIENT_TIMEOUT = 20.0  # covers a service (re)start while the connection waits in the backlog


def wait_until(check: Callable[[], T], what: str, timeout: float = 30) -> T:
    """harness.wait_until, polling less often: a check here often runs a command in the machine."""
    return harness.wait_until(check, what, timeout, interval=0.1)


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


def listen_on(address: tuple[str, int]) -> str:
    """A .socket drop-in that moves its unit to `address` (the shipped port may be taken:
    the machines share the host's network)."""
    return f"[Socket]\nListenStream=\nListenStream={address[0]}:{address[1]}\n"


@dataclass
class Unit:
    """A socket-activated sockpool service (NAME.socket + NAME.service) in the machine."""

    machine: Container
    name: str  # "sockpool-echo", "sockpool@boom"
    dispatchers: int = 1  # more: the workers are the main process's grandchildren

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
        """PIDs of the dispatchers' children: with one dispatcher, the main process's."""
        pids = {self.main_pid()}
        for _ in range(1 + (self.dispatchers > 1)):
            pids = self.children(pids)
        return pids

    def slice_ns(self, pid: int) -> int | None:
        """A process's CPU slice (see harness.sched_slice_ns)."""
        return harness.sched_slice_ns(self.machine.run("cat", f"/proc/{pid}/sched").stdout)

    def children(self, pids: set[int]) -> set[int]:
        paths = " ".join(f"/proc/{pid}/task/*/children" for pid in pids)
        children = self.machine.run("sh", "-c", f"cat {paths}", check=False)
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
    return harness.connect(address, CLIENT_TIMEOUT)


def request(address: Address, payload: bytes) -> bytes:
    """Send payload, close our side, return everything the server sent until it closed."""
    return harness.request(address, payload, CLIENT_TIMEOUT)


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


def steady_load(address: Address, seconds: float = 120) -> Load:
    """Three clients, each connecting, echoing one message and closing every 10 ms or so:
    a load that goes on through an operation on the service, not a CPU hog."""
    return Load(
        address, clients=3, limit=7_000, seconds=seconds, pause=0.01, timeout=CLIENT_TIMEOUT
    )
