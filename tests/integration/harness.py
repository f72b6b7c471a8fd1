"""sockpool under the real `systemd-socket-activate`, and clients that check what they get.

systemd-socket-activate binds the sockets, waits for the first connection and then execs
the installed `sockpool` with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set: the same contract
a .socket unit gives. A datagram socket stands in for systemd's NOTIFY_SOCKET, so tests
wait for READY=1 instead of sleeping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOCKPOOL = str(Path(sys.executable).with_name("sockpool"))
ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
Address = tuple[str, int] | str  # (host, port) or a UNIX socket path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(address: Address, timeout: float = 10.0) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def request(address: Address, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send payload, half-close, read everything until the server closes."""
    with connect(address, timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def wait_until(check: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Service:
    """One sockpool process started by systemd-socket-activate."""

    tmp: Path
    args: list[str]
    listen: list[str]
    fdnames: list[str] | None = None
    wrapper: list[str] = field(default_factory=list)  # e.g. ["env", "LISTEN_PID=1"]
    datagram: bool = False
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    notifications: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # A short private directory: AF_UNIX paths are limited to 107 bytes.
        self.tmp = Path(tempfile.mkdtemp(prefix="sockpool-", dir=self.tmp))
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path = str(self.tmp / "notify")
        self.notify.bind(self.notify_path)
        self.log_path = self.tmp / "sockpool.log"

    @property
    def addresses(self) -> list[Address]:
        return [a if a.startswith("/") else _host_port(a) for a in self.listen]

    @property
    def address(self) -> Address:
        return self.addresses[0]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait_ready: bool = True) -> Service:
        env = {"PYTHONPATH": str(HERE), "NOTIFY_SOCKET": self.notify_path, **self.env}
        cmd = [ACTIVATE, *(f"--listen={a}" for a in self.listen)]
        if self.datagram:
            cmd.append("--datagram")
        if self.fdnames:
            cmd.append("--fdname=" + ":".join(self.fdnames))
        cmd += [f"--setenv={k}={v}" for k, v in env.items()]
        cmd += [*self.wrapper, SOCKPOOL, "--log-target=stderr", *self.args]
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self._listening, "systemd-socket-activate to listen")
        # The first connection (datagram) makes systemd-socket-activate exec sockpool.
        if self.datagram:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
                dgram.sendto(b"x", self.address)
            return self
        self.trigger = connect(self.address)
        if wait_ready:
            self.wait_for("READY=1")
            self.trigger.close()  # it would hold a sync worker
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"exited early: {self.output()}")
        return b"Listening on" in self.log_path.read_bytes()

    def read_notifications(self) -> list[str]:
        self.notify.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.notifications.extend(self.notify.recv(4096).decode().split("\n"))
        return self.notifications

    def wait_for(self, assignment: str, timeout: float = 15.0) -> None:
        def seen() -> bool:
            self.read_notifications()
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"sockpool exited {self.proc.returncode}: {self.output()}")
            return assignment in self.notifications

        wait_until(seen, f"{assignment} from sockpool (log: {self.log_path})", timeout)

    def statuses(self) -> list[str]:
        return [n for n in self.read_notifications() if n.startswith("STATUS=")]

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(AttributeError):
            self.trigger.close()
        self.notify.close()
        self.log.close()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


@dataclass
class Load:
    """Clients in threads, each doing request after request until stopped; every answer
    is checked. Bounded: at most `limit` requests per client and `seconds` in all."""

    address: Address
    clients: int = 8
    limit: int = 100_000
    seconds: float = 30.0
    ok: int = 0
    refused: int = 0
    reset: int = 0
    wrong: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(self.clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self, client: int) -> None:
        deadline = time.monotonic() + self.seconds
        for n in range(self.limit):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            payload = f"client {client} request {n}\n".encode()
            outcome = "ok"
            try:
                if request(self.address, payload) != payload:
                    outcome = "wrong"
            except ConnectionRefusedError as exc:
                outcome, detail = "refused", exc
            except (ConnectionResetError, BrokenPipeError) as exc:
                outcome, detail = "reset", exc
            except OSError as exc:
                outcome, detail = "wrong", exc
            with self._lock:
                setattr(self, outcome, getattr(self, outcome) + 1)
                if outcome != "ok":
                    self.errors.append(f"{outcome}: {detail if outcome != 'wrong' else payload}")

    def join(self) -> None:
        """Let every client finish its `limit` requests (or run out of `seconds`)."""
        for t in self._threads:
            t.join()

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        wait_until(lambda: self.ok >= count, f"{count} answered requests", timeout)

    def summary(self) -> str:
        return (
            f"ok={self.ok} refused={self.refused} reset={self.reset} wrong={self.wrong} "
            f"{self.errors[:5]}"
        )


@contextlib.contextmanager
def started(service: Service) -> Iterator[Service]:
    try:
        yield service.start()
    finally:
        service.stop()
