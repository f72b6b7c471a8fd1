"""Servers under the real `systemd-socket-activate`, and clients that check what they get.

One module for the integration tests, the system tests (their clients reach the machine's
sockets from the host) and the bench harness (`python -m bench.run` imports it as
tests.harness; pytest puts tests/ on the path).

systemd-socket-activate binds the sockets, waits for the first connection and then execs
the server with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set: the same contract a .socket unit
gives. A datagram socket can stand in for systemd's NOTIFY_SOCKET, so tests wait for
READY=1 instead of sleeping.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self, TypeVar

import pytest

from sockpool.events import Event
from sockpool.lifecycle import Record
from sockpool.unsent import in_memory

REPO = Path(__file__).resolve().parent.parent
SOCKPOOL = str(Path(sys.executable).with_name("sockpool"))
ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
Address = tuple[str, int] | str | Path  # (host, port), or the path of an AF_UNIX socket
T = TypeVar("T")


def wait_until(
    check: Callable[[], T], what: str, timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Poll check() until it returns something truthy, and return that; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return value


def proc_stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command's name (which may hold spaces and
    parentheses): [0] the state ("Z" a zombie), [1] the parent, [3] the session, [11] and
    [12] user and system ticks. OSError once the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used, user and system: for the claims that it does not spin."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def readme_block(name: str) -> str:
    """The fenced block after `<!-- readme-block: NAME -->` in README.md: configuration the
    README shows, which tests then run as it is written."""
    text = (REPO / "README.md").read_text()
    marker = f"<!-- readme-block: {name} -->\n"
    assert text.count(marker) == 1, f"README.md has no single block {name!r}"
    after = text.split(marker, 1)[1]
    assert after.startswith("```"), f"README.md: {name!r} is not followed by a fenced block"
    return after.split("\n", 1)[1].split("\n```\n", 1)[0] + "\n"


def replaced(text: str, replacements: dict[str, str]) -> str:
    """text with each key replaced by its value; a key that is not there is an error, so a
    README that moved on fails the test that rewrites it."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is not in:\n{text}"
        text = text.replace(old, new)
    return text


# -- clients ---------------------------------------------------------------------------------


def open_fds() -> int:
    """Descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def sched_slice_ns(sched: str) -> int | None:
    """A task's scheduler slice in ns, from the text of its /proc/PID/sched (None: the
    kernel shows none)."""
    for line in sched.splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    return None


def custom_slices() -> bool:
    """Linux 6.12 and later: a normal task may ask for its own slice (sched_setattr's
    sched_runtime), and /proc/PID/sched shows it."""
    major, minor = os.uname().release.split(".")[:2]
    sched = Path("/proc/self/sched")  # a kernel without CONFIG_SCHED_DEBUG has none
    return (
        (int(major), int(minor)) >= (6, 12)
        and sched.exists()
        and sched_slice_ns(sched.read_text()) is not None
    )


def a_file(where: Path, data: bytes, flags: int = os.O_RDONLY) -> int:
    """`data` in the file `where`/download, opened: a download a worker sends (disk_path)."""
    path = where / "download"
    path.write_bytes(data)
    return os.open(path, flags | os.O_CLOEXEC)


@pytest.fixture
def disk_path() -> Iterator[Path]:
    """A directory on a disk, for a file a worker hands over as the file: pytest's
    tmp_path is in /tmp, which is tmpfs on many hosts (Fedora, Arch, Debian 13), where a
    file's bytes are memory and are copied as bytes are (unsent.pinned). /var/tmp, which
    the FHS keeps on a disk, else the checkout's build/; skipped where both are memory."""
    for parent in (Path("/var/tmp"), REPO / "build"):
        parent.mkdir(exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=parent, prefix="sockpool-test-"))
        probe = os.open(path / "probe", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC)
        try:
            on_disk = not in_memory(probe)
        finally:
            os.close(probe)
        if on_disk:
            break
        shutil.rmtree(path)
    else:
        pytest.skip("/var/tmp and the checkout are both in memory here")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(client, server) of one loopback TCP connection: the server end is what a listener
    accepted, as the dispatcher or a worker holds it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def connect(address: Address, timeout: float = 10.0, source: str | None = None) -> socket.socket:
    """A connected client socket; `source` binds it to that local address first (another
    loopback address is another peer to per-source limits)."""
    if isinstance(address, tuple):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        target: tuple[str, int] | str = address
    else:
        family, target = socket.AF_UNIX, str(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if source is not None:
            sock.bind((source, 0))
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def request(address: Address, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send payload, half-close, read everything until the server closes."""
    with connect(address, timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return read_to_eof(sock)


SAMPLES = 20  # failures kept verbatim


@dataclass
class Load:
    """Clients in threads, each connecting, sending a payload unique to the connection,
    half-closing and checking the answer, again and again until stopped. Bounded: `limit`
    connections per client and `seconds` in all.

    Each connection is counted once: ok (its echo), refused, reset (or a broken pipe),
    closed (no answer), mismatched (another answer), or other (another OSError: a timeout,
    a reset before our shutdown). `wrong` and `cut` group them for the claims tests make.
    """

    address: Address
    clients: int = 8
    limit: int = 100_000
    seconds: float = 30.0
    pause: float = 0.0  # per client between connections: a steady load, not a CPU hog
    timeout: float = 10.0  # per connection
    ok: int = 0
    refused: int = 0
    reset: int = 0
    closed: int = 0
    mismatched: int = 0
    other: int = 0
    errors: list[str] = field(default_factory=list)  # the first SAMPLES failures
    # Answers by who served them, for clients whose answer names it (_served_by()).
    served: Counter[object] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True)
            for i in range(self.clients)
        ]

    def __enter__(self) -> Self:
        self._deadline = time.monotonic() + self.seconds
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def wrong(self) -> int:
        """Neither refused nor reset, and yet not the echo."""
        return self.closed + self.mismatched + self.other

    @property
    def cut(self) -> int:
        """The connection ended without an answer."""
        return self.reset + self.closed + self.other

    @property
    def done(self) -> int:
        return self.ok + self.refused + self.cut + self.mismatched

    def _client(self, client: int) -> None:
        for n in range(self.limit):
            if self._stop.is_set() or time.monotonic() > self._deadline:
                return
            payload = f"client {client} request {n} {random.getrandbits(64):016x}\n".encode()
            outcome, detail = self._one(payload)
            with self._lock:
                setattr(self, outcome, getattr(self, outcome) + 1)
                if outcome != "ok" and len(self.errors) < SAMPLES:
                    self.errors.append(f"{outcome}: {detail}")
            if self.pause:
                time.sleep(self.pause)

    def _exchange(self, payload: bytes) -> bytes:
        """One exchange: the answer to compare with the payload."""
        return request(self.address, payload, self.timeout)

    def _served_by(self, who: object) -> None:
        """Count an answer for `who` (a client thread's call, hence the lock)."""
        with self._lock:
            self.served[who] += 1

    def _one(self, payload: bytes) -> tuple[str, str]:
        try:
            answer = self._exchange(payload)
        except ConnectionRefusedError as exc:
            return "refused", repr(exc)
        except (ConnectionResetError, BrokenPipeError) as exc:
            return "reset", repr(exc)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:  # reset before our shutdown(): cut all the same
                return "reset", repr(exc)
            return "other", repr(exc)
        except EOFError as exc:  # closed mid-answer (HttpClient)
            return "closed", repr(exc)
        if answer == payload:
            return "ok", ""
        return "mismatched" if answer else "closed", f"{payload!r} -> {answer[:60]!r}"

    def summary(self) -> str:
        return (
            f"ok={self.ok} refused={self.refused} reset={self.reset} closed={self.closed} "
            f"mismatched={self.mismatched} other={self.other} {self.errors}"
        )

    def progress(self, count: int = 30, timeout: float = 30.0) -> None:
        """Wait until `count` more connections have been answered: the load is flowing."""
        target = self.ok + count
        try:
            wait_until(lambda: self.ok >= target, f"{count} more answers", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.summary()}") from None

    def join(self) -> None:
        """Let every client run out of connections (`limit`) or time (`seconds`)."""
        for thread in self._threads:
            thread.join()

    def stop(self) -> None:
        """Stop after the connections in flight, each bounded by its timeout."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)


# -- HTTP clients ------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]  # names lower-cased, in order
    body: bytes
    head: bytes  # the status line and header lines as received

    def header(self, name: bytes) -> bytes | None:
        """The (first) value of a header field, or None."""
        return next((v for k, v in self.headers if k == name.lower()), None)


def http_request(
    method: str,
    target: str,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    close: bool = False,
) -> bytes:
    """An HTTP/1.1 request; a Content-Length for a body unless `headers` frame it."""
    fields = [("Host", "test"), *(headers or [])]
    named = {k.lower() for k, _ in fields}
    if body and not {"content-length", "transfer-encoding"} & named:
        fields.append(("Content-Length", str(len(body))))
    if close:
        fields.append(("Connection", "close"))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields)
    return head.encode("latin-1") + b"\r\n" + body


class HttpClient:
    """One client connection speaking HTTP/1.x: raw bytes out, responses read in order and
    framed as RFC 9112 6.3 says (no body for HEAD, 1xx, 204, 304; Content-Length; chunked;
    else to the end of the stream). EOFError when the server closes short of a response."""

    def __init__(self, address: Address, timeout: float = 10.0, source: str | None = None):
        self.sock = connect(address, timeout, source)
        self.buf = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        """Our local port: the PEER the server logs."""
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, method: str, target: str, body: bytes = b"", **kw) -> Response:
        self.send(http_request(method, target, body, **kw))
        return self.response(head=method == "HEAD")

    def response(self, head: bool = False, interim: bool = False) -> Response:
        """The next response; 1xx ones are skipped unless `interim`."""
        while True:
            status, headers, raw = self._head()
            if interim or not 100 <= status < 200:
                break
        if head or 100 <= status < 200 or status in (204, 304):
            body = b""
        elif (coding := _field(headers, b"transfer-encoding")) and b"chunked" in coding.lower():
            body = self._chunked()
        elif (length := _field(headers, b"content-length")) is not None:
            body = self._exactly(int(length))
        else:
            body, self.buf = self.buf + read_to_eof(self.sock), b""
        return Response(status, headers, body, raw)

    def _head(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        raw = self._until(b"\r\n\r\n")[:-4]
        line, *lines = raw.split(b"\r\n")
        version, status, *_ = line.split(b" ", 2)
        assert version.startswith(b"HTTP/1."), f"not an HTTP/1 response: {raw!r}"
        headers = []
        for text in lines:
            name, _, value = text.partition(b":")
            headers.append((name.lower(), value.strip()))
        return int(status), headers, raw

    def _chunked(self) -> bytes:
        body = b""
        while size := int(self._until(b"\r\n")[:-2].split(b";")[0], 16):
            body += self._exactly(size)
            assert self._exactly(2) == b"\r\n", "chunk data not followed by CRLF"
        while self._until(b"\r\n") != b"\r\n":  # trailer fields
            pass
        return body

    def _until(self, end: bytes) -> bytes:
        while (at := self.buf.find(end)) < 0:
            self._more()
        at += len(end)
        data, self.buf = self.buf[:at], self.buf[at:]
        return data

    def _exactly(self, count: int) -> bytes:
        while len(self.buf) < count:
            self._more()
        data, self.buf = self.buf[:count], self.buf[count:]
        return data

    def _more(self) -> None:
        if not (chunk := self.sock.recv(65536)):
            raise EOFError(f"closed by the server mid-response: {self.buf[:200]!r}")
        self.buf += chunk

    def closed(self) -> bool:
        """The server ended the connection with nothing more sent: EOF, or a reset (it left
        bytes of ours unread). A client timeout raises."""
        if self.buf:
            return False
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def _field(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((v for k, v in headers if k == name), None)


@dataclass
class HttpLoad(Load):
    """Load's clients speaking HTTP: each payload is POSTed to `path`, which must answer
    200 with the body it was sent. keep_alive=0: a new connection per request (the last
    request says Connection: close); N: N requests a connection."""

    path: str = "/say"
    keep_alive: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._local = threading.local()

    def _exchange(self, payload: bytes) -> bytes:
        local = self._local
        if getattr(local, "client", None) is None:
            local.client, local.used = HttpClient(self.address, self.timeout), 0
        local.used += 1
        last = local.used >= max(1, self.keep_alive)
        try:
            local.client.send(http_request("POST", self.path, payload, close=last))
            answer = local.client.response()
        except BaseException:
            last = True
            raise
        finally:
            if last:
                local.client.close()
                local.client = None
        return answer.body if answer.status == 200 else answer.head


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Service:
    """One server started by systemd-socket-activate in a session of its own. Its output,
    and systemd-socket-activate's, is appended to `log`.

    start() binds the sockets; the server itself starts at the first connection, made by
    activate() or by the caller.
    """

    argv: list[str]  # the server: sockpool or a peer, with its arguments
    listen: list[str]
    log: Path
    fdnames: list[str] | None = None
    datagram: bool = False
    env: dict[str, str] = field(default_factory=dict)  # the server's (its only) environment
    notify: Path | None = None  # a NOTIFY_SOCKET to bind and pass on: wait_for() reads it
    start_timeout: float = 30.0
    stop_timeout: float = 30.0
    proc: subprocess.Popen[bytes] | None = None
    notifications: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._offset = 0
        self._notify: socket.socket | None = None
        self._trigger: socket.socket | None = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def addresses(self) -> list[Address]:
        return [a if a.startswith("/") else _host_port(a) for a in self.listen]

    @property
    def address(self) -> Address:
        return self.addresses[0]

    @property
    def pid(self) -> int:
        """systemd-socket-activate's, which becomes the server's when it execs it."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Self:
        env = dict(self.env)
        if self.notify is not None:
            self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._notify.bind(str(self.notify))
            self._notify.setblocking(False)
            env["NOTIFY_SOCKET"] = str(self.notify)
        cmd = [ACTIVATE, *(f"--listen={a}" for a in self.listen)]
        if self.datagram:
            cmd.append("--datagram")
        if self.fdnames:
            cmd.append("--fdname=" + ":".join(self.fdnames))
        cmd += [f"--setenv={k}={v}" for k, v in env.items()]
        with self.log.open("ab") as out:
            self._offset = out.seek(0, os.SEEK_END)
            self.proc = subprocess.Popen(
                [*cmd, *self.argv],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            self._listening, f"{self.argv[0]} to listen (log: {self.log})", self.start_timeout
        )
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"exited {self.proc.returncode}: {self.output()}")
        return self.output().count("Listening on") >= len(self.listen)

    def activate(self, wait_ready: bool = True) -> Self:
        """Make the first connection, on which systemd-socket-activate execs the server, and
        with wait_ready wait for its READY=1."""
        if self.datagram:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
                dgram.sendto(b"x", self.address)
            return self
        self._trigger = connect(self.address)
        if wait_ready:
            self.wait_for("READY=1")
            self._trigger.close()  # it would hold a sync worker
        return self

    def read_notifications(self) -> list[str]:
        assert self._notify is not None, "started without a notify socket"
        with contextlib.suppress(BlockingIOError):
            while True:
                self.notifications.extend(self._notify.recv(4096).decode().split("\n"))
        return self.notifications

    def wait_for(self, assignment: str, timeout: float = 15.0) -> None:
        def seen() -> bool:
            self.read_notifications()
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.output()}")
            return assignment in self.notifications

        wait_until(seen, f"{assignment} from {self.argv[0]} (log: {self.log})", timeout)

    def statuses(self) -> list[str]:
        return [n for n in self.read_notifications() if n.startswith("STATUS=")]

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def settled_fds(self) -> int:
        """fd_count() without the passing ones, for a baseline: the least of reads over 0.1 s.
        The dispatcher closes its copy of a connection just after the handoff, and a worker
        woken by it may have answered the client before that (under load, for milliseconds);
        each sd_notify() also opens a socket for the moment of the call."""
        counts = []
        for _ in range(10):
            counts.append(self.fd_count())
            time.sleep(0.01)
        return min(counts)

    def wait_idle(self) -> None:
        """Until the dispatcher holds no connection: e.g. the one that activated it, which
        sends nothing and is held until its client's close is seen."""
        wait_until(lambda: self.connections_held() == 0, "the dispatcher to hold no connection")

    def connections_held(self, pid: int | None = None) -> int:
        """TCP connections (not listening sockets) the dispatcher (or the process `pid`, a
        worker) holds a descriptor of: those it holds until they speak, or that wait for a
        worker."""
        pid = pid or self.pid
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        held = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                for line in list(f)[1:]:
                    fields = line.split()
                    held += fields[3] != "0A" and fields[9] in inodes  # 0A: LISTEN
        return held

    def output(self) -> str:
        """What was written to the log since start()."""
        with self.log.open("rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM to the server alone, as systemd's KillMode=mixed does; SIGKILL once it
        outstays stop_timeout. Then SIGKILL what is left of its session: the workers of a server
        that did not take them along."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for sock in (self._trigger, self._notify):
            if sock is not None:
                sock.close()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


# -- PROXY protocol headers, as a load balancer sends them (proxyproto.py) --

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def v2(command: int = 1, fam: int = 0x11, block: bytes = b"", tlvs: bytes = b"") -> bytes:
    body = block + tlvs
    return PROXY_V2_SIGNATURE + bytes([0x20 | command, fam]) + struct.pack("!H", len(body)) + body


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


# -- decisions as data (policy.py, supervisor.py) --------------------------------------------


def only(actions: Iterable[object], kind: type[T]) -> list[T]:
    """The actions of one kind, in order."""
    return [a for a in actions if isinstance(a, kind)]


def records(actions: Iterable[object], event: Event | None) -> list[Record]:
    """The records of one lifecycle event (None: those with none, records.problem's)."""
    return [r for r in only(actions, Record) if r.event is event]
