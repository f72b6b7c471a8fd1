"""The bench's issue 12 clients count what they claim: starved keep-alive connections, and
what a server did with a crowd of idle or slow connections.

The servers are the shared-accept pool (bench.peers.prefork, 2 sync workers), whose
behaviour is fixed: a sync worker keeps one connection until its client closes it. Speed is
never asserted here.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench import loadgen
from bench.run import HTTP, Spec, free_port, launch, py_peer, wait_answering

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed"
)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[int]:
    """The port of a shared-accept pool of 2 sync http_hello workers."""
    port = free_port()
    spec = Spec("prefork", "shared-accept pool", py_peer("prefork", "--workers", "2", HTTP))
    with launch(spec, port, tmp_path / "server.log"):
        wait_answering(port, "http")
        yield port


def test_keepalive_client_counts_starved_connections(pool: int) -> None:
    # As many connections as workers: each is served all along.
    few = loadgen.run(pool, "http", procs=1, concurrency=2, duration=1.0, keepalive=True)
    assert few.failures == 0, few.failure_kinds
    assert few.starved == 0
    assert few.min_answers > 1  # more than one answer per connection: kept alive
    # Eight: the two workers keep serving the first two, the other six wait in the backlog
    # until those close after the run (answers past the run do not count).
    many = loadgen.run(pool, "http", procs=1, concurrency=8, duration=1.0, keepalive=True)
    assert many.starved == 6
    assert many.max_answers > 1


def test_crowd_counts_answers_and_holds_connections(pool: int) -> None:
    with loadgen.Crowd(pool, 20, "request") as crowd:
        state = crowd.wait(lambda s: s.answered >= s.conns, cap=30, stall=2)
        assert state.connected == 20
        assert state.answered == 2  # one per sync worker; the rest wait, unanswered
        final = crowd.stop()
    assert final.closed == 0
    assert final.wrong == 0


def test_crowd_sees_when_the_server_closes_slow_clients() -> None:
    """A listener that reads two bytes from each connection and closes it: every slow client
    is closed, after its second byte (sent `interval` after the first)."""
    interval = 0.3

    def close_after_two_bytes(conn: socket.socket) -> None:
        conn.settimeout(10)
        got = b""
        while len(got) < 2 and (data := conn.recv(2 - len(got))):
            got += data

    with (
        serial_server(close_after_two_bytes) as port,
        loadgen.Crowd(port, 5, "trickle", interval) as crowd,
    ):
        state = crowd.wait(lambda s: s.closed >= s.conns, cap=30)
        final = crowd.stop()
    assert state.closed == 5, state
    assert len(final.closed_after_s) == 5
    assert min(final.closed_after_s) >= interval


def test_crowd_uploads_its_whole_body_slowly_and_counts_the_answers(pool: int) -> None:
    """Each upload reaches the server whole (the pool's http_hello answers only a request it
    read whole) and is answered; the last slice is sent no sooner than the interval times the
    slices before it."""
    interval = 0.05
    slices = loadgen.UPLOAD_BODY // loadgen.UPLOAD_SLICE
    t0 = time.monotonic()
    with loadgen.Crowd(pool, 2, "upload", interval) as crowd:
        state = crowd.wait(lambda s: s.closed >= s.conns, cap=30)
        final = crowd.stop()
    assert (state.answered, state.closed, final.wrong) == (2, 2, 0), state
    assert time.monotonic() - t0 >= (slices - 1) * interval


@pytest.mark.parametrize(
    ("body", "answered", "wrong"),
    [
        pytest.param(loadgen.download_body(), 1, 0, id="whole"),
        pytest.param(b"%015x\n" % 16 + loadgen.download_body()[16:], 0, 1, id="a byte wrong"),
        pytest.param(loadgen.download_body()[:-1], 0, 0, id="cut short"),
    ],
)
def test_crowd_downloads_slowly_and_counts_a_whole_file_once(
    body: bytes, answered: int, wrong: int
) -> None:
    """A server that answers GET /download with `body` under a Content-Length of the whole
    file, then closes: the crowd reads it a slice per interval, counts it answered only when
    every byte of the file came right, and closed once, whatever it got."""
    interval = 0.005
    slices = loadgen.DOWNLOAD_SIZE // loadgen.DOWNLOAD_SLICE
    heads: list[bytes] = []

    def send_the_file(conn: socket.socket) -> None:
        conn.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head and (data := conn.recv(4096)):
            head += data
        heads.append(head)
        length = b"Content-Length: %d\r\n" % loadgen.DOWNLOAD_SIZE
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + length + b"Connection: close\r\n\r\n" + body)

    t0 = time.monotonic()
    with (
        serial_server(send_the_file) as port,
        loadgen.Crowd(port, 1, "download", interval) as crowd,
    ):
        state = crowd.wait(lambda s: s.closed >= s.conns, cap=30)
        final = crowd.stop()
    assert heads and heads[0].startswith(b"GET /download HTTP/1.1\r\n"), heads
    assert b"\r\nConnection: close\r\n" in heads[0]
    assert (state.receiving, state.closed, state.failed) == (1, 1, 0), state
    assert (final.answered, final.wrong, final.closed) == (answered, wrong, 1), final
    if answered:  # read at its own pace: a slice per interval, the last one no sooner
        assert time.monotonic() - t0 >= (slices - 1) * interval


def test_an_open_loop_charges_a_slow_server_for_the_connections_it_kept_waiting() -> None:
    """--rate: connections are due on a schedule, and each latency runs from when it was
    due. A server that takes DELAY per connection, one at a time, falls behind 20 a second;
    the last of the ten waits for the nine before it, which a closed loop would not count."""
    delay, rate, due = 0.1, 20.0, 10
    with serial_echo(delay) as port:  # the run ends halfway between the 10th and an 11th
        res = loadgen.run(
            port, "echo", procs=1, concurrency=1, duration=(due - 0.5) / rate, rate=rate
        )
    assert res.failures == 0, res.failure_kinds
    assert res.ok == due  # every one due within the run was sent, the late ones too
    # The k-th (from 0) is answered no sooner than (k + 1) * delay after the start, and was
    # due at k / rate: the last waited at least this long.
    assert res.max_ms >= 1e3 * (due * delay - (due - 1) / rate)


def test_an_open_loop_counts_what_it_could_never_send() -> None:
    """A server that never answers: each connection due within the run fails once, as a
    timeout if it was sent, as unsent if no slot came free for it before the run ended (a
    slot frees at most once per sweep, 0.1 s, and the run ends 1 s after the timeout)."""
    rate, due = 100.0, 50
    release = threading.Event()
    with serial_server(lambda conn: release.wait(30)) as port:
        try:
            res = loadgen.run(
                *(port, "echo"),
                procs=1,
                concurrency=1,
                duration=(due - 0.5) / rate,
                timeout=0.3,
                rate=rate,
            )
        finally:
            release.set()
    assert res.ok == 0
    assert res.failures == due, res.failure_kinds
    assert res.failure_kinds.get("unsent", 0) > 0


def test_new_connections_come_from_several_loopback_addresses() -> None:
    """From 127.0.0.1 alone, churn would stall on the client's own TIME_WAIT ports
    (loadgen.SOURCES): a run's connections come from the loopback addresses in turn, and
    each is answered as from one."""
    peers: list[str] = []

    def echo_noting_peer(conn: socket.socket) -> None:
        peers.append(conn.getpeername()[0])
        conn.settimeout(10)
        echo_all(conn)

    count = 2 * len(loadgen.SOURCES)
    with serial_server(echo_noting_peer) as port:
        res = loadgen.run(port, "echo", procs=1, concurrency=1, duration=30, max_requests=count)
    assert res.failures == 0, res.failure_kinds
    assert res.ok == count
    assert sorted(set(peers)) == sorted(loadgen.SOURCES)


def serial_echo(delay: float) -> contextlib.AbstractContextManager[int]:
    """A server that answers one connection at a time, each `delay` seconds after it
    accepted it: the echo of what the client sent before it shut down its side."""

    def echo_late(conn: socket.socket) -> None:
        time.sleep(delay)
        echo_all(conn)

    return serial_server(echo_late)


def echo_all(conn: socket.socket) -> None:
    """Echo: everything the client sent before it shut down its side, sent back."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    conn.sendall(data)


@contextlib.contextmanager
def serial_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A listener on 127.0.0.1 whose thread takes one connection at a time, hands it to
    `handle` and closes it, until the test is done; yields its port."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        listener.settimeout(0.2)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    handle(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            thread.join(5)
