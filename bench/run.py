"""Run every scenario against sockpool and its peers; write bench/results/.

Each scenario runs the servers one after another under the same client load, for
several rounds (the order rotates each round), and keeps every measurement; the report
(bench.report) takes medians and ratios to sockpool. Every server is started exactly as
systemd would start it, through `systemd-socket-activate` on a fresh 127.0.0.1 port (by
tests/harness.py's Service, as the integration tests start sockpool), with the same worker
count; systemd's own Accept=yes runs in a real-systemd container.

    python -m bench.run                 # the full run (make bench), about 22 minutes here
    python -m bench.run --smoke --out /tmp/x   # seconds: two servers, two scenarios
    python -m bench.run --scenario slowloris --out /tmp/x   # one scenario (or a list)

The issue 12 scenarios (idle-keepalive, idle-async, slowloris, keepalive-64, keepalive-few,
parked-memory, park-after) run 2 workers whatever --workers says: idle, slow and keep-alive
connections against the default pool of a 2-core machine, under 5 minutes together. They
pass issue 12's new flags only to a sockpool whose --help lists them (FLAG_* below), so
the same code measures sockpool before and after it; park-after needs --park-after. Their
slow crowds (slow-upload, flask-upload: bodies sent slowly; flask-download: an 8 MiB file
read slowly, from Flask's send_file) run the same way, flask-download about 80 s.

Issue 14's scenarios (newconn-echo-2w, churn-cpu, ceiling, mixed-cpu, mixed-cpu-paced)
measure sockpool's handoff against the shared-accept pool and the plain loop with the same
handler and workers:
echo churn at 2 workers (newconn-echo gives 4), churn with 0.5 ms of CPU per connection, the
dispatcher's CPU with workers that answer at once (its ceiling, 1e6 / µs per connection),
and async workers where one request in ten burns 5 ms of CPU, flat out and (mixed-cpu-paced)
at PACED_RATE connections a second on a schedule. newconn-http and
newconn-http-wrk run the plain loop too, and newconn-echo runs `--dispatchers 2` beside the
default where sockpool has the flag. Every load run records the CPU per connection of the
main process and of the processes below it (the workers), from /proc.

    python -m bench.run --scenarios newconn-echo-2w,churn-cpu,ceiling,mixed-cpu,mixed-cpu-paced \
        --out /tmp/x

The issue 13 scenarios (flask-newconn, flask-keepalive, starlette) serve the same Flask and
Starlette "hello" apps (bench/apps/) under sockpool --wsgi/--asgi, gunicorn (sync and
gthread) and uvicorn, each with --workers workers, under 3 minutes together. A sockpool
whose --help lacks --wsgi/--asgi has no rows there (a note says so); the peers run anyway.

    python -m bench.run --scenarios flask-newconn,flask-keepalive,starlette --out /tmp/web
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import acceptyes, loadgen, procfs
from tests.harness import Service, connect, read_to_eof, request

REPO = Path(__file__).resolve().parent.parent
SERVICE = REPO / "service"  # the package's directory (pyproject's package-dir)
BENCH = REPO / "bench"
# The interpreter running the harness (the project's venv under make) runs the Python
# servers too; sockpool and gunicorn are its console scripts.
PY = Path(sys.executable)
BIN = PY.parent
HOST = "127.0.0.1"
NODE = shutil.which("node") or shutil.which("nodejs") or "node"
START_TIMEOUT = 30.0

# The handlers each scenario serves: (sync, async).
ECHO = "sockpool.handlers:echo"
HTTP = "sockpool.handlers:http_hello"
HTTP_ASYNC = "sockpool.handlers:http_hello_async"
ECHO_ASYNC = "sockpool.handlers:echo_async"
MIXED = "bench.handlers:mixed"
MIXED_ASYNC = "bench.handlers:mixed_async"
MIXED_CPU_ASYNC = "bench.handlers:mixed_cpu_async"
CPU_ECHO = "bench.handlers:cpu_echo"
ANSWER_ONCE = "bench.handlers:answer_once"


@dataclass
class Config:
    workers: int = 4
    rounds: int = 3
    # 4 s measured after 0.5 s of warm-up: every scenario in one run stays within ~20 minutes
    # on a 2-core machine (issue 14 added 40 server runs); medians over 3 rounds.
    duration: float = 4.0
    procs: int = 2
    concurrency: int = 4  # per load process: procs * concurrency connections in flight
    cold_rounds: int = 5
    warmup: float = 0.5  # seconds of the same load before measuring (JITs, lazy imports)
    container: bool = True
    scenarios: list[str] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)
    out: Path = BENCH / "results"


@dataclass
class Spec:
    """One server as one scenario runs it."""

    server: str  # sockpool, prefork, plainloop, forking, gunicorn, node, accept-yes
    label: str
    argv: list[str]
    dispatcher: bool = False  # its main process only dispatches: measure its CPU/conn
    record: dict[str, Any] = field(default_factory=dict)  # settings to keep with its figures
    pythonpath: str = ""  # before the repository's: another sockpool's tree
    nodelay: bool = False  # TCP_NODELAY on the activated socket, as a unit's NoDelay=yes
    workers: int = 0  # its worker count when not cfg.workers (a scenario that fixes it)


def pool_size(spec: Spec, cfg: Config) -> int:
    return spec.workers or cfg.workers


NODELAY = [str(PY), "-m", "bench.peers.nodelay"]


def sockpool_argv(
    cfg: Config, handler: str | None, workers: int | None = None, flags: tuple[str, ...] = ()
) -> list[str]:
    """No handler: the flags name what it serves (--wsgi/--asgi APP)."""
    return [
        str(BIN / "sockpool"),
        "--workers",
        str(workers or cfg.workers),
        "--log-target",
        "stderr",
        "--log-level",
        "warning",
        *flags,
        *([handler] if handler else []),
    ]


_flags: set[str] = set()


def sockpool_has(flag: str) -> bool:
    """Whether this sockpool takes `flag` (read from --help): the issue 12 scenarios pass
    its new settings only where they exist, so they also measure the code before it."""
    if not _flags:
        out = subprocess.run(
            [str(BIN / "sockpool"), "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            env=os.environ | {"PYTHONPATH": pythonpath()},
        ).stdout
        _flags.update(re.findall(r"--[a-z][a-z-]+", out))
    return flag in _flags


def pythonpath(first: str = "") -> str:
    """The servers' PYTHONPATH: `first` (another sockpool's tree), then this checkout's
    sockpool, before whatever the venv installed (its editable install may point at another
    checkout, and a worktree's bench would measure that), then the repository (bench.*)."""
    return ":".join(p for p in (first, str(SERVICE), str(REPO)) if p)


def py_peer(module: str, *args: str) -> list[str]:
    return [str(PY), "-m", f"bench.peers.{module}", *args]


def gunicorn_argv(cfg: Config, app: str = "bench.peers.wsgi:app", threads: int = 0) -> list[str]:
    """gunicorn on the activated socket (it reads LISTEN_FDS itself): sync workers, or
    gthread workers with `threads` threads each."""
    kind = ["gthread", "--threads", str(threads)] if threads else ["sync"]
    return [
        str(BIN / "gunicorn"),
        "--workers",
        str(cfg.workers),
        "--worker-class",
        *kind,
        "--no-control-socket",
        "--log-level",
        "warning",
        app,
    ]


def node_argv(cfg: Config, mode: str) -> list[str]:
    return [NODE, str(BENCH / "peers" / "cluster.js"), mode, str(cfg.workers)]


PLAIN = "plain loop (accept/send_fds/close)"


def handoff_trio(cfg: Config, handler: str, what: str, workers: int = 0) -> list[Spec]:
    """sockpool, the shared-accept pool and the plain loop serving `handler` with the same
    workers: the three every handoff figure is a ratio between."""
    w = workers or cfg.workers
    record = {"workers": w} if workers else {}
    return [
        Spec(
            "sockpool",
            f"sockpool ({what})",
            sockpool_argv(cfg, handler, w),
            dispatcher=True,
            record=record,
            workers=workers,
        ),
        Spec(
            "prefork",
            "shared-accept pool",
            py_peer("prefork", "--workers", str(w), handler),
            record=record,
            workers=workers,
        ),
        Spec(
            "plainloop",
            PLAIN,
            py_peer("plainloop", "--workers", str(w), handler),
            dispatcher=True,
            record=record,
            workers=workers,
        ),
    ]


def servers_for(scenario: str, cfg: Config) -> list[Spec]:
    w = str(cfg.workers)
    if scenario in ("newconn-echo", "coldstart", "memory"):
        specs = [
            *handoff_trio(cfg, ECHO, "echo"),
            Spec("forking", "ForkingTCPServer", py_peer("forking", ECHO)),
            Spec("node", "Node.js cluster", node_argv(cfg, "echo"), dispatcher=True),
        ]
        if scenario == "newconn-echo" and sockpool_has(FLAG_DISPATCHERS):
            # Beside the default single dispatcher, in the same rounds. Its main process
            # supervises: no dispatcher CPU figure, only the whole pool's.
            argv = sockpool_argv(cfg, ECHO, flags=(FLAG_DISPATCHERS, "2"))
            specs.insert(1, Spec("sockpool-d2", "sockpool, dispatchers = 2", argv))
        if scenario == "newconn-echo" and sockpool_has(FLAG_QUEUE_AHEAD):
            specs[1:1] = queue_ahead_specs(specs[0])
        if scenario == "newconn-echo":
            specs = workers_accept(specs)
        if scenario == "newconn-echo" and sockpool_has(FLAG_CONFIG):
            # PROXY protocol v2 on the same listener (issue 15): its cost beside none.
            argv = sockpool_argv(cfg, ECHO, flags=(FLAG_CONFIG, str(BENCH / "proxy.toml")))
            proxied = Spec("sockpool-proxy", "sockpool (echo, PROXY v2)", argv, dispatcher=True)
            specs.insert(1, dataclasses.replace(proxied, record={"mode": "proxy"}))
        if scenario == "coldstart":
            specs = [s for s in specs if s.server != "plainloop"]
            specs.append(Spec("gunicorn", "gunicorn sync (HTTP)", gunicorn_argv(cfg)))
        if scenario == "memory":
            specs = [s for s in specs if s.server != "forking"]
            specs.append(Spec("gunicorn", "gunicorn sync (HTTP)", gunicorn_argv(cfg)))
    elif scenario in ("newconn-echo-2w", "churn-cpu"):
        handler, what = (ECHO, "echo") if scenario == "newconn-echo-2w" else (CPU_ECHO, "cpu_echo")
        specs = handoff_trio(cfg, handler, what, W14)
        if sockpool_has(FLAG_QUEUE_AHEAD):
            specs[1:1] = queue_ahead_specs(specs[0])
        specs = workers_accept(specs)
    elif scenario == "ceiling":
        specs = [s for s in handoff_trio(cfg, ANSWER_ONCE, "answer_once") if s.dispatcher]
    elif scenario in ("newconn-http", "newconn-http-wrk"):
        specs = [
            *handoff_trio(cfg, HTTP, "http_hello"),
            Spec("forking", "ForkingTCPServer", py_peer("forking", HTTP)),
            Spec("gunicorn", "gunicorn sync", gunicorn_argv(cfg)),
            Spec("node", "Node.js cluster", node_argv(cfg, "http"), dispatcher=True),
        ]
        specs = workers_accept(specs)
    elif scenario == "keepalive":
        specs = [
            Spec("sockpool", "sockpool (http_hello)", sockpool_argv(cfg, HTTP)),
            Spec("sockpool-async", "sockpool (http_hello_async)", sockpool_argv(cfg, HTTP_ASYNC)),
            Spec("prefork", "shared-accept pool", py_peer("prefork", "--workers", w, HTTP)),
            Spec(
                "prefork-async",
                "shared-accept pool, async",
                py_peer("prefork", "--workers", w, HTTP_ASYNC),
            ),
            Spec("gunicorn", "gunicorn sync (closes each)", gunicorn_argv(cfg)),
            Spec("node", "Node.js cluster", node_argv(cfg, "http")),
        ]
    elif scenario == "mixed":
        specs = [
            Spec("sockpool", "sockpool (sync)", sockpool_argv(cfg, MIXED), dispatcher=True),
            Spec("sockpool-async", "sockpool (async)", sockpool_argv(cfg, MIXED_ASYNC)),
            Spec("prefork", "shared-accept pool", py_peer("prefork", "--workers", w, MIXED)),
            Spec(
                "prefork-async",
                "shared-accept pool, async",
                py_peer("prefork", "--workers", w, MIXED_ASYNC),
            ),
            Spec("node", "Node.js cluster", node_argv(cfg, "mixed")),
        ]
        if sockpool_has(FLAG_QUEUE_AHEAD):  # where a queued connection could wait out a slow one
            specs[1:1] = queue_ahead_specs(specs[0])
        specs = workers_accept(specs)
    elif scenario in ("mixed-cpu", "mixed-cpu-paced"):
        specs = [
            Spec(
                "sockpool-async",
                "sockpool (async)",
                sockpool_argv(cfg, MIXED_CPU_ASYNC),
                dispatcher=True,
            ),
            Spec(
                "prefork-async",
                "shared-accept pool, async",
                py_peer("prefork", "--workers", w, MIXED_CPU_ASYNC),
            ),
        ]
        if sockpool_has(FLAG_PULL):  # the setting for handlers that burn CPU (pull.py)
            argv = sockpool_argv(cfg, MIXED_CPU_ASYNC, flags=(FLAG_PULL,))
            specs.insert(1, Spec("sockpool-pull", "sockpool (async), pull", argv, dispatcher=True))
    elif scenario in ISSUE12:
        specs = issue12_servers(scenario, cfg)
    elif scenario in WEB:
        specs = web_servers(scenario, cfg)
    else:
        raise ValueError(f"unknown scenario {scenario}")
    if cfg.servers:
        specs = [s for s in specs if s.server in cfg.servers]
    return specs


# Issue 12's scenarios: idle, slow and keep-alive connections (ready-work dispatch).
ISSUE12 = (
    "idle-keepalive",
    "idle-async",
    "slowloris",
    "slow-upload",
    "flask-upload",
    "flask-download",
    "keepalive-64",
    "keepalive-few",
    "parked-memory",
    "park-after",
)

# Issue 14's own scenarios (the rest of its figures come from the ones above and below):
# echo churn at 2 workers, churn with 0.5 ms of CPU per connection (2 workers), the one
# dispatcher's ceiling (workers that answer at once), mixed load with a CPU-bound slow
# request in async workers.
ISSUE14 = ("newconn-echo-2w", "churn-cpu", "ceiling", "mixed-cpu", "mixed-cpu-paced")
# mixed-cpu below saturation: an open loop (bench.loadgen's rate) of this many connections a
# second, about 40% of what either server answers flat out on the 2-core machine the figures
# come from. A closed loop runs every server flat out, where a fast request waits for a core
# wherever it goes; the LIFO pile-up least-busy dispatch is meant to beat needs idle workers.
PACED_RATE = 800.0
PACED_IN_FLIGHT = 32  # per load process: room for a backlog, without a cap on the schedule
W14 = 2  # issue 14's "2 workers" figures
FLAG_CONFIG = "--config"
FLAG_QUEUE_AHEAD = "--queue-ahead"
FLAG_PULL = "--pull"


def queue_ahead_specs(sockpool: Spec) -> list[Spec]:
    """The same sockpool with `queue_ahead = 0` and 3 (1 is the default): with 0, no
    connection queued in a sync worker, so each one sleeps until the dispatcher sends the
    next; with 3, three queued and completions reported a few at a time (completions.py)."""
    return [
        dataclasses.replace(
            sockpool,
            server=f"sockpool-qa{depth}",
            label=sockpool.label + f", queue_ahead = {depth}",
            argv=[*sockpool.argv[:-1], FLAG_QUEUE_AHEAD, str(depth), sockpool.argv[-1]],
        )
        for depth in (0, 3)
    ]


FLAG_DISPATCHERS = "--dispatchers"
FLAG_ACCEPT = "--accept"


def workers_accept(specs: list[Spec]) -> list[Spec]:
    """`specs` with, after sockpool's row, the same sockpool with `accept = workers`: idle
    sync workers accept for themselves (direct.py), so the dispatcher relays nothing new.
    Where this sockpool has no such setting, `specs` as they are."""
    if not sockpool_has(FLAG_ACCEPT):
        return specs
    sockpool = specs[0]
    accepting = dataclasses.replace(
        sockpool,
        server="sockpool-aw",
        label=sockpool.label + ", accept = workers",
        argv=[*sockpool.argv[:-1], FLAG_ACCEPT, "workers", sockpool.argv[-1]],
    )
    return [sockpool, accepting, *specs[1:]]


SCENARIOS = (
    "newconn-echo",
    "newconn-echo-2w",
    "churn-cpu",
    "ceiling",
    "newconn-http",
    "newconn-http-wrk",
    "keepalive",
    "mixed",
    "mixed-cpu",
    "mixed-cpu-paced",
    "coldstart",
    "memory",
    *ISSUE12,
    "flask-newconn",
    "flask-keepalive",
    "starlette",
)
MODE = {
    "newconn-echo": "echo",
    "newconn-echo-2w": "echo",
    "churn-cpu": "echo",
    "ceiling": "echo",
    "mixed-cpu": "mixed",
    "mixed-cpu-paced": "mixed",
    "newconn-http": "http",
    "newconn-http-wrk": "http",
    "mixed": "mixed",
    "keepalive": "http",
}
# Printed as each run ends, besides throughput, p99, failures.
SHOW_MORE = (
    "close_rps",
    "close_p99_ms",
    "starved",
    "wrk_timeouts",
    "slow_closed",
    "slow_close_max_s",
    "rss_per_parked_kib",
    "p999_ms",
    "upload_unanswered",
    "download_unanswered",
)
# One round each: they hold thousands of connections, and measure pass or fail, not a ratio.
ONE_ROUND = {"memory", "idle-keepalive", "idle-async", "slowloris", "parked-memory", "park-after"}
ONE_ROUND |= {"slow-upload", "flask-upload", "flask-download"}
# wrk drives these: keep-alive with one connection per worker; new connections with
# `Connection: close` and as many connections as the load generator keeps in flight.
WRK = {"keepalive", "newconn-http-wrk"}


# --- starting and stopping servers ------------------------------------------------------


_next_port = 17200 + (os.getpid() % 40) * 20


def free_port() -> int:
    global _next_port
    for _ in range(2000):
        _next_port = 17200 if _next_port >= 18999 else _next_port + 1
        with socket.socket() as s:
            try:
                s.bind((HOST, _next_port))
            except OSError:
                continue
        return _next_port
    raise RuntimeError("no free port in 17200-18999")


def launch(spec: Spec, port: int, log: Path) -> Service:
    """The server as systemd would start it, on 127.0.0.1:port; use it in a with block."""
    argv = [*NODELAY, *spec.argv] if spec.nodelay else spec.argv
    with log.open("a") as f:
        f.write(f"\n== {spec.label}: {' '.join(argv)}\n")
    return Service(
        argv,
        [f"{HOST}:{port}"],
        log,
        fdnames=["bench"],
        env={
            "PYTHONPATH": pythonpath(spec.pythonpath),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        },
        start_timeout=START_TIMEOUT,
        stop_timeout=10.0,
    )


def one_request(port: int, mode: str, timeout: float = 10.0) -> bool:
    """One blocking request, answer checked; True when it was right."""
    if mode != "http":
        payload = b"F warm " + os.urandom(8).hex().encode() + b"\n"
        header = loadgen.PROXY_V2 if mode == "proxy" else b""
        return request((HOST, port), header + payload, timeout) == payload
    with connect((HOST, port), timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_to_eof(s)
    return answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\nhello\n")


def wait_answering(port: int, mode: str, timeout: float = START_TIMEOUT) -> float:
    """Seconds until the first request is answered (the first connect starts the server)."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    while True:
        try:
            if one_request(port, mode, timeout=max(0.1, deadline - time.monotonic())):
                return time.perf_counter() - t0
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer on port {port} within {timeout:.0f}s")
        time.sleep(0.01)


def wait_pool(pid: int, nprocs: int, timeout: float = 10.0) -> None:
    """Until the server's process tree has nprocs processes (all workers forked)."""
    deadline = time.monotonic() + timeout
    while len(procfs.descendants(pid)) < nprocs and time.monotonic() < deadline:
        time.sleep(0.02)


# --- measurements -----------------------------------------------------------------------


@dataclass
class CpuMark:
    """A server's CPU time so far: its main process (ticks and schedstat) and each process
    below it (the workers; with several dispatchers, those too)."""

    main_s: float
    main_ns: int
    below_s: dict[int, float]


def cpu_mark(pid: int) -> CpuMark:
    below: dict[int, float] = {}
    for p in procfs.descendants(pid)[1:]:
        with contextlib.suppress(OSError, ValueError, IndexError):  # it just exited
            below[p] = procfs.cpu_seconds(p)
    return CpuMark(procfs.cpu_seconds(pid), procfs.run_ns(pid), below)


def cpu_per_conn(before: CpuMark, after: CpuMark, conns: int) -> dict[str, float]:
    """CPU µs per connection between two marks: the main process's (the dispatcher's, when
    it only dispatches), the processes below it (the workers'), and both together. A
    process that exited in between takes its time with it (none do in these runs)."""
    if conns <= 0:
        return {}
    main = after.main_s - before.main_s
    below = sum(cpu - before.below_s.get(p, 0.0) for p, cpu in after.below_s.items())
    return {
        "main_cpu_us_per_conn": main / conns * 1e6,
        "main_run_us_per_conn": (after.main_ns - before.main_ns) / conns / 1e3,
        "workers_cpu_us_per_conn": below / conns * 1e6,
        "pool_cpu_us_per_conn": (main + below) / conns * 1e6,
    }


def pool_pss(pid: int) -> tuple[int, int]:
    """(total PSS in KiB of the process tree, number of processes)."""
    pids = procfs.descendants(pid)
    return sum(procfs.pss_kib(p) for p in pids), len(pids)


def run_wrk(
    port: int,
    cfg: Config,
    seconds: float,
    close: bool = False,
    conns: int | None = None,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """wrk's figures; conns defaults to the load generator's in flight (close) or one
    keep-alive connection per worker."""
    duration = max(1, round(seconds))
    if conns is None:
        conns = cfg.procs * cfg.concurrency if close else cfg.workers
    argv = [
        "wrk",
        "-t",
        str(min(cfg.procs, conns)),
        "-c",
        str(conns),
        "-d",
        f"{duration}s",
        "--timeout",
        f"{timeout:g}s",
        "-s",
        str(BENCH / "report.lua"),
        *(["-H", "Connection: close"] if close else []),
        f"http://{HOST}:{port}/",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30).stdout
    m = re.search(r"WRK_JSON (\{.*\})", out)
    if not m:
        raise RuntimeError(f"wrk gave no summary: {out[-500:]}")
    w = json.loads(m.group(1))
    errors = {k: w[k] for k in ("connect", "read", "write", "status", "timeout") if w[k]}
    secs = w["duration_us"] / 1e6
    return {
        "ok": w["requests"] - errors.get("status", 0),
        "failures": sum(errors.values()),
        "failure_kinds": errors,
        "rps": w["requests"] / secs if secs else 0.0,
        "p50_ms": w["p50_us"] / 1e3,
        "p99_ms": w["p99_us"] / 1e3,
        "p999_ms": w["p999_us"] / 1e3,
        "max_ms": w["max_us"] / 1e3,
    }


KEEPALIVE_ONLY = ("keepalive", "starved", "min_answers", "max_answers", "server_closes")


def load_record(res: loadgen.Result) -> dict[str, Any]:
    rec = dataclasses.asdict(res) | {"rps": res.conns_per_s}
    if not res.keepalive:
        for key in KEEPALIVE_ONLY:
            del rec[key]
    return rec


def run_load(scenario: str, spec: Spec, cfg: Config, log: Path) -> dict[str, Any]:
    port = free_port()
    with launch(spec, port, log) as srv:
        mode = spec.record.get("mode", MODE[scenario])
        rec: dict[str, Any] = {"startup_s": wait_answering(port, mode)}
        wait_pool(srv.pid, 1 if spec.server == "forking" else pool_size(spec, cfg) + 1)
        close = scenario == "newconn-http-wrk"
        if cfg.warmup > 0 and scenario not in WRK:
            loadgen.run(port, mode, cfg.procs, cfg.concurrency, cfg.warmup, timeout=5)
        elif cfg.warmup > 0:
            run_wrk(port, cfg, cfg.warmup, close)
        time.sleep(0.2)
        rec["pss_kib"], rec["nprocs"] = pool_pss(srv.pid)
        before = cpu_mark(srv.pid)
        if scenario in WRK:
            rec.update(run_wrk(port, cfg, cfg.duration, close))
        elif scenario == "mixed-cpu-paced":
            res = loadgen.run(
                port, mode, cfg.procs, PACED_IN_FLIGHT, cfg.duration, timeout=5, rate=PACED_RATE
            )
            rec.update(load_record(res))
        else:
            res = loadgen.run(port, mode, cfg.procs, cfg.concurrency, cfg.duration, timeout=5)
            rec.update(load_record(res))
        rec |= cpu_per_conn(before, cpu_mark(srv.pid), rec["ok"])
        if spec.dispatcher and rec.get("main_cpu_us_per_conn"):
            # What one such dispatcher could pass at most on a core of its own.
            rec["ceiling_conns_per_s"] = 1e6 / rec["main_cpu_us_per_conn"]
        rec["alive"] = srv.alive()
        return rec


def run_coldstart(spec: Spec, cfg: Config, log: Path) -> dict[str, Any]:
    mode = "http" if spec.server == "gunicorn" else "echo"
    port = free_port()
    with launch(spec, port, log) as srv:
        t = wait_answering(port, mode)
        time.sleep(0.3)
        pss, n = pool_pss(srv.pid)
        return {"cold_ms": t * 1e3, "ok": 1, "failures": 0, "pss_kib": pss, "nprocs": n}


def run_memory(spec: Spec, cfg: Config, log: Path) -> dict[str, Any]:
    mode = "http" if spec.server == "gunicorn" else "echo"
    port = free_port()
    with launch(spec, port, log) as srv:
        wait_answering(port, mode)
        wait_pool(srv.pid, cfg.workers + 1)
        for _ in range(4 * cfg.workers):
            one_request(port, mode)
        time.sleep(1.0)  # at rest
        pids = procfs.descendants(srv.pid)
        per = [procfs.pss_kib(p) for p in pids]
        return {
            "ok": 1,
            "failures": 0,
            "pss_kib": sum(per),
            "nprocs": len(pids),
            "main_pss_kib": per[0],
            "workers": cfg.workers,
            "pss_per_worker_kib": sum(per) / cfg.workers,
        }


# --- issue 12: idle, slow and keep-alive connections (ready-work dispatch) ---------------

# (ISSUE12, the scenarios themselves, stands beside SCENARIOS above.)
W2 = 2  # workers: the default pool of a 2-core machine, where issue 12's stalls were seen
IDLE_CONNS = 1_000  # idle-keepalive: keep-alive connections idle after one request each
IDLE_ASYNC_CONNS = 10_000  # idle-async: connections that send nothing
FIRST_BYTE_TIMEOUT = 30.0  # idle-async: keeps them open for the whole measurement
SLOW_CONNS = 500
SLOW_INTERVAL = 2.0  # seconds between a slow client's bytes
REQUEST_TIMEOUT = 10.0  # slowloris runs --request-timeout 10 (default 30): a short run
UPLOADS = 4 * W2  # slow-upload: clients sending a 64 KiB body (loadgen.UPLOAD) slowly
UPLOAD_INTERVAL = 0.25  # seconds between an upload's 4 KiB slices: 4 s for each
DOWNLOADS = 4 * W2  # flask-download: clients reading an 8 MiB file (loadgen.DOWNLOAD_SIZE)
# Seconds between a download's 64 KiB reads: 13 s for each, of which a worker that sends
# it itself is held for the first 10 or so (until its rest fits the kernel's buffers), and
# the normal clients' measurement (NORMAL_SECONDS, from ~1 s in) lies within those.
DOWNLOAD_INTERVAL = 0.1


@dataclass(frozen=True)
class SlowCrowd:
    """A slow crowd's scenario: the Crowd's kind, members and interval; then, once the
    normal clients are measured, how long to wait for the server to end every member, or
    until nothing has moved for `stall` s (a server that answers no more)."""

    kind: str
    conns: int
    interval: float
    cap: float
    stall: float


SLOW_CROWDS = {
    "slow-upload": SlowCrowd("upload", UPLOADS, UPLOAD_INTERVAL, 30.0, 10.0),
    "flask-upload": SlowCrowd("upload", UPLOADS, UPLOAD_INTERVAL, 30.0, 10.0),
    # gunicorn's sync workers send 8 downloads 2 at a time, each held ~10 s: the last two
    # end ~46 s after the first began, and nothing moves during a download's 13 s.
    "flask-download": SlowCrowd("download", DOWNLOADS, DOWNLOAD_INTERVAL, 60.0, 20.0),
}
PARKED_CONNS = 10_000
MANY = 64  # keepalive-64's connections
FEW = W2  # keepalive-few's: no more connections than workers
PARK_AFTER = (0.0, 0.0005, 0.002, 0.01)  # seconds a worker waits before it parks
NORMAL_SECONDS = 3.0  # normal clients measured while the crowd is held
NORMAL_TIMEOUT = 5.0  # a normal request unanswered this long has failed
KA_SECONDS = 3.0
KA_TIMEOUT = 2.0  # wrk's and our keep-alive client's
BEFORE_REV = "fe504ec"  # main just before issue 12: keepalive-few's "before"
# Issue 12's settings as flags: passed only to a sockpool whose --help lists them.
FLAG_PARK_AFTER = "--park-after"
FLAG_REQUEST_TIMEOUT = "--request-timeout"
FLAG_FIRST_BYTE_TIMEOUT = "--first-byte-timeout"


def issue12_servers(scenario: str, cfg: Config) -> list[Spec]:
    def sockpool(handler: str, label: str, flags: tuple[str, ...] = (), **record: Any) -> Spec:
        argv = sockpool_argv(cfg, handler, W2, flags)
        return Spec("sockpool", label, argv, dispatcher=True, record=record)

    if scenario == "park-after":
        if not sockpool_has(FLAG_PARK_AFTER):
            return []
        return [
            dataclasses.replace(
                sockpool(HTTP, f"park_after = {v:g} s", (FLAG_PARK_AFTER, f"{v:g}")),
                server=f"park-after={v:g}",
                record={"park_after_s": v},
            )
            for v in PARK_AFTER
        ]
    if scenario == "idle-async":
        flag = FLAG_FIRST_BYTE_TIMEOUT
        flags = (flag, f"{FIRST_BYTE_TIMEOUT:g}") if sockpool_has(flag) else ()
        fbt = FIRST_BYTE_TIMEOUT if flags else None
        return [sockpool(ECHO_ASYNC, "sockpool (echo_async)", flags, first_byte_timeout_s=fbt)]
    if scenario in ("flask-upload", "flask-download"):  # Flask's, at issue 12's workers
        return web_servers(scenario, dataclasses.replace(cfg, workers=W2))
    if scenario == "slowloris":
        flag = FLAG_REQUEST_TIMEOUT
        flags = (flag, f"{REQUEST_TIMEOUT:g}") if sockpool_has(flag) else ()
        rt = REQUEST_TIMEOUT if flags else None
        return [sockpool(HTTP, "sockpool (http_hello)", flags, request_timeout_s=rt)]
    specs = [sockpool(HTTP, "sockpool (http_hello)")]
    if scenario == "keepalive-few" and (tree := before_tree(cfg)) is not None:
        argv = [str(PY), "-m", "sockpool", *sockpool_argv(cfg, HTTP, W2)[1:]]
        label = f"sockpool before issue 12 ({BEFORE_REV}, same run)"
        specs.append(Spec("sockpool-before", label, argv, pythonpath=str(tree)))
    if scenario != "parked-memory":
        pool = py_peer("prefork", "--workers", str(W2), HTTP)
        specs.append(Spec("prefork", "shared-accept pool", pool))
    return specs


def before_tree(cfg: Config) -> Path | None:
    """sockpool's package tree as it was before issue 12 (BEFORE_REV), from `git archive`
    into the run's raw/ once: keepalive-few runs it beside today's, in the same rounds, so
    the "at least 0.9x before" comparison does not hang on machine load. None without git."""
    dest = cfg.out / "raw" / f"sockpool-{BEFORE_REV}"
    if not (dest / "service" / "sockpool" / "__main__.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        try:
            tar = subprocess.run(
                ["git", "-C", str(REPO), "archive", BEFORE_REV, "service/sockpool"],
                capture_output=True,
                check=True,
                timeout=60,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    return dest / "service"


def unsupported(scenario: str) -> str | None:
    """Why this sockpool cannot run the scenario at all (None: it can)."""
    if scenario == "park-after" and not sockpool_has(FLAG_PARK_AFTER):
        return f"this sockpool has no {FLAG_PARK_AFTER} (issue 12's parking is not in it)"
    return None


def settle(srv: Service, port: int, mode: str) -> dict[str, Any]:
    """Answering, every worker forked and warm: what a crowd then changes is the crowd's."""
    rec: dict[str, Any] = {"startup_s": wait_answering(port, mode)}
    wait_pool(srv.pid, W2 + 1)
    loadgen.run(port, mode, procs=1, concurrency=2, duration=0.5, timeout=NORMAL_TIMEOUT)
    return rec


def normal_load(port: int, mode: str) -> dict[str, Any]:
    """New clients, a new connection per request, 4 in flight: what a user sees."""
    res = loadgen.run(
        port, mode, procs=1, concurrency=4, duration=NORMAL_SECONDS, timeout=NORMAL_TIMEOUT
    )
    return load_record(res) | {"normal_timeout_s": NORMAL_TIMEOUT}


def crowd_record(prefix: str, st: loadgen.CrowdState) -> dict[str, Any]:
    fields = ("conns", "connected", "pending", "failed", "answered", "closed")
    return {f"{prefix}_{name}": getattr(st, name) for name in fields}


def run_idle(spec: Spec, log: Path, mode: str, conns: int, kind: str) -> dict[str, Any]:
    """`conns` idle connections (kind "request": each after one keep-alive request), then
    normal clients while they stay open."""
    port = free_port()
    with launch(spec, port, log) as srv:
        rec = settle(srv, port, mode)
        with loadgen.Crowd(port, conns, kind) as crowd:
            if kind == "request":
                held = crowd.wait(lambda s: s.answered >= s.conns, cap=40, stall=3)
            else:
                held = crowd.wait(lambda s: s.connected >= s.conns, cap=40, stall=3)
            time.sleep(0.5)  # the server takes the last ones in
            rec["main_fds"] = srv.fd_count()  # the dispatcher holds them, or not
            rec.update(normal_load(port, mode))
            end = crowd.stop()
        return rec | crowd_record("idle", held) | {"idle_closed": end.closed, "alive": srv.alive()}


def run_slowloris(spec: Spec, log: Path) -> dict[str, Any]:
    """SLOW_CONNS clients trickling a request head, normal clients meanwhile; then how long
    the server took to close each slow one (from its connect)."""
    port = free_port()
    timeout = spec.record.get("request_timeout_s")
    with launch(spec, port, log) as srv:
        rec = settle(srv, port, "http")
        with loadgen.Crowd(port, SLOW_CONNS, "trickle", SLOW_INTERVAL) as crowd:
            t0 = time.monotonic()
            crowd.wait(lambda s: s.connected >= s.conns, cap=10, stall=3)
            time.sleep(max(0.0, t0 + SLOW_INTERVAL + 0.5 - time.monotonic()))  # 2 bytes each
            rec.update(normal_load(port, "http"))
            # Every slow client should be closed at the request timeout after its connect.
            horizon = t0 + (timeout or REQUEST_TIMEOUT) + 5
            crowd.wait(lambda s: s.closed >= s.connected, cap=max(0.0, horizon - time.monotonic()))
            end = crowd.stop()
        closes = sorted(end.closed_after_s)
        last = closes[-1] if closes else None
        return (
            rec
            | crowd_record("slow", end)
            | {
                "slow_held": end.held,
                # How much later than its request timeout the last slow client was closed.
                "slow_close_over_s": last - timeout if last is not None and timeout else None,
                "slow_observed_s": round(time.monotonic() - t0, 1),
                "slow_close_min_s": closes[0] if closes else None,
                "slow_close_p50_s": loadgen.percentile(closes, 50) if closes else None,
                "slow_close_max_s": last,
                "alive": srv.alive(),
            }
        )


def run_slow_crowd(scenario: str, spec: Spec, log: Path) -> dict[str, Any]:
    """SLOW_CROWDS[scenario]: clients each sending a POST body slowly (upload), or reading
    a file's answer slowly (download), normal clients meanwhile; then how many were
    answered. A worker that reads a body as it comes is held for each upload's 4 s; one
    that is handed the body once it has all come is not. A worker that sends a file itself
    is held until its rest fits the kernel's buffers; one that hands the rest to the
    dispatcher is not."""
    slow = SLOW_CROWDS[scenario]
    kind = slow.kind
    port = free_port()
    with launch(spec, port, log) as srv:
        rec = settle(srv, port, "http")
        with loadgen.Crowd(port, slow.conns, kind, slow.interval) as crowd:
            crowd.wait(lambda s: s.connected >= s.conns, cap=10, stall=3)
            if kind == "download":  # each has begun receiving, where the server took each
                crowd.wait(lambda s: s.receiving >= s.conns, cap=5, stall=1)
            else:
                time.sleep(2 * slow.interval)  # each has begun its body
            rec.update(normal_load(port, "http"))
            # Each ends with the server's close (Connection: close), answered or not.
            crowd.wait(lambda s: s.closed + s.failed >= s.conns, cap=slow.cap, stall=slow.stall)
            end = crowd.stop()
        return (
            rec
            | crowd_record(kind, end)
            | {
                f"{kind}_unanswered": end.conns - end.answered,
                f"{kind}_wrong": end.wrong,
                "alive": srv.alive(),
            }
        )


def keepalive_figures(port: int, cfg: Config, conns: int, seconds: float) -> dict[str, Any]:
    """wrk's req/s and timeouts over `conns` keep-alive connections; with more connections
    than workers also our own keep-alive client's count of connections that got no answer
    at all (wrk cannot say per connection)."""
    rec: dict[str, Any] = {"conns": conns}
    failures = 0
    if conns > W2:
        own = loadgen.run(
            port,
            "http",
            procs=2,
            concurrency=conns // 2,
            duration=seconds,
            timeout=KA_TIMEOUT,
            keepalive=True,
        )
        failures += own.failures
        rec |= {
            "starved": own.starved,
            "min_answers": own.min_answers,
            "max_answers": own.max_answers,
            "own_rps": own.conns_per_s,
            "own_p99_ms": own.p99_ms,
            "own_failures": own.failures,
            "server_closes": own.server_closes,
        }
    w = run_wrk(port, cfg, seconds, conns=conns, timeout=KA_TIMEOUT)
    rec |= w | {"req_per_s": w["rps"], "wrk_timeouts": w["failure_kinds"].get("timeout", 0)}
    rec["failures"] = failures + w["failures"]
    return rec


def run_keepalive(spec: Spec, cfg: Config, log: Path, conns: int) -> dict[str, Any]:
    port = free_port()
    with launch(spec, port, log) as srv:
        rec = settle(srv, port, "http")
        run_wrk(port, cfg, 1, conns=FEW)  # warm-up
        seconds = cfg.duration if conns == FEW else KA_SECONDS
        rec |= keepalive_figures(port, cfg, conns, seconds)
        return rec | {"alive": srv.alive()}


def run_park_after(spec: Spec, cfg: Config, log: Path) -> dict[str, Any]:
    """keepalive-few's and keepalive-64's figures at one park_after."""
    port = free_port()
    with launch(spec, port, log) as srv:
        rec = settle(srv, port, "http")
        few = keepalive_figures(port, cfg, FEW, KA_SECONDS)
        many = keepalive_figures(port, cfg, MANY, KA_SECONDS)
        return (
            rec
            | many
            | {
                "few_rps": few["rps"],
                "few_p99_ms": few["p99_ms"],
                "failures": few["failures"] + many["failures"],
                "alive": srv.alive(),
            }
        )


def run_parked_memory(spec: Spec, log: Path) -> dict[str, Any]:
    """The dispatcher's RSS before and with PARKED_CONNS keep-alive connections idle after
    one request each (parked, once the dispatcher parks them)."""
    port = free_port()
    with launch(spec, port, log) as srv:
        rec = settle(srv, port, "http")
        with loadgen.Crowd(port, 100, "request") as warm:  # parking's first use, not counted
            warm.wait(lambda s: s.answered >= s.conns, cap=10, stall=2)
        time.sleep(0.5)
        rss0, fds0 = procfs.rss_kib(srv.pid), srv.fd_count()
        with loadgen.Crowd(port, PARKED_CONNS, "request") as crowd:
            crowd.wait(lambda s: s.answered >= s.conns, cap=60, stall=5)
            time.sleep(1.0)  # the last workers park theirs
            rss1, fds1 = procfs.rss_kib(srv.pid), srv.fd_count()
            held = crowd.status()
            crowd.stop()
        parked = fds1 - fds0  # descriptors the dispatcher holds for them
        return (
            rec
            | crowd_record("parked", held)
            | {
                "ok": held.answered,
                "failures": held.conns - held.answered,
                "parked": parked,
                "rss_before_kib": rss0,
                "rss_after_kib": rss1,
                "rss_per_parked_kib": (rss1 - rss0) / parked if parked > 0 else None,
                "alive": srv.alive(),
            }
        )


def run_one(scenario: str, spec: Spec, cfg: Config, log: Path) -> dict[str, Any]:
    if scenario == "coldstart":
        return run_coldstart(spec, cfg, log)
    if scenario == "memory":
        return run_memory(spec, cfg, log)
    if scenario == "idle-keepalive":
        return run_idle(spec, log, "http", IDLE_CONNS, "request")
    if scenario == "idle-async":
        return run_idle(spec, log, "echo", IDLE_ASYNC_CONNS, "idle")
    if scenario == "slowloris":
        return run_slowloris(spec, log)
    if scenario in SLOW_CROWDS:
        return run_slow_crowd(scenario, spec, log)
    if scenario in ("keepalive-64", "keepalive-few"):
        return run_keepalive(spec, cfg, log, MANY if scenario == "keepalive-64" else FEW)
    if scenario == "park-after":
        return run_park_after(spec, cfg, log)
    if scenario == "parked-memory":
        return run_parked_memory(spec, log)
    if scenario in WEB:
        return run_web(scenario, spec, cfg, log)
    return run_load(scenario, spec, cfg, log)


# --- issue 13: web applications under sockpool, gunicorn and uvicorn -------------------

WEB = ("flask-newconn", "flask-keepalive", "starlette")
FLASK_APP = "bench.apps.flask_hello:app"
STARLETTE_APP = "bench.apps.starlette_hello:app"
FLAG_WSGI = "--wsgi"
FLAG_ASGI = "--asgi"
# What each scenario measures on one server: "close", a new connection per request (wrk
# with `Connection: close`); "loadgen", the same with bench.loadgen's http mode, which
# checks every answer; "keepalive", MANY keep-alive connections (our client counts starved
# ones, then wrk).
WEB_PHASES = {
    "flask-newconn": ("close", "loadgen"),
    "flask-keepalive": ("keepalive",),
    "starlette": ("close", "keepalive"),
}
WEB_SECONDS = 2.0  # per measurement: the three scenarios stay under 3 minutes at 3 rounds
GTHREAD_THREADS = 4  # gunicorn gthread: threads per worker (gunicorn's docs suggest 2-4 x cores)


def web_servers(scenario: str, cfg: Config) -> list[Spec]:
    """The same app under each server, each with cfg.workers workers; sockpool only when it
    has the flag (until issue 13 lands it has none)."""
    w = str(cfg.workers)
    if scenario == "starlette":
        flag, app = FLAG_ASGI, STARLETTE_APP
        # uvicorn takes the activated socket as a bare fd; httptools and uvloop, its fast
        # parts, come with uvicorn[standard]. No access log: sockpool's is off by default.
        uvicorn = [str(BIN / "uvicorn"), "--fd", "3", "--workers", w, "--no-access-log"]
        uvicorn += ["--log-level", "warning", app]
        specs = [Spec("uvicorn", "uvicorn (httptools, uvloop)", uvicorn)]
    else:
        flag, app = FLAG_WSGI, FLASK_APP
        gthread = gunicorn_argv(cfg, app, threads=GTHREAD_THREADS)
        specs = [
            Spec("gunicorn", "gunicorn sync", gunicorn_argv(cfg, app)),
            Spec(
                "gunicorn-gthread",
                f"gunicorn gthread ({GTHREAD_THREADS} threads)",
                gthread,
                record={"threads": GTHREAD_THREADS},
            ),
        ]
    if sockpool_has(flag):
        argv = sockpool_argv(cfg, None, flags=(flag, app))
        specs.insert(0, Spec("sockpool", f"sockpool {flag}", argv, dispatcher=True))
    # Every socket as the examples' units make it, NoDelay=yes: uvicorn never sets
    # TCP_NODELAY on an --fd socket (it takes it for AF_UNIX), and without it each of its
    # keep-alive answers waits for the client's delayed ACK (~40 ms).
    return [dataclasses.replace(spec, nodelay=True) for spec in specs]


def sockpool_missing(scenario: str, cfg: Config) -> str | None:
    """Why a scenario runs without (some of) sockpool's rows (None: it has them all)."""
    wants_d2 = not cfg.servers or "sockpool-d2" in cfg.servers
    if scenario == "newconn-echo" and wants_d2 and not sockpool_has(FLAG_DISPATCHERS):
        return f"this sockpool has no {FLAG_DISPATCHERS} (dispatchers = 2 not measured)"
    if scenario not in WEB or (cfg.servers and "sockpool" not in cfg.servers):
        return None
    flag = FLAG_ASGI if scenario == "starlette" else FLAG_WSGI
    if sockpool_has(flag):
        return None
    return f"this sockpool has no {flag} (issue 13's web serving is not in it)"


def prefixed(prefix: str, rec: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in rec.items()}


def run_web(scenario: str, spec: Spec, cfg: Config, log: Path) -> dict[str, Any]:
    """WEB_PHASES[scenario] on one server; keys close_* (wrk), lg_* (bench.loadgen) and
    keepalive_figures' own; failures: all of them."""
    port = free_port()
    seconds = min(cfg.duration, WEB_SECONDS)
    phases = WEB_PHASES[scenario]
    with launch(spec, port, log) as srv:
        rec: dict[str, Any] = {"startup_s": wait_answering(port, "http")}
        wait_pool(srv.pid, cfg.workers + 1)
        failures = 0
        if "close" in phases:
            if cfg.warmup > 0:
                run_wrk(port, cfg, cfg.warmup, close=True)
            before = cpu_mark(srv.pid)
            w = run_wrk(port, cfg, seconds, close=True)
            w |= cpu_per_conn(before, cpu_mark(srv.pid), w["ok"])
            rec |= prefixed("close", w)
            rec["close_timeouts"] = w["failure_kinds"].get("timeout", 0)
            failures += w["failures"]
        if "loadgen" in phases:
            before = cpu_mark(srv.pid)
            lg = loadgen.run(port, "http", cfg.procs, cfg.concurrency, seconds, timeout=5)
            cpu = cpu_per_conn(before, cpu_mark(srv.pid), lg.ok)
            rec |= prefixed("lg", load_record(lg) | cpu)
            failures += lg.failures
        if "keepalive" in phases:
            if cfg.warmup > 0:
                run_wrk(port, cfg, cfg.warmup, conns=MANY, timeout=KA_TIMEOUT)
            ka = keepalive_figures(port, cfg, MANY, seconds)
            # wrk's own errors, apart from our keep-alive client's failures
            ka["ka_errors"] = ka["failures"] - ka.get("own_failures", 0)
            rec |= ka
            failures += ka["failures"]
        rec["ok"] = rec.get("ok", 0) + rec.get("close_ok", 0)
        rec["failures"] = failures
        rec["alive"] = srv.alive()
        return rec


# --- systemd Accept=yes, in a real-systemd container -------------------------------------


def run_accept_yes(cfg: Config, log: Path, rounds: int) -> list[dict[str, Any]]:
    """Accept=yes, a python3 instance per connection, driven from the host."""
    return acceptyes.run(cfg.procs, cfg.concurrency, cfg.duration, rounds, log)


# --- the whole run ----------------------------------------------------------------------


def cmd_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else "unavailable"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    osname = "Linux"
    with contextlib.suppress(OSError):
        m = re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text())
        osname = m.group(1) if m else osname
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_mib": mem,
        "os": osname,
        "kernel": platform.release(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def dist_version(name: str) -> str:
    """An installed distribution's version (the servers run in this interpreter's venv)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unavailable"


def versions() -> dict[str, str]:
    sockpool = cmd_version(
        [str(PY), "-c", "import importlib.metadata as m; print(m.version('sockpool'))"]
    )
    rev = cmd_version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "service"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    python = cmd_version([str(PY), "--version"]).removeprefix("Python ")
    gunicorn = cmd_version([str(BIN / "gunicorn"), "--version"])
    m = re.search(r"\d+(\.\d+)+", gunicorn)
    return {
        "sockpool": f"{sockpool} ({rev}{'+changes' if dirty else ''})",
        "python": python,
        "gunicorn": m.group(0) if m else gunicorn,
        **{name: dist_version(name) for name in ("uvicorn", "flask", "starlette")},
        "node": cmd_version([NODE, "--version"]),
        "wrk": cmd_version(["wrk", "--version"]).split(" Copyright")[0].removeprefix("wrk "),
        "systemd": cmd_version(["systemctl", "--version"]).removeprefix("systemd "),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="sockpool's benchmark harness")
    ap.add_argument("--smoke", action="store_true", help="seconds: 2 scenarios, 2 servers")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--duration", type=float, default=Config.duration, help="seconds of load per run"
    )
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes")
    ap.add_argument("--concurrency", type=int, default=4, help="connections in flight per process")
    ap.add_argument(
        "--scenarios",
        "--scenario",
        default=",".join(SCENARIOS) + ",accept-yes",
        help="comma-separated, from: " + ", ".join(SCENARIOS) + ", accept-yes",
    )
    ap.add_argument("--servers", default="", help="only these (comma-separated)")
    ap.add_argument("--no-container", action="store_true", help="skip systemd Accept=yes")
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args(argv)
    cfg = Config(
        workers=args.workers,
        rounds=args.rounds,
        duration=args.duration,
        procs=args.procs,
        concurrency=args.concurrency,
        scenarios=[s for s in args.scenarios.split(",") if s],
        servers=[s for s in args.servers.split(",") if s],
        container=not args.no_container,
        out=args.out,
    )
    if args.smoke:
        cfg.rounds, cfg.duration, cfg.warmup, cfg.cold_rounds = 1, 1.0, 0.2, 1
        cfg.scenarios = ["newconn-echo", "newconn-http"]
        cfg.servers = cfg.servers or ["sockpool", "prefork"]
        cfg.container = False
    unknown = set(cfg.scenarios) - {*SCENARIOS, "accept-yes"}
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    raw = cfg.out / "raw"
    raw.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC)
    log = raw / f"servers-{stamp:%Y%m%dT%H%M%SZ}.log"
    meta: dict[str, Any] = {
        "date": stamp.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()
        },
        "smoke": args.smoke,
    }
    records: list[dict[str, Any]] = []
    skipped: list[str] = meta.setdefault("skipped", [])
    loadgen.raise_nofile()  # the servers inherit it; a Crowd holds thousands of sockets
    t_start = time.monotonic()

    def note(rec: dict[str, Any]) -> None:
        records.append(rec)
        keys = ("rps", "p99_ms", "cold_ms", "pss_kib", "failures", *SHOW_MORE)
        show = {k: rec.get(k) for k in keys}
        shown = ", ".join(
            f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in show.items()
            if v is not None
        )
        print(
            f"  [{time.monotonic() - t_start:6.0f}s] {rec['scenario']:<14} "
            f"{rec['server']:<15} r{rec['round']}: {shown}",
            flush=True,
        )

    for scenario in cfg.scenarios:
        if scenario == "accept-yes":
            continue
        if why := unsupported(scenario):
            skipped.append(f"{scenario}: {why}")
            print(f"{scenario}: skipped, {why}", flush=True)
            continue
        specs = servers_for(scenario, cfg)
        if why := sockpool_missing(scenario, cfg):
            skipped.append(f"{scenario}, sockpool: {why}")
            print(f"{scenario}: sockpool row skipped, {why}", flush=True)
        rounds = cfg.cold_rounds if scenario == "coldstart" else cfg.rounds
        if scenario in ONE_ROUND:
            rounds = 1
        if not specs:  # --servers named none of this scenario's
            print(f"{scenario}: skipped, --servers names none of its servers", flush=True)
            continue
        print(f"{scenario}: {len(specs)} servers x {rounds} rounds", flush=True)
        for r in range(rounds):
            order = specs[r % len(specs) :] + specs[: r % len(specs)]
            for spec in order:
                base = {
                    "scenario": scenario,
                    "server": spec.server,
                    "label": spec.label,
                    "round": r,
                }
                try:
                    rec = (
                        base
                        | spec.record
                        | run_one(scenario, spec, cfg, log)
                        | {"dispatcher": spec.dispatcher}
                    )
                except Exception as exc:  # one server failing must not lose the others
                    rec = base | {"error": f"{type(exc).__name__}: {exc}", "ok": 0, "failures": 1}
                note(rec)
    want_accept_yes = "accept-yes" in cfg.scenarios and (
        not cfg.servers or "accept-yes" in cfg.servers
    )
    if want_accept_yes and not cfg.container:
        skipped.append("systemd Accept=yes: --no-container")
    elif want_accept_yes and (reason := acceptyes.unavailable_reason()):
        skipped.append(f"systemd Accept=yes: no container here ({reason})")
        print(f"accept-yes: skipped, {reason}", flush=True)
    elif want_accept_yes:
        print(f"accept-yes: systemd Accept=yes in a container x {cfg.rounds} rounds", flush=True)
        try:
            for rec in run_accept_yes(cfg, log, cfg.rounds):
                note(rec)
        except Exception as exc:
            note(
                {
                    "scenario": "newconn-echo",
                    "server": "accept-yes",
                    "label": "systemd Accept=yes",
                    "round": 0,
                    "ok": 0,
                    "failures": 1,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
    meta["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    result = {"meta": meta, "records": records}
    data = json.dumps(result, indent=1)
    (raw / f"run-{stamp:%Y%m%dT%H%M%SZ}.json").write_text(data)
    (cfg.out / "results.json").write_text(data)
    print(f"done in {meta['elapsed_s']:.0f}s: {cfg.out / 'results.json'}", flush=True)
    if not args.no_report:
        from bench import report

        report.write(result, cfg.out)
    errors = [rec for rec in records if rec.get("error")]
    for rec in errors:
        print(f"ERROR {rec['scenario']} {rec['server']}: {rec['error']}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
