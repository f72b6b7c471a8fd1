"""Raw TCP load generator: a new connection per request, every answer checked.

Several processes, each keeping `concurrency` connections in flight with non-blocking
sockets on epoll. Each request opens a connection to 127.0.0.1 (from one of the loopback
addresses in SOURCES, below), sends a payload unique to that request, and reads the answer
to EOF:

- ``echo``: the payload, then shutdown(SHUT_WR); the answer must be the payload.
- ``mixed``: as echo, but one request in ten starts with ``S``, which bench.handlers'
  mixed handlers (and the Node peer) answer after 50 ms.
- ``http``: ``GET /<unique> HTTP/1.1`` with ``Connection: close``; the answer must be a
  ``200`` with the body ``hello\\n`` and a matching Content-Length. With ``keepalive``
  each of the connections in flight stays open and sends its next request as soon as an
  answer is complete; the result then says how many connections got no answer at all
  (``starved``), which wrk cannot. An answer with ``Connection: close`` ends its
  connection, as any HTTP client would; the next request of that slot opens a new one
  (``server_closes`` counts them: gunicorn's sync workers close every connection).

A ``Crowd`` is the other kind of client: a process holding thousands of connections that
do (almost) nothing: idle ones that send nothing, ones that make one keep-alive request and
then stay idle, slowloris ones that trickle a request head a byte at a time, slow uploads
and slow downloads (a body sent, or an answer read, a slice at a time). It counts what the
server did with them (answered, closed, and when).

With ``rate``, the load is open-loop instead: new connections start at that many per
second in all, on a fixed schedule, whether or not earlier ones were answered (at most
``concurrency`` in flight per process), and each latency runs from the moment its connection
was due, not from when a free slot let it start. A server that falls behind is then charged
for the wait, which a closed loop hides by sending less (coordinated omission). A closed
loop always runs the server flat out; below that, where services spend most of their
time, what decides a tail latency is where each connection goes, not the CPU left.

Reports connections per second, latency percentiles (p50, p99, p99.9) and failures by
kind. Bounded by --duration, --max-requests and a per-request --timeout. A verified
connection is closed with SO_LINGER 0, so an HTTP client keeps no TIME_WAIT port; an echo,
mixed or proxy client, which shuts down its side first, keeps one all the same (SOURCES).

    python -m bench.loadgen --port 7101 --mode echo --procs 2 --concurrency 4 --duration 5
    python -m bench.loadgen --port 7101 --mode http --keepalive --concurrency 32
    python -m bench.loadgen --port 7101 --mode mixed --rate 1000 --concurrency 64
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import multiprocessing as mp
import os
import resource
import select
import socket
import struct
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

HOST = "127.0.0.1"
# New connections come from these loopback addresses in turn (all of 127.0.0.0/8 is loopback),
# not all from 127.0.0.1. A client that shuts down its side first (echo, mixed, proxy) leaves
# each connection in TIME_WAIT on its side. Linux gives such a port to a new connection
# towards the same server only a second later (net.ipv4.tcp_tw_reuse = 2,
# tcp_tw_reuse_delay), and connect() tries the even ports of the range first: 14,116 here.
# From a single address, echo churn then stopped at about 14,300 connections a second, with
# a p99 near 10 ms, for any server that could go faster, until earlier runs had filled the
# system's TIME_WAIT table (net.ipv4.tcp_max_tw_buckets); from then on it ran free. A run
# measured the leftovers of the runs before it. From 16 addresses the shared-accept pool ran
# free from the first round (2 workers: 26,642 connections a second against 14,363 from one).
SOURCES = tuple(f"127.0.1.{n}" for n in range(1, 17))
# The port is chosen at connect(), by the whole address pair, not at bind() (Linux 4.2).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MODES = ("echo", "mixed", "http", "proxy")
# "proxy": echo behind a balancer: each connection starts with a PROXY protocol v2 header, as
# HAProxy's send-proxy-v2 writes it (client 203.0.113.1:50000 to 127.0.0.1:80).
PROXY_V2 = (
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
    + socket.inet_aton("203.0.113.1") + socket.inet_aton("127.0.0.1")
    + struct.pack("!HH", 50000, 80)
)  # fmt: skip
HTTP_BODY = b"hello\n"
LINGER0 = struct.pack("ii", 1, 0)
MAX_DURATION = 600.0
MAX_REQUESTS = 10_000_000


@dataclass
class Result:
    mode: str
    procs: int
    concurrency: int
    duration: float
    ok: int = 0
    ok_in_window: int = 0
    failures: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    conns_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    max_ms: float = 0.0
    fast_p99_ms: float = 0.0  # mixed mode: the 9 in 10 requests that are not slow
    # p99 with every failed request counted as taking the whole timeout: a p99 that stays
    # honest when clients get no answer at all (p99_ms only sees the answered ones).
    p99_all_ms: float = 0.0
    client_cpu_us_per_conn: float = 0.0
    keepalive: bool = False
    rate: float = 0.0  # open loop: connections per second asked for (0: a closed loop)
    # Per connection slot (procs * concurrency of them; with keepalive one connection each,
    # reopened only when the server ends it): how many answers each got within the duration
    # (a starved connection is often served once the others have closed theirs).
    starved: int = 0  # slots with no answer at all
    min_answers: int = 0
    max_answers: int = 0
    server_closes: int = 0  # keep-alive: answers that said `Connection: close`


def percentile(sorted_values: list[float] | array[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(round(q * n, 6) / 100))
    return float(sorted_values[min(rank, n) - 1])


class _Conn:
    __slots__ = ("expect_echo", "inbuf", "outbuf", "sent_all", "slot", "slow", "sock", "start")

    def __init__(
        self,
        sock: socket.socket,
        slot: int,
        payload: bytes,
        echo: bool,
        slow: bool,
        due: float = 0.0,
    ) -> None:
        self.sock = sock
        self.slot = slot
        self.inbuf = bytearray()
        self.expect_echo = payload if echo else b""
        self.slow = slow
        self.next_request(payload, due)

    def next_request(self, payload: bytes, due: float = 0.0) -> None:
        """`due`: when an open loop scheduled it (its latency runs from then); else now."""
        self.outbuf = memoryview(payload)
        self.inbuf.clear()
        self.start = due or time.monotonic()
        self.sent_all = False


def _check_http(answer: bytes) -> str | None:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return "short"
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.") or lines[0][9:12] != b"200":
        return "status"
    length = _content_length(lines)
    if length is None or length != len(body) or body != HTTP_BODY:
        return "mismatch"
    return None


def _content_length(head_lines: list[bytes]) -> int | None:
    for line in head_lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip()) if value.strip().isdigit() else None
    return None


def _http_framed(buf: bytes | bytearray) -> int:
    """Length of the complete HTTP response at the start of buf, 0 while it is incomplete
    (a keep-alive answer ends at its Content-Length, not at EOF)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    length = _content_length(bytes(buf[:end]).split(b"\r\n")) or 0
    total = end + 4 + length
    return total if len(buf) >= total else 0


def _says_close(answer: bytes | bytearray) -> bool:
    """Whether a whole HTTP response ends its connection (`Connection: close`)."""
    head = bytes(answer[: answer.find(b"\r\n\r\n")]).split(b"\r\n")[1:]
    for line in head:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"connection" and b"close" in value.lower():
            return True
    return False


def _http_request(tag: str, keepalive: bool) -> bytes:
    close = "" if keepalive else "Connection: close\r\n"
    return (
        f"GET /r/{tag} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: sockpool-bench\r\n{close}\r\n"
    ).encode()


def _run_proc(
    index: int,
    port: int,
    mode: str,
    concurrency: int,
    start_at: float,
    duration: float,
    max_requests: int,
    timeout: float,
    keepalive: bool,
    pace: tuple[float, float],
    out: Any,
) -> None:
    """One process's share of the load. `pace`, in an open loop: seconds between its new
    connections, and when the first is due after start_at (the processes' schedules
    interleave, so the whole load is evenly spaced); (0, 0): a closed loop, a new
    connection whenever a slot is free."""
    interval, phase = pace
    ep = select.epoll()
    lat = array("d")
    slow_flags = array("b")
    answers = array("q", [0] * concurrency)
    free_slots = list(range(concurrency))
    fails: Counter[str] = Counter()
    ok_in_window = 0
    closes = 0  # keep-alive answers that closed their connection
    seq = 0
    inflight: dict[int, _Conn] = {}
    token = os.urandom(6).hex()
    echo = mode != "http"
    addr = (HOST, port)
    sock_type = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
    while time.monotonic() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.monotonic())))
    deadline = start_at + duration
    sent_due = 0  # open loop: connections sent so far; the next is due at due(sent_due)

    def due(n: int) -> float:
        """When the n-th (from 0) is due: from a count, so no error piles up over a run."""
        return start_at + phase + n * interval

    def more_due() -> bool:
        """The open loop's next connection is due within the run (and max_requests allows)."""
        return seq < max_requests and due(sent_due) < deadline

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)

    def payload() -> tuple[bytes, bool]:
        nonlocal seq
        seq += 1
        tag = f"{index}.{seq}.{token}"
        if mode == "http":
            return _http_request(tag, keepalive), False
        slow = mode == "mixed" and seq % 10 == 0
        return (("S" if slow else "F") + f" {tag} " + "x" * 24 + "\n").encode(), slow

    def finish(fd: int, conn: _Conn, failure: str | None, reuse: bool = True) -> None:
        nonlocal ok_in_window
        now = time.monotonic()
        if failure is None:
            lat.append(now - conn.start)
            slow_flags.append(1 if conn.slow else 0)
            if now <= deadline:
                ok_in_window += 1
                answers[conn.slot] += 1
            if keepalive and reuse and now < deadline and seq < max_requests:
                conn.next_request(payload()[0])
                ep.modify(fd, select.EPOLLOUT)
                send(fd, conn)
                return
            # Complete and verified: abort. An HTTP client, whose server closed first, then
            # keeps no TIME_WAIT; one that shut down its side first (echo) is in it already
            # (SOURCES).
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        else:
            fails[failure] += 1
        ep.unregister(fd)
        del inflight[fd]
        free_slots.append(conn.slot)
        conn.sock.close()

    def send(fd: int, conn: _Conn) -> None:
        try:
            n = conn.sock.send(conn.outbuf)
        except BlockingIOError:
            return
        except OSError:
            finish(fd, conn, "reset")
            return
        conn.outbuf = conn.outbuf[n:]
        if len(conn.outbuf) == 0:
            conn.sent_all = True
            if echo:
                conn.sock.shutdown(socket.SHUT_WR)
            ep.modify(fd, select.EPOLLIN)

    def launch(due: float = 0.0) -> None:
        slot = free_slots.pop()
        data, slow = payload()
        s = socket.socket(socket.AF_INET, sock_type)
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((SOURCES[seq % len(SOURCES)], 0))
        conn = _Conn(s, slot, data, echo, slow, due)
        if mode == "proxy":  # the header goes first; the echo answers the rest
            conn.outbuf = memoryview(PROXY_V2 + data)
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            fails["connect"] += 1
            free_slots.append(slot)
            s.close()
            return
        fd = s.fileno()
        inflight[fd] = conn
        ep.register(fd, select.EPOLLOUT)
        if err == 0:
            send(fd, conn)

    def on_event(fd: int) -> None:
        nonlocal closes
        conn = inflight.get(fd)
        if conn is None:
            return
        s = conn.sock
        if not conn.sent_all:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                finish(fd, conn, "connect")
            else:
                send(fd, conn)
            return
        try:
            data = s.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            finish(fd, conn, "reset")
            return
        if data:
            conn.inbuf += data
            if keepalive and (n := _http_framed(conn.inbuf)):
                whole = n == len(conn.inbuf)  # more than one answer to one request is wrong
                failure = _check_http(bytes(conn.inbuf)) if whole else "mismatch"
                reuse = not _says_close(conn.inbuf)
                closes += not reuse and failure is None
                finish(fd, conn, failure, reuse)
            elif len(conn.inbuf) > 1 << 16:
                finish(fd, conn, "mismatch")
            return
        answer = bytes(conn.inbuf)
        if keepalive:  # the server ended the connection before a whole answer
            finish(fd, conn, "short" if answer else "closed")
        elif echo:
            if answer == conn.expect_echo:
                finish(fd, conn, None)
            else:
                finish(fd, conn, "short" if not answer else "mismatch")
        else:
            finish(fd, conn, _check_http(answer))

    last_sweep = time.monotonic()
    while True:
        now = time.monotonic()
        # An open loop sends every connection due within the run, however late: stopping at
        # the deadline would spare a server that fell behind the very ones it kept waiting.
        issuing = more_due() if interval else seq < max_requests and now < deadline
        if interval:  # each one due by now, as slots free up: a late one's wait counts
            while issuing and free_slots and due(sent_due) <= now:
                launch(due(sent_due))
                sent_due += 1
                issuing = more_due()
        else:
            while issuing and free_slots:
                launch()
                issuing = seq < max_requests
        if not inflight and not issuing:
            break
        if now > deadline + timeout + 1:
            for fd, conn in list(inflight.items()):
                finish(fd, conn, "timeout")
            while interval and more_due():
                fails["unsent"] += 1  # due, and the server never made room for it
                sent_due, seq = sent_due + 1, seq + 1
            break
        wait = 0.05
        if interval and issuing and free_slots:
            wait = min(wait, max(0.0, due(sent_due) - time.monotonic()))
            # epoll's timeout is in whole milliseconds, rounded up: a connection would start
            # up to a millisecond late, and that would count as the server's. select() on
            # the epoll descriptor waits to the microsecond; it is readable once an event is.
            select.select([ep], [], [], wait)
            wait = 0.0
        for fd, _events in ep.poll(wait):
            on_event(fd)
        if now - last_sweep > 0.1:
            last_sweep = now
            for fd, conn in list(inflight.items()):
                if now - conn.start > timeout:
                    finish(fd, conn, "timeout")
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    ep.close()
    out.send(
        (
            lat.tobytes(),
            slow_flags.tobytes(),
            dict(fails),
            ok_in_window,
            cpu,
            answers.tobytes(),
            closes,
        )
    )
    out.close()


def options_problem(mode: str, keepalive: bool, rate: float) -> str | None:
    """What is wrong with these options together (run() and the command line), or None."""
    if keepalive and mode != "http":
        return "--keepalive needs --mode http"
    if not 0 <= rate < math.inf or (rate and keepalive):
        return "--rate must be finite and not negative (0: a closed loop), without --keepalive"
    return None


def run(
    port: int,
    mode: str = "echo",
    procs: int = 2,
    concurrency: int = 4,
    duration: float = 5.0,
    max_requests: int = 1_000_000,
    timeout: float = 5.0,
    keepalive: bool = False,
    rate: float = 0.0,
) -> Result:
    """Run the load and return the aggregated result (blocks for about `duration`).
    `rate`: an open loop of that many new connections per second (see the module's doc)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if problem := options_problem(mode, keepalive, rate):
        raise ValueError(problem)
    duration = min(max(duration, 0.1), MAX_DURATION)
    max_requests = min(max_requests, MAX_REQUESTS)
    ctx = mp.get_context("fork")
    start_at = time.monotonic() + 0.2
    per_proc = max(1, max_requests // procs)
    pipes = []
    children = []
    for i in range(procs):
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_run_proc,
            args=(
                *(i, port, mode, concurrency, start_at, duration, per_proc, timeout, keepalive),
                (procs / rate, i / rate) if rate else (0.0, 0.0),
                w,
            ),
            daemon=True,
        )
        p.start()
        w.close()
        pipes.append(r)
        children.append(p)
    lat = array("d")
    slow = array("b")
    fails: Counter[str] = Counter()
    ok_in_window = 0
    closes = 0
    cpu = 0.0
    answers = array("q")
    limit = time.monotonic() + duration + timeout + 30
    for r in pipes:
        if not r.poll(max(0.0, limit - time.monotonic())):
            fails["lost-process"] += 1
            answers.extend([0] * concurrency)
            continue
        blat, bslow, f, okw, c, banswers, pcloses = r.recv()
        closes += pcloses
        answers.frombytes(banswers)
        part = array("d")
        part.frombytes(blat)
        lat.extend(part)
        pslow = array("b")
        pslow.frombytes(bslow)
        slow.extend(pslow)
        fails.update(f)
        ok_in_window += okw
        cpu += c
    for p in children:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
    res = Result(
        mode=mode,
        procs=procs,
        concurrency=concurrency,
        duration=duration,
        keepalive=keepalive,
        rate=rate,
    )
    res.ok = len(lat)
    res.ok_in_window = ok_in_window
    res.failure_kinds = dict(fails)
    res.failures = sum(fails.values())
    res.conns_per_s = ok_in_window / duration
    ordered = sorted(lat)
    res.p50_ms = percentile(ordered, 50) * 1e3
    res.p99_ms = percentile(ordered, 99) * 1e3
    res.p999_ms = percentile(ordered, 99.9) * 1e3
    res.max_ms = (ordered[-1] if ordered else 0.0) * 1e3
    res.p99_all_ms = percentile(sorted([*ordered, *[timeout] * res.failures]), 99) * 1e3
    if keepalive:
        res.starved = answers.tolist().count(0)
        res.min_answers, res.max_answers = min(answers, default=0), max(answers, default=0)
        res.server_closes = closes
    if mode == "mixed":
        fast = sorted(x for x, s in zip(lat, slow, strict=True) if not s)
        res.fast_p99_ms = percentile(fast, 99) * 1e3
    if res.ok:
        res.client_cpu_us_per_conn = cpu / res.ok * 1e6
    return res


# --- a crowd of connections that (almost) never ask for anything ----------------------

CROWD_KINDS = ("idle", "request", "trickle", "upload", "download")
# Connects in progress at once. A full accept queue drops SYNs, and a dropped SYN is only
# retried after a second or more: opening in waves keeps the open phase as short as the
# server lets it be.
PENDING_CONNECTS = 256
# A request head that never ends: a slowloris client sends it a byte at a time and runs
# out of time (or is closed) long before it runs out of head.
SLOW_HEAD = (
    b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: sockpool-bench-slowloris\r\n"
    b"X-Slow: " + b"a" * 8000
)
# A slow upload: a POST whose body (a photo from a phone) comes UPLOAD_SLICE bytes at a time.
UPLOAD_BODY = 64 << 10
UPLOAD_SLICE = 4 << 10
UPLOAD = (
    b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: sockpool-bench-upload\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % UPLOAD_BODY
) + b"u" * UPLOAD_BODY
# A slow download: GET /download (bench/apps/flask_hello.py sends a file of DOWNLOAD_SIZE
# bytes, download_body()), read DOWNLOAD_SLICE bytes at a time into a receive buffer of
# DOWNLOAD_RCVBUF (the kernel doubles it): the reader's pace, not the kernel's buffers, sets
# how fast the server's answer goes. 8 MiB is more than loopback's buffers hold for a client
# that reads slowly (the sender's grows up to net.ipv4.tcp_wmem's 4 MiB, plus the receiver's).
DOWNLOAD_SIZE = 8 << 20
DOWNLOAD_SLICE = 64 << 10
DOWNLOAD_RCVBUF = 64 << 10
DOWNLOAD = (
    b"GET /download HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: sockpool-bench-download\r\n"
    b"Connection: close\r\n\r\n"
)
_HEAD_MAX = 1 << 16  # a download's answer head longer than this is wrong


def download_body(size: int = DOWNLOAD_SIZE) -> bytes:
    """The file a download fetches: 16-byte lines, each its own offset in hex, so that a
    byte lost, repeated or moved anywhere shows."""
    return b"".join(b"%015x\n" % offset for offset in range(0, size, 16))[:size]


def raise_nofile(need: int = 0) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (a Crowd holds thousands of sockets, and
    servers started from this process inherit the limit); ValueError if still below need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < need:
        raise ValueError(
            f"RLIMIT_NOFILE allows {soft} descriptors, {need} needed: raise the hard limit "
            "(ulimit -Hn, or LimitNOFILE=)"
        )
    return soft


@dataclass
class CrowdState:
    """What the server has done with a Crowd's connections so far."""

    conns: int
    kind: str
    started: int = 0  # connect() called
    pending: int = 0  # connects not complete yet (a SYN dropped by a full accept queue)
    connected: int = 0  # handshake complete: the client's view, the server may not have accepted
    failed: int = 0  # connect failed
    receiving: int = 0  # "download": the first bytes of its answer arrived
    answered: int = 0  # "request", "upload", "download": its one answer arrived, complete
    # and right (a download: the whole file, checked byte for byte)
    wrong: int = 0  # "request", "upload", "download": an answer that was not the expected one
    closed: int = 0  # ended by the server (EOF or reset) while the crowd held it (an
    # answered upload or download too: it asks for Connection: close)
    closed_after_s: list[float] = field(default_factory=list)  # connect to close, per closed one
    error: str = ""

    @property
    def held(self) -> int:
        """Connected and not closed by the server."""
        return self.connected - self.closed


class _Member:
    __slots__ = ("answered", "body", "buf", "connecting", "got", "sent", "sock", "start")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.start = time.monotonic()
        self.connecting = True
        self.answered = False  # its answer judged: right (answered) or wrong
        self.buf = bytearray()  # what came of its answer (a download: of its head)
        self.sent = 0
        self.got = 0  # a download: bytes of the body that came
        self.body = -1  # a download: the body's length, once its head came whole


def _crowd_proc(port: int, conns: int, kind: str, interval: float, ctl: Any) -> None:
    state = CrowdState(conns, kind)
    try:
        raise_nofile(conns + 64)
    except ValueError as exc:
        state.error = str(exc)
    ep = select.epoll()
    ctl_fd = ctl.fileno()
    ep.register(ctl_fd, select.EPOLLIN)
    members: dict[int, _Member] = {}
    due: deque[tuple[float, int, _Member]] = deque()  # trickle: the next byte's time, in order
    addr = (HOST, port)
    to_open = 0 if state.error else conns
    give_up = time.monotonic() + MAX_DURATION
    expected = download_body() if kind == "download" else b""

    def drop(fd: int, m: _Member, by_server: bool) -> None:
        ep.unregister(fd)
        del members[fd]
        if m.connecting:
            state.pending -= 1
        if by_server:
            state.closed += 1
            state.closed_after_s.append(time.monotonic() - m.start)
        m.sock.close()

    def send(fd: int, m: _Member, data: bytes) -> int:
        """Bytes sent (a request, a byte: all of them into an empty send buffer; a slice of
        an upload to a server that reads nothing yet, perhaps not); -1: closed by the server."""
        try:
            return m.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            drop(fd, m, True)
            return -1

    def trickle(fd: int, m: _Member) -> None:
        """The next piece: a byte of a head that never ends, or the next slice of an upload
        (its head whole, with the first one), until it is all sent; a download reads the
        next slice of its answer, until the server closes it."""
        if kind == "download":
            take(fd, m)
            return
        if kind == "trickle":
            piece = SLOW_HEAD[m.sent : m.sent + 1]
        else:
            piece = UPLOAD[m.sent : (m.sent or len(UPLOAD) - UPLOAD_BODY) + UPLOAD_SLICE]
        if (sent := send(fd, m, piece)) >= 0:
            m.sent += sent
            if m.sent < len(UPLOAD) or kind == "trickle":
                due.append((time.monotonic() + interval, fd, m))

    def take(fd: int, m: _Member) -> None:
        """A download's next DOWNLOAD_SLICE bytes, or what has come of them; the next slice
        is due an interval later, until the server's close (EOF or reset: dropped once)."""
        want = DOWNLOAD_SLICE
        while want > 0:
            if (data := receive(fd, m, want)) is None:
                return
            if not data:
                break
            want -= len(data)
            if not m.answered:
                judge_download(m, data)
        due.append((time.monotonic() + interval, fd, m))

    def judge_download(m: _Member, data: bytes) -> None:
        """Take what came of a download's answer: answered once its head says 200 with a
        Content-Length of DOWNLOAD_SIZE and that many bytes came, each the file's; wrong
        at the first thing that is not (bytes past the end included)."""
        if m.body < 0:
            if not m.buf:
                state.receiving += 1
            m.buf += data
            end = m.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(m.buf) > _HEAD_MAX:
                    m.answered, state.wrong = True, state.wrong + 1
                return
            lines = bytes(m.buf[:end]).split(b"\r\n")
            data = bytes(m.buf[end + 4 :])
            m.buf = bytearray()
            m.body = _content_length(lines) or 0
            if lines[0][9:12] != b"200" or m.body != len(expected):
                m.answered, state.wrong = True, state.wrong + 1
                return
        if expected[m.got : m.got + len(data)] != data:  # past the end: longer than it
            m.answered, state.wrong = True, state.wrong + 1
            return
        m.got += len(data)
        if m.got == m.body:
            m.answered, state.answered = True, state.answered + 1

    def established(fd: int, m: _Member) -> None:
        m.connecting = False
        state.pending -= 1
        if m.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            state.failed += 1
            drop(fd, m, False)
            return
        state.connected += 1
        ep.modify(fd, select.EPOLLIN | select.EPOLLRDHUP)
        if kind == "request":
            send(fd, m, _http_request(f"crowd.{state.connected}", keepalive=True))
        elif kind in ("trickle", "upload"):
            trickle(fd, m)
        elif kind == "download" and send(fd, m, DOWNLOAD) >= 0:
            # Read on its schedule only (take()): no EPOLLIN, which an answer waiting in
            # the buffer would report at every poll; an error or hang-up, once (EPOLLET).
            ep.modify(fd, select.EPOLLET)
            due.append((time.monotonic() + interval, fd, m))

    def receive(fd: int, m: _Member, size: int) -> bytes | None:
        """Up to `size` bytes of what came (b"": nothing yet); None: the server closed the
        connection (EOF or reset), and it is dropped."""
        try:
            data = m.sock.recv(size)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            drop(fd, m, True)
            return None
        return data

    def readable(fd: int, m: _Member) -> None:
        if kind == "download":  # an error or hang-up: take() reads what came, then sees it
            return
        if not (data := receive(fd, m, 65536)):
            return
        if kind in ("request", "upload") and not m.answered:
            m.buf += data
            if n := _http_framed(m.buf):
                m.answered = True
                if n == len(m.buf) and _check_http(bytes(m.buf)) is None:
                    state.answered += 1
                else:
                    state.wrong += 1
                m.buf = bytearray()
        # Anything else (an error page before a close, say) is read and dropped.

    def open_one() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        if kind == "download":  # before connect(): the window it advertises follows it
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DOWNLOAD_RCVBUF)
        state.started += 1
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            state.failed += 1
            s.close()
            return
        members[s.fileno()] = _Member(s)
        state.pending += 1
        ep.register(s.fileno(), select.EPOLLOUT)  # fires at once when already connected

    running = True
    while running and time.monotonic() < give_up:
        while state.started < to_open and state.pending < PENDING_CONNECTS:
            open_one()
        wait = 0.05 if not due else min(0.05, max(0.0, due[0][0] - time.monotonic()))
        for fd, _events in ep.poll(wait):
            if fd == ctl_fd:
                try:
                    command = ctl.recv()
                except EOFError:  # the harness is gone
                    command = "stop"
                if command == "stop":
                    running = False
                    break
                ctl.send(state)
                continue
            m = members.get(fd)
            if m is None:
                continue
            if m.connecting:
                established(fd, m)
            else:
                readable(fd, m)
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, fd, m = due.popleft()
            if members.get(fd) is m:
                trickle(fd, m)
    for m in members.values():
        m.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)  # no TIME_WAIT left
        m.sock.close()
    ep.close()
    with contextlib.suppress(OSError):
        ctl.send(state)
    ctl.close()


class Crowd:
    """`conns` connections to 127.0.0.1:port, held by a process of their own (so that the
    load processes forked later never inherit its descriptors), until stop():

    - ``idle``: connect and send nothing;
    - ``request``: one keep-alive HTTP request each, then stay open and idle;
    - ``trickle`` (slowloris): a request head that never ends, one byte every `interval` s;
    - ``upload``: a POST of UPLOAD_BODY bytes, its head and body UPLOAD_SLICE bytes at a
      time, one slice every `interval` s, then its answer (`answered`) and the server's close;
    - ``download``: GET /download, then its answer read DOWNLOAD_SLICE bytes every `interval`
      s (`receiving` once its first bytes came; `answered` once the whole file did, checked
      against download_body()), until the server's close.

    Use it in a with block; wait() polls its state, stop() closes every connection (with a
    reset: no TIME_WAIT) and returns the final state, with when each closed connection was
    closed by the server.
    """

    def __init__(self, port: int, conns: int, kind: str = "idle", interval: float = 2.0) -> None:
        if kind not in CROWD_KINDS:
            raise ValueError(f"kind must be one of {CROWD_KINDS}")
        self.port, self.conns, self.kind, self.interval = port, conns, kind, interval
        self.final: CrowdState | None = None
        self._proc: Any = None
        self._ctl: Any = None

    def __enter__(self) -> Crowd:
        ctx = mp.get_context("fork")
        self._ctl, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_crowd_proc,
            args=(self.port, self.conns, self.kind, self.interval, child),
            daemon=True,
        )
        self._proc.start()
        child.close()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> CrowdState:
        if self.final is not None:
            return self.final
        self._ctl.send("status")
        if not self._ctl.poll(30):
            raise RuntimeError("the crowd process stopped answering")
        state: CrowdState = self._ctl.recv()
        if state.error:
            raise RuntimeError(state.error)
        return state

    def wait(
        self, done: Callable[[CrowdState], bool], cap: float, stall: float | None = None
    ) -> CrowdState:
        """The state once done(state) holds, after `cap` seconds, or (with `stall`) once no
        count has moved for `stall` seconds: a server that stopped taking connections."""
        now = time.monotonic()
        end, moved, last = now + cap, now, None
        while True:
            state = self.status()
            now = time.monotonic()
            counts = (state.connected, state.receiving, state.answered, state.closed, state.failed)
            if counts != last:
                last, moved = counts, now
            if done(state) or now >= end or (stall is not None and now - moved >= stall):
                return state
            time.sleep(0.1)

    def stop(self) -> CrowdState:
        if self.final is None and self._proc is not None:
            with contextlib.suppress(OSError, EOFError):
                self._ctl.send("stop")
                if self._ctl.poll(30):
                    self.final = self._ctl.recv()
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            self._ctl.close()
        if self.final is None:
            self.final = CrowdState(self.conns, self.kind, error="the crowd process was lost")
        return self.final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=MODES, default="echo")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4, help="connections in flight per process")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of load")
    ap.add_argument("--max-requests", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    ap.add_argument(
        "--keepalive", action="store_true", help="http: keep each connection for every request"
    )
    ap.add_argument(
        "--rate", type=float, default=0.0, help="open loop: new connections per second in all"
    )
    args = ap.parse_args(argv)
    if problem := options_problem(args.mode, args.keepalive, args.rate):
        ap.error(problem)
    res = run(
        args.port,
        args.mode,
        args.procs,
        args.concurrency,
        args.duration,
        args.max_requests,
        args.timeout,
        args.keepalive,
        args.rate,
    )
    json.dump(asdict(res), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if res.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
