"""Ready-work dispatch: idle and slow connections wait in the dispatcher, never in a worker.

Every test waits on what the service shows (STATUS= `busy N, parked N`, its log, what a
client reads), never on how long something took.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from apps import BIG
from harness import (
    Address,
    HttpClient,
    Load,
    Response,
    connect,
    free_port,
    read_to_eof,
    request,
    wait_until,
)

HELLO = "sockpool.handlers:http_hello"
GET = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
LAST = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
FIGURES = re.compile(r"busy (\d+), parked (\d+), served (\d+)")
CLOSED = re.compile(r"closed \d+ connections waiting in the dispatcher: ([^(]*)\(")


def tcp() -> str:
    return f"127.0.0.1:{free_port()}"


def settle(service, busy: int, parked: int, since: int = 0, served: int | None = None) -> None:
    """Wait for a STATUS= with these figures (and `served`, if given), among those sent
    after the first `since` (mark(): a status from before an action would say nothing
    about it)."""

    def latest() -> tuple[int, int, int | None]:
        busy_now, parked_now, served_now = figures(service, since)
        return busy_now, parked_now, None if served is None else served_now

    wait_until(
        lambda: latest() == (busy, parked, served),
        f"STATUS busy {busy}, parked {parked}, served {served} (last: {service.statuses()[-1:]})",
    )


def figures(service, since: int = 0) -> tuple[int, int, int]:
    """busy, parked and served (each handoff that ended, parked or done) in the latest
    STATUS= of those sent after the first `since`; -1s before there is one."""
    for status in reversed(service.statuses()[since:]):
        if m := FIGURES.search(status):
            return int(m[1]), int(m[2]), int(m[3])
    return -1, -1, -1


def mark(service) -> int:
    """Where the statuses to come start. Each park or completion changes `served`, so a
    connection that parks after this is reported in a status after it."""
    return len(service.statuses())


def closed(service, reason: str | None = None) -> int:
    """Connections the dispatcher says it closed for `reason` (None: any), from its
    rate-limited log line "closed N connections waiting in the dispatcher: 2 first-byte,
    1 peer-closed (...)"."""
    total = 0
    for m in CLOSED.finditer(service.output()):
        for part in m[1].split(","):
            count, _, why = part.strip().partition(" ")
            total += int(count) if reason in (None, why) else 0
    return total


def wait_closed(service, reason: str, count: int, timeout: float = 10) -> None:
    """Until the dispatcher has said it closed `count` connections for `reason` (its log
    line is rate-limited: the rest of a count may come in a later line); on giving up, what
    it did say, so that a failure names the reasons it saw instead."""
    try:
        wait_until(lambda: closed(service, reason) == count, f"{count} {reason} closes", timeout)
    except AssertionError as exc:
        said = [m[0] for m in CLOSED.finditer(service.output())]
        raise AssertionError(f"{exc}; the dispatcher said: {said}") from None


def hello(answer: Response) -> bool:
    return answer.head.startswith(b"HTTP/1.1 200 OK\r\n") and answer.body == b"hello\n"


def assert_closed_by_server(sock: socket.socket, timeout: float = 10.0) -> None:
    """The server ends the connection: EOF, or a reset when it left our bytes unread. A
    client timeout fails the test."""
    sock.settimeout(timeout)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(65536) == b""
    sock.close()


def ask(client: HttpClient, *requests: bytes) -> list[Response]:
    """Send the requests at once (pipelined) and read their responses, in order."""
    client.send(b"".join(requests))
    return [client.response() for _ in requests]


def fetch(address: Address, source: str | None = None) -> Response:
    """A new client's one request (Connection: close) and its answer."""
    with HttpClient(address, timeout=5, source=source) as client:
        return client.ask("GET", "/", close=True)


class Lines:
    """A client of apps:ids: one line out, one line back."""

    def __init__(self, address: Address) -> None:
        self.sock = connect(address)
        self.file = self.sock.makefile("rb")

    def ask(self, line: bytes) -> tuple[str, int]:
        """apps:ids' answer: (connection id or "holding", worker pid)."""
        self.sock.sendall(line + b"\n")
        word, pid = self.file.readline().split()
        return word.decode(), int(pid)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def launch(serve, args: list[str], **kw):
    """A service of a handler whose clients speak first, once the connection that
    activated it is gone: it sends nothing and is closed, and until then it is held and
    counted like any of the test's own."""
    service = serve(args, listen=[tcp()], **kw)
    service.wait_idle()
    return service


# -- 1. idle keep-alive ------------------------------------------------------------------------


def test_idle_keep_alive_connections_do_not_pin_workers(either) -> None:
    service = launch(either, ["--workers=2", "--idle-timeout=60", HELLO])
    kept = [HttpClient(service.address) for _ in range(3)]
    for client in kept:
        assert [hello(a) for a in ask(client, GET)] == [True]
    # Three open keep-alive connections, two sync workers: a fourth client is answered.
    assert hello(fetch(service.address))
    settle(service, busy=0, parked=3)
    for client in kept:  # parked, not closed: the next request is answered
        assert [hello(a) for a in ask(client, GET)] == [True]
    # Pipelined: answered in order, the last one (Connection: close) last, then EOF.
    answers = ask(kept[0], GET, GET, LAST)
    assert all(map(hello, answers)), answers
    assert [a.header(b"connection") for a in answers] == [None, None, b"close"]
    assert kept[0].sock.recv(10) == b""
    for client in kept:
        client.close()


def test_a_client_that_sends_and_never_reads_holds_no_echo_worker(serve) -> None:
    """Nothing pinned, the other way: an echo client that sends without reading fills the
    kernel's buffers both ways. The worker leaves the echo it could not send to the
    dispatcher (sockpool.send) and serves the next client; the dispatcher closes the first
    one once it has taken nothing for idle_timeout (`unread`)."""
    service = launch(serve, ["--workers=1", "--idle-timeout=5", "sockpool.handlers:echo"])
    flood = connect(service.address, timeout=30)
    since = mark(service)

    def send_until_stuck() -> None:
        with contextlib.suppress(OSError):  # stuck, then reset: what it came for
            flood.sendall(b"x" * (32 << 20))

    sender = threading.Thread(target=send_until_stuck)
    sender.start()
    settle(service, busy=0, parked=1, since=since)  # its worker is free
    with connect(service.address) as other:
        other.sendall(b"hello")
        assert other.recv(100) == b"hello"
    wait_closed(service, "unread", 1)
    sender.join(60)
    flood.close()


def test_busy_keep_alive_clients_make_room_for_one_in_the_backlog(either) -> None:
    # Two clients that ask again the moment they are answered hold both sync workers, and
    # park_after is too long for either worker ever to park one for idling: only the turn
    # a keep-alive client takes while others wait can make room. The third client waits in
    # the kernel's backlog, where back-pressure leaves it: it must count as waiting too.
    service = launch(either, ["--workers=2", "--park-after=30", "sockpool.handlers:echo"])
    stop = threading.Event()
    answered = [0, 0]
    failures: list[str] = []  # a thread's failed assertion would only be a warning

    def hammer(i: int) -> None:
        try:
            with connect(service.address, timeout=10) as sock:
                while not stop.is_set():
                    sock.sendall(b"ping")
                    if (got := sock.recv(4)) != b"ping":
                        failures.append(f"client {i} got {got!r}")
                        return
                    answered[i] += 1
        except OSError as exc:
            failures.append(f"client {i}: {exc!r}")

    hammers = [threading.Thread(target=hammer, args=(i,)) for i in range(2)]
    for t in hammers:
        t.start()
    try:  # a sync worker serves one connection at a time: each of the two holds one
        wait_until(lambda: all(answered), "both clients answered")
        assert request(service.address, b"third", timeout=5) == b"third"
        # ...and the two keep-alive clients were only made to take turns, not cut off.
        before = list(answered)
        wait_until(
            lambda: failures or all(a > b for a, b in zip(answered, before, strict=True)),
            "both clients answered again after the third",
        )
    finally:
        stop.set()
        for t in hammers:
            t.join(10)
    assert not any(t.is_alive() for t in hammers)
    assert failures == []


# -- 2. silent connections -----------------------------------------------------------------------


def test_silent_connections_wait_in_the_dispatcher(either) -> None:
    service = launch(either, ["--workers=2", HELLO])
    silent = [connect(service.address) for _ in range(20)]
    settle(service, busy=0, parked=20)
    assert hello(fetch(service.address))
    for sock in silent:
        sock.close()


def test_a_silent_connection_pins_no_worker_behind_a_wrapper_that_reads_first(either) -> None:
    """A wrapper of echo made with functools.wraps, reading first with a plain recv(): the
    worker must look at a new connection before its handler, as for any such handler."""
    service = launch(either, ["--workers=1", "apps:token_echo"])
    silent = connect(service.address)
    settle(service, busy=0, parked=1)  # given back, not waited for in the only worker
    with connect(service.address) as client:
        client.sendall(b"token\nhello\n")
        client.shutdown(socket.SHUT_WR)
        assert read_to_eof(client) == b"hello\n"
    silent.close()


def test_silent_connections_are_closed_at_the_first_byte_timeout(serve) -> None:
    service = launch(serve, ["--workers=2", "--first-byte-timeout=1", HELLO])
    before = closed(service, "first-byte")  # 0, unless the activating connection lingered
    silent = [connect(service.address) for _ in range(20)]
    for sock in silent:
        assert sock.recv(10) == b""  # an orderly close by the server, not our timeout
        sock.close()
    wait_closed(service, "first-byte", before + 20, timeout=25)
    assert hello(fetch(service.address))


# -- 3. slowloris ------------------------------------------------------------------------------


class Trickle(threading.Thread):
    """Clients that each send one byte of `payload` every `interval` seconds, until the
    server closes them or `seconds` pass. Counts those the server closed and those that
    got any answer."""

    def __init__(
        self, address: Address, payload: bytes, clients: int, interval: float, seconds: float
    ) -> None:
        super().__init__(daemon=True)
        self.socks = [connect(address) for _ in range(clients)]
        self.payload, self.interval, self.seconds = payload, interval, seconds
        self.closed = self.answered = 0
        self.started_sending = threading.Event()

    def run(self) -> None:
        open_ = list(self.socks)
        deadline = time.monotonic() + self.seconds
        for n, byte in enumerate(self.payload):
            if not open_ or time.monotonic() > deadline:
                break
            for sock in list(open_):
                try:
                    sock.send(bytes([byte]))
                except OSError:  # reset: closed by the server
                    self._gone(open_, sock, b"")
            if n == 3:
                self.started_sending.set()
            readable, _, _ = select.select(open_, [], [], self.interval)
            for sock in readable:
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                self._gone(open_, sock, data)

    def _gone(self, open_: list[socket.socket], sock: socket.socket, data: bytes) -> None:
        if data:
            self.answered += 1
        else:
            self.closed += 1
        open_.remove(sock)
        sock.close()


def test_slowloris_clients_pin_no_worker_and_are_closed_at_the_request_timeout(serve) -> None:
    service = launch(serve, ["--workers=2", "--request-timeout=2", HELLO])
    # A head that would take 30 s at this pace: never whole within the request timeout.
    head = b"GET / HTTP/1.1\r\nHost: test\r\nX-Pad: " + b"a" * 100 + b"\r\n\r\n"
    slow = Trickle(service.address, head, clients=6, interval=0.3, seconds=20)
    slow.start()
    assert slow.started_sending.wait(10)
    for _ in range(10):  # six trickling clients on two sync workers: others are answered
        assert hello(fetch(service.address))
    # A client as slow that completes its request within the timeout is answered.
    client = HttpClient(service.address)
    for piece in (b"GET / HTTP/1.1\r\n", b"Host: test\r\n", b"\r\n"):
        client.sock.sendall(piece)
        time.sleep(0.2)  # far over park_after: each pause parks the request so far
    assert hello(client.response())
    client.close()
    slow.join()
    assert (slow.closed, slow.answered) == (6, 0)
    wait_closed(service, "request", 6, timeout=25)


# -- 4. carried bytes ----------------------------------------------------------------------------


def test_a_partial_request_over_max_carry_is_closed(serve) -> None:
    service = launch(serve, ["--workers=2", "--max-carry=100", HELLO])
    under = HttpClient(service.address)
    since = mark(service)
    under.sock.sendall(b"GET / HTTP/1.1\r\n")
    settle(service, busy=0, parked=1, since=since)  # parked with 16 bytes carried
    assert [hello(a) for a in ask(under, b"Host: test\r\n\r\n")] == [True]
    under.close()
    over = connect(service.address)
    since = mark(service)
    over.sendall(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 60)
    settle(service, busy=0, parked=1, since=since)  # parked with 83 bytes carried
    over.sendall(b"a" * 60)  # 143: over the bound
    assert_closed_by_server(over)  # at once: not the request timeout's 30 s


@pytest.mark.parametrize("handler", [HELLO, HELLO + "_async"])
def test_http_hello_takes_a_body_over_max_carry_that_pauses(serve, handler: str) -> None:
    """README: it reads a body of up to 1 MiB and skips it. A body is read in the worker,
    as the web servers read one: parked with it, one over max_carry would be closed."""
    service = launch(serve, ["--workers=2", "--max-carry=100", handler])
    client = HttpClient(service.address)
    client.sock.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 30000\r\n\r\n")
    client.sock.sendall(b"a" * 20000)
    time.sleep(0.1)  # a pause (the worker waits it out: not the case this test is about)
    assert [hello(a) for a in ask(client, b"a" * 10000, GET)] == [True, True]


@pytest.mark.parametrize("length", [10, 200_000], ids=["within-max_carry", "buffered"])
def test_http_hello_holds_no_worker_for_a_body_that_stalls(serve, length: int) -> None:
    """As many clients as sync workers stall in a body: they wait in the dispatcher (a
    whole request that fits in max_carry, or, with a longer body, the rest of it in the
    kernel's buffer up to max_buffered_body), not in a worker for request_timeout, and a
    third client is served meanwhile. Each is answered once its body comes."""
    service = launch(serve, ["--workers=2", HELLO])
    slow = [HttpClient(service.address) for _ in range(2)]
    since = mark(service)
    for client in slow:
        head = b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % length
        client.sock.sendall(head + b"hello")
    settle(service, busy=0, parked=2, since=since)
    with HttpClient(service.address) as fast:
        assert [hello(a) for a in ask(fast, GET)] == [True]
    for client in slow:
        with client:
            client.sock.sendall(b"w" * (length - 5))
            assert hello(client.response())


@pytest.mark.parametrize("handler", [HELLO, HELLO + "_async"])
def test_http_hello_closes_a_body_trickled_past_request_timeout(serve, handler: str) -> None:
    """A body read in the worker is held to request_timeout too, as the dispatcher holds a
    parked request: a byte every 0.3 s would keep idle_timeout (5 s) at bay for ever."""
    service = launch(serve, ["--workers=1", "--request-timeout=1", "--idle-timeout=5", handler])
    client = connect(service.address)
    client.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n")
    trickled_until_closed(client)


def trickled_until_closed(client: socket.socket) -> None:
    """A byte every 0.3 s for up to 9 s: the server closes it (after request_timeout, 1 s
    in these tests) long before."""
    for _ in range(30):
        if select.select([client], [], [], 0.3)[0]:
            break
        client.sendall(b"a")
    assert_closed_by_server(client, timeout=1)


# -- 5. connection ids ---------------------------------------------------------------------------


def pin(service, worker: int) -> Lines:
    """A connection that holds `worker` (a sync worker: its only slot), so the next
    request goes to another. A new connection goes to whichever worker the dispatcher
    picks; if not this one, a second must, once the first holds the other worker."""
    first = Lines(service.address)
    if first.ask(b"hold")[1] == worker:
        return first
    second = Lines(service.address)
    assert second.ask(b"hold")[1] == worker
    first.close()  # its worker is free again
    return second


def test_connection_id_follows_the_connection_from_worker_to_worker(either) -> None:
    service = launch(either, ["--workers=2", "apps:ids"])
    client = Lines(service.address)
    since = mark(service)
    conn_id, pid = client.ask(b"id")
    pids = [pid]
    for _ in range(3):
        settle(service, busy=0, parked=1, since=since)  # given back between lines
        holder = pin(service, pid)
        since = mark(service)
        again, pid = client.ask(b"id")
        assert again == conn_id
        assert pid != pids[-1]
        pids.append(pid)
        holder.close()
    assert set(pids) == set(service.workers())


# -- 6, 7. reload and a killed worker -------------------------------------------------------------


def parked_clients(service, count: int) -> tuple[list[Lines], list[str]]:
    clients = [Lines(service.address) for _ in range(count)]
    ids = [c.ask(b"id")[0] for c in clients]
    settle(service, busy=0, parked=count)
    return clients, ids


def test_parked_connections_go_to_the_new_generation_on_reload(either) -> None:
    service = launch(either, ["--workers=2", "apps:ids"])
    clients, ids = parked_clients(service, 3)
    old = set(service.workers())
    service.signal(signal.SIGHUP)
    service.wait_for("RELOADING=1")
    wait_until(lambda: "generation 2 serves" in service.output(), "generation 2")
    wait_until(
        lambda: len(service.workers()) == 2 and not old & set(service.workers()),
        "the old generation gone",
    )
    new = set(service.workers())
    for client, conn_id in zip(clients, ids, strict=True):
        assert client.ask(b"id") in {(conn_id, pid) for pid in new}
        client.close()


def test_a_killed_worker_loses_no_parked_connection(either) -> None:
    service = launch(either, ["--workers=2", "apps:ids"])
    clients, ids = parked_clients(service, 4)
    victim = service.workers()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: len(service.workers()) == 2 and victim not in service.workers(), "a replacement"
    )
    for client, conn_id in zip(clients, ids, strict=True):
        answer, pid = client.ask(b"id")
        assert (answer, pid in service.workers()) == (conn_id, True)
        client.close()


# -- 8. stop -------------------------------------------------------------------------------------


def test_stop_closes_parked_connections_and_finishes_the_request_in_flight(either) -> None:
    service = launch(either, ["--workers=2", "apps:ids"])
    idle, _ = parked_clients(service, 3)
    busy = Lines(service.address)
    assert busy.ask(b"hold")[0] == "holding"  # in a worker's hands until it sends "go"
    settle(service, busy=1, parked=3)
    service.signal(signal.SIGTERM)
    for client in idle:  # closed while the request in flight is still going on
        assert client.file.read() == b""
        client.close()
    busy.sock.sendall(b"go\n")
    assert busy.file.read() == b"x" * BIG + b"\n"  # whole, then closed
    busy.close()
    assert service.wait() == 0
    assert "STOPPING=1" in service.read_notifications()


def test_a_request_begun_before_stop_is_served_when_it_completes(either) -> None:
    service = launch(either, ["--workers=2", HELLO])
    client = HttpClient(service.address)
    since = mark(service)
    client.sock.sendall(b"GET / HTTP/1.1\r\n")
    settle(service, busy=0, parked=1, since=since)  # parked with the request so far
    service.signal(signal.SIGTERM)
    service.wait_for("STOPPING=1")
    assert [hello(a) for a in ask(client, b"Host: test\r\n\r\n")] == [True]
    assert client.sock.recv(10) == b""  # kept alive no longer: closed once answered
    client.close()
    assert service.wait() == 0


def test_stop_does_not_wait_for_a_connection_that_never_spoke(serve) -> None:
    service = launch(serve, ["--workers=2", "--first-byte-timeout=300", HELLO])
    silent = connect(service.address)
    settle(service, busy=0, parked=1)
    service.signal(signal.SIGTERM)
    try:
        silent.settimeout(5)  # "promptly", generously: the bug holds it for 300 s
        assert silent.recv(10) == b""
        assert service.wait() == 0
    finally:
        silent.close()  # lets the stop go on either way


def test_a_client_about_to_speak_when_the_stop_comes_is_served(either) -> None:
    # The handler declares nothing: a new connection goes to a worker, whose first read
    # waits park_after and then gives it back. Its client has not spoken yet, so at a stop
    # it gets the moment a connection held since its accept gets, not closed as one idle
    # between requests.
    service = launch(either, ["--workers=2", "apps:undeclared_echo"])
    client = connect(service.address)
    wait_until(lambda: service.connections_held() == 1, "the worker to give it back")
    service.signal(signal.SIGTERM)
    service.wait_for("STOPPING=1")
    client.sendall(b"just in time\n")
    client.shutdown(socket.SHUT_WR)
    assert read_to_eof(client) == b"just in time\n"
    client.close()
    assert service.wait() == 0


def test_a_client_that_speaks_while_its_worker_stops_is_served(either) -> None:
    # A worker holds a new connection, waiting park_after for its first byte, when the
    # stop comes: every worker is retired at once, since nothing waits in the dispatcher.
    # It must not give the connection back then (no worker would be left to take it), but
    # wait STOP_FIRST_BYTE for the request, as the dispatcher would: the chaos test's
    # restarts lost connections so.
    park_after = 2.0  # the stop comes well within it
    service = launch(
        either, ["--workers=1", f"--park-after={park_after}", "sockpool.handlers:echo"]
    )
    [worker] = service.workers()
    client = connect(service.address)
    wait_until(lambda: service.connections_held(worker) == 1, "the worker to hold it")
    held_at = time.monotonic()  # it took the connection at most a poll's interval before
    service.signal(signal.SIGTERM)
    service.wait_for("STOPPING=1")
    # Past park_after, well within the STOP_FIRST_BYTE (1 s) that follows it: the worker
    # still holds the connection, where giving it back would have left it to no one.
    time.sleep(max(0.0, held_at + park_after + 0.3 - time.monotonic()))
    gave_back = "the stopping worker let the connection go"
    assert worker in service.workers() and service.connections_held(worker) == 1, gave_back
    client.sendall(b"in time\n")
    client.shutdown(socket.SHUT_WR)
    assert read_to_eof(client) == b"in time\n"
    client.close()
    assert service.wait() == 0


# -- 9. connection limits ------------------------------------------------------------------------


def answered(address: Address, source: str | None = None) -> bool:
    """A new client's request gets its answer (not a refusal)."""
    try:
        return hello(fetch(address, source))
    except (EOFError, ConnectionError):  # closed, or reset, unanswered
        return False


def test_parked_connections_count_towards_max_connections(serve) -> None:
    args = ["--workers=2", "--max-connections=3", "--overload-reply=busy", HELLO]
    service = launch(serve, args)
    kept = [HttpClient(service.address) for _ in range(3)]
    for client in kept:
        assert [hello(a) for a in ask(client, GET)] == [True]
    settle(service, busy=0, parked=3)
    extra = connect(service.address)
    assert extra.recv(100) == b"busy\n"
    assert extra.recv(100) == b""
    kept.pop().close()
    wait_until(lambda: answered(service.address), "a new connection to be served")
    for client in kept:
        assert [hello(a) for a in ask(client, GET)] == [True]
        client.close()


def test_parked_connections_count_towards_max_connections_per_source(serve) -> None:
    service = launch(serve, ["--workers=2", "--max-connections-per-source=2", HELLO])
    kept = [HttpClient(service.address) for _ in range(2)]
    for client in kept:
        assert [hello(a) for a in ask(client, GET)] == [True]
    settle(service, busy=0, parked=2)
    assert not answered(service.address)  # a third from 127.0.0.1
    assert answered(service.address, source="127.0.0.2")  # another source is welcome
    kept.pop().close()
    wait_until(lambda: answered(service.address), "a new connection from 127.0.0.1")
    kept[0].close()


# -- 10. handoff -----------------------------------------------------------------------------------


def test_a_server_speaks_first_handler_gets_its_connections_at_once(serve) -> None:
    service = serve(["--workers=2", "apps:banner"], listen=[tcp()], fdnames=["smtp"])
    client = connect(service.address)
    assert client.recv(100) == b"220 smtp ready\n"  # without sending anything
    client.sendall(b"hi\n")
    assert client.recv(100) == b"hi\n"
    client.close()


def test_handoff_setting_overrides_what_the_handler_declares(serve, tmp_path: Path) -> None:
    config = tmp_path / "handoff.toml"
    config.write_text('handler = "apps:banner"\n[listeners.early]\nhandoff = "immediate"\n')
    args = ["--workers=2", "--handoff=ready", f"--config={config}"]
    service = serve(args, listen=[tcp(), tcp()], fdnames=["early", "late"])
    early_address, late_address = service.addresses
    early = connect(early_address)
    assert early.recv(100) == b"220 early ready\n"  # its own table: immediate
    late = connect(late_address)  # --handoff=ready: held until it speaks
    settle(service, busy=1, parked=1)
    assert_nothing_to_read(late)
    late.sendall(b"hi\n")
    got = b""
    while got.count(b"\n") < 2:
        got += late.recv(100)
    assert got == b"220 late ready\nhi\n"
    for sock in (early, late):
        sock.close()


def assert_nothing_to_read(sock: socket.socket) -> None:
    """Not even an EOF waits to be read (a poll: the socket's timeout would make a recv
    with MSG_DONTWAIT wait)."""
    readable, _, _ = select.select([sock], [], [], 0)
    assert not readable, f"the server spoke first: {sock.recv(100)!r}"


# -- 11. async workers -----------------------------------------------------------------------------


def test_async_workers_and_500_silent_connections(serve) -> None:
    service = launch(serve, ["--workers=2", "sockpool.handlers:echo_async"])
    silent = [connect(service.address) for _ in range(500)]  # over 2 x capacity 100
    settle(service, busy=0, parked=500)
    assert request(service.address, b"normal", timeout=5) == b"normal"
    kept = connect(service.address)
    kept.sendall(b"one")
    assert kept.recv(10) == b"one"
    settle(service, busy=0, parked=501)  # given back between messages
    kept.sendall(b"two")
    assert kept.recv(10) == b"two"
    for sock in [kept, *silent]:
        sock.close()


# -- 12. the descriptor limit ----------------------------------------------------------------------


def test_at_the_descriptor_limit_it_stops_parking_and_keeps_serving(serve) -> None:
    # 256 descriptors: the dispatcher keeps 128 + 4 per worker free of connections, so it
    # holds at most 120 of the 200 silent ones; the rest go to the async workers.
    service = launch(
        serve,
        ["--workers=2", "sockpool.handlers:echo_async"],
        wrapper=["prlimit", "--nofile=256:256", "--"],
    )
    assert request(service.address, b"settle") == b"settle"
    baseline = service.settled_fds()
    silent = [connect(service.address) for _ in range(200)]
    wait_until(lambda: "near the descriptor limit" in service.output(), "the warning")
    assert request(service.address, b"still served", timeout=5) == b"still served"
    for sock in silent:
        sock.close()
    wait_until(lambda: service.fd_count() == baseline, "the dispatcher's descriptors to settle")
    assert request(service.address, b"after") == b"after"
    log = service.output()
    assert log.count("near the descriptor limit") == 1
    assert "Traceback" not in log


# -- bytes a worker carried back ---------------------------------------------------------------


@pytest.mark.parametrize("half_close", [False, True], ids=["open", "half-closed"])
def test_lines_a_worker_carried_back_are_answered(serve, half_close: bool) -> None:
    service = launch(serve, ["--workers=2", "apps:async_one_line"])
    client = connect(service.address, timeout=3)  # "promptly": nothing else is going on
    client.sendall(b"a\nb\nc\n")  # pipelined: "b" and "c" are in the reader's buffer
    if half_close:
        client.shutdown(socket.SHUT_WR)
    answers = client.makefile("rb")
    try:
        assert [answers.readline() for _ in range(3)] == [b"got a\n", b"got b\n", b"got c\n"]
    finally:  # a connection held with a request would hold up the stop
        answers.close()
        client.close()


# -- 5. a worker held up -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "queue_ahead"),
    [("apps:gate_echo", 1), ("apps:gate_echo", 3), ("apps:async_gate_echo", 1)],
)
def test_a_worker_held_up_by_one_request_keeps_no_other_client_waiting(
    either, tmp_path: Path, handler: str, queue_ahead: int
) -> None:
    # One request holds its worker (sync), or blocks its worker's whole loop (async), as a
    # long computation would. Connections sent to that worker meanwhile (a sync worker's
    # queued ones, queue_ahead; an async worker's second place) are read back and served by
    # the other: every client is answered while the first is still held. With 3 queued,
    # the other reports its completions a few at a time (completions.py), and still no
    # connection stays behind the held one.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    flags = ["--workers=2", "--capacity=2", f"--queue-ahead={queue_ahead}", handler]
    service = launch(either, flags)
    held = connect(service.address)
    held.sendall(f"gate {gate}\n".encode())
    assert held.recv(6) == b"gated\n"  # its worker is held from now on
    with Load(service.address, clients=8, limit=25) as load:
        load.join()
    assert load.ok == 200, load.summary()
    assert select.select([held], [], [], 0)[0] == []  # still held all along
    with open(gate, "wb"):
        pass
    assert held.recv(7) == b"opened\n"
    held.close()


def loop_waits(pid: int) -> bool:
    """The process is asleep in epoll_wait(): its asyncio loop waits for I/O. (The kernel
    names where it sleeps do_epoll_wait, or ep_poll where that is not inlined.)"""
    return Path(f"/proc/{pid}/wchan").read_text() in ("do_epoll_wait", "ep_poll")


def test_with_pull_a_request_goes_to_a_loop_that_waits_not_behind_a_blocked_one(
    serve, tmp_path: Path
) -> None:
    # Two requests reach the dispatcher in one turn (it is stopped while they connect): the
    # first blocks its worker's loop, the second asks only for its worker's pid. Worker A
    # has the most room, B holds two idle clients. By room alone both go to A in one
    # handoff, A's loop reads both, and the second waits behind the first (read, so nothing
    # can take it back). With pull, each loop that waits takes one: the second goes to B.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    service = launch(serve, ["--workers=2", "--pull", "apps:async_gate_pid"])
    holds: dict[int, list[socket.socket]] = {}
    while len(holds) < 2 or min(map(len, holds.values())) < 2:
        client = connect(service.address)
        client.sendall(b"hold\n")
        holds.setdefault(int(client.recv(20)), []).append(client)
        assert sum(map(len, holds.values())) <= 8, holds  # least busy first: they alternate
    a, b = sorted(holds)
    for client in holds.pop(a):  # A's clients leave: it has the most room
        client.sendall(b"bye\n")
        assert read_to_eof(client) == b""
        client.close()
    # Its loop has reported them and waits, as B's does (a loop still at work takes nothing).
    wait_until(lambda: all(map(loop_waits, (a, b))), "both workers' loops waiting")
    os.kill(service.pid, signal.SIGSTOP)
    try:
        blocker, asker = connect(service.address), connect(service.address)
        blocker.sendall(f"gate {gate}\n".encode())
        asker.sendall(b"pid\n")
    finally:
        os.kill(service.pid, signal.SIGCONT)
    try:
        blocked_in = int(blocker.recv(20))
        assert int(asker.recv(20)) == b != blocked_in == a  # answered while A's loop is blocked
    finally:
        with open(gate, "wb"):
            pass
        for client in [blocker, asker, *holds[b]]:
            client.close()
