"""Raw TCP load generator: a new connection per request, every answer checked.

Several processes, each keeping `concurrency` connections in flight with non-blocking
sockets on epoll. Each request opens a connection to 127.0.0.1, sends a payload unique
to that request, and reads the answer to EOF:

- ``echo``: the payload, then shutdown(SHUT_WR); the answer must be the payload.
- ``mixed``: as echo, but one request in ten starts with ``S``, which bench.handlers'
  mixed handlers (and the Node peer) answer after 50 ms.
- ``http``: ``GET /<unique> HTTP/1.1`` with ``Connection: close``; the answer must be a
  ``200`` with the body ``hello\\n`` and a matching Content-Length.

Reports connections per second, latency percentiles (p50, p99, p99.9) and failures by
kind. Bounded by --duration, --max-requests and a per-request --timeout. A verified
connection is closed with SO_LINGER 0, so the client keeps no TIME_WAIT port.

    python -m bench.loadgen --port 7101 --mode echo --procs 2 --concurrency 4 --duration 5
"""

from __future__ import annotations

import argparse
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
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

HOST = "127.0.0.1"
MODES = ("echo", "mixed", "http")
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
    client_cpu_us_per_conn: float = 0.0


def percentile(sorted_values: list[float] | array[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(round(q * n, 6) / 100))
    return float(sorted_values[min(rank, n) - 1])


class _Conn:
    __slots__ = ("expect_echo", "inbuf", "outbuf", "sent_all", "slow", "sock", "start")

    def __init__(self, sock: socket.socket, payload: bytes, echo: bool, slow: bool) -> None:
        self.sock = sock
        self.outbuf = memoryview(payload)
        self.inbuf = bytearray()
        self.start = time.monotonic()
        self.expect_echo = payload if echo else b""
        self.slow = slow
        self.sent_all = False


def _check_http(answer: bytes) -> str | None:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return "short"
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.") or lines[0][9:12] != b"200":
        return "status"
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None or length != len(body) or body != HTTP_BODY:
        return "mismatch"
    return None


def _run_proc(
    index: int,
    port: int,
    mode: str,
    concurrency: int,
    start_at: float,
    duration: float,
    max_requests: int,
    timeout: float,
    out: Any,
) -> None:
    ep = select.epoll()
    lat = array("d")
    slow_flags = array("b")
    fails: Counter[str] = Counter()
    ok_in_window = 0
    seq = 0
    inflight: dict[int, _Conn] = {}
    token = os.urandom(6).hex()
    echo = mode != "http"
    addr = (HOST, port)
    sock_type = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
    while time.monotonic() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.monotonic())))
    deadline = start_at + duration
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)

    def finish(fd: int, conn: _Conn, failure: str | None) -> None:
        nonlocal ok_in_window
        now = time.monotonic()
        ep.unregister(fd)
        del inflight[fd]
        if failure is None:
            lat.append(now - conn.start)
            slow_flags.append(1 if conn.slow else 0)
            if now <= deadline:
                ok_in_window += 1
            # The answer is complete and verified: abort rather than keep TIME_WAIT.
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        else:
            fails[failure] += 1
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

    def launch() -> None:
        nonlocal seq
        seq += 1
        tag = f"{index}.{seq}.{token}"
        slow = mode == "mixed" and seq % 10 == 0
        if mode == "http":
            payload = (
                f"GET /r/{tag} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: sockpool-bench\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
        else:
            payload = (("S" if slow else "F") + f" {tag} " + "x" * 24 + "\n").encode()
        s = socket.socket(socket.AF_INET, sock_type)
        conn = _Conn(s, payload, echo, slow)
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            fails["connect"] += 1
            s.close()
            return
        fd = s.fileno()
        inflight[fd] = conn
        ep.register(fd, select.EPOLLOUT)
        if err == 0:
            send(fd, conn)

    def on_event(fd: int) -> None:
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
            if len(conn.inbuf) > 1 << 16:
                finish(fd, conn, "mismatch")
            return
        answer = bytes(conn.inbuf)
        if echo:
            if answer == conn.expect_echo:
                finish(fd, conn, None)
            else:
                finish(fd, conn, "short" if not answer else "mismatch")
        else:
            finish(fd, conn, _check_http(answer))

    last_sweep = time.monotonic()
    while True:
        now = time.monotonic()
        issuing = now < deadline and seq < max_requests
        while issuing and len(inflight) < concurrency:
            launch()
            issuing = seq < max_requests
        if not inflight:
            if not issuing:
                break
            continue
        if now > deadline + timeout + 1:
            for fd, conn in list(inflight.items()):
                finish(fd, conn, "timeout")
            break
        for fd, _events in ep.poll(0.05):
            on_event(fd)
        if now - last_sweep > 0.1:
            last_sweep = now
            for fd, conn in list(inflight.items()):
                if now - conn.start > timeout:
                    finish(fd, conn, "timeout")
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    ep.close()
    out.send((lat.tobytes(), slow_flags.tobytes(), dict(fails), ok_in_window, cpu))
    out.close()


def run(
    port: int,
    mode: str = "echo",
    procs: int = 2,
    concurrency: int = 4,
    duration: float = 5.0,
    max_requests: int = 1_000_000,
    timeout: float = 5.0,
) -> Result:
    """Run the load and return the aggregated result (blocks for about `duration`)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
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
            args=(i, port, mode, concurrency, start_at, duration, per_proc, timeout, w),
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
    cpu = 0.0
    limit = time.monotonic() + duration + timeout + 30
    for r in pipes:
        if not r.poll(max(0.0, limit - time.monotonic())):
            fails["lost-process"] += 1
            continue
        blat, bslow, f, okw, c = r.recv()
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
    res = Result(mode=mode, procs=procs, concurrency=concurrency, duration=duration)
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
    if mode == "mixed":
        fast = sorted(x for x, s in zip(lat, slow, strict=True) if not s)
        res.fast_p99_ms = percentile(fast, 99) * 1e3
    if res.ok:
        res.client_cpu_us_per_conn = cpu / res.ok * 1e6
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=MODES, default="echo")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4, help="connections in flight per process")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of load")
    ap.add_argument("--max-requests", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    args = ap.parse_args(argv)
    res = run(
        args.port,
        args.mode,
        args.procs,
        args.concurrency,
        args.duration,
        args.max_requests,
        args.timeout,
    )
    json.dump(asdict(res), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if res.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
