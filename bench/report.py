"""Turn a run's results.json into RESULTS.md (medians, ratios, targets) and bench.png.

python -m bench.report [bench/results/results.json] [--readme README-SECTION.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import operator
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

TITLES = {
    "newconn-echo": "New connection per request, echo (bench.loadgen)",
    "newconn-echo-2w": "New connection per request, echo, 2 workers (bench.loadgen)",
    "churn-cpu": "New connection per request, 0.5 ms of CPU then echo, 2 workers (bench.loadgen)",
    "ceiling": "Workers that answer at once: the dispatcher's own cost (bench.loadgen, echo)",
    "newconn-http": "New connection per request, HTTP `Connection: close` (bench.loadgen)",
    "newconn-http-wrk": "New connection per request, HTTP `Connection: close` (wrk)",
    "keepalive": "Keep-alive HTTP requests (wrk, one connection per worker)",
    "mixed": "Mixed load: one request in ten takes 50 ms (bench.loadgen, echo)",
    "mixed-cpu": "Mixed load, async workers: one request in ten burns 5 ms of CPU "
    "(bench.loadgen, echo)",
    "mixed-cpu-paced": "The same mixed load below saturation: 800 new connections a second, "
    "on a schedule (bench.loadgen --rate; latency from when each was due)",
    "coldstart": "Cold start: first connect on an idle activated socket to its answer",
    "memory": "Memory (PSS) of the whole pool at rest",
    "idle-keepalive": "Idle keep-alive connections, then new HTTP clients (2 sync workers)",
    "idle-async": "Connections that send nothing, then new echo clients (2 async workers)",
    "slowloris": "Slowloris: clients trickling a request head, plus new HTTP clients "
    "(2 sync workers)",
    "slow-upload": "Slow uploads: clients sending a 64 KiB body 4 KiB at a time, plus new "
    "HTTP clients (2 sync workers)",
    "flask-upload": "Slow uploads to Flask: the same clients, sockpool --wsgi vs gunicorn "
    "(2 workers)",
    "flask-download": "Slow downloads from Flask: clients reading an 8 MiB file 64 KiB at a "
    "time, sockpool --wsgi vs gunicorn (2 workers)",
    "keepalive-64": "64 keep-alive connections on 2 sync workers",
    "keepalive-few": "Keep-alive with as many connections as workers (2 sync workers)",
    "parked-memory": "The dispatcher's memory with parked keep-alive connections",
    "park-after": "Choosing park_after: keep-alive req/s at each value (2 sync workers)",
    "flask-newconn": 'Flask "hello", a new connection per request: sockpool --wsgi vs gunicorn',
    "flask-keepalive": 'Flask "hello", 64 keep-alive connections: sockpool --wsgi vs gunicorn',
    "starlette": 'Starlette "hello": sockpool --asgi vs uvicorn',
}
# What each issue 12 table shows (below its title).
NOTES = {
    "idle-keepalive": "Each idle connection made one keep-alive request (`answered`: how many "
    "got their answer) and then stays open, idle; meanwhile new clients (bench.loadgen, a new "
    "connection per request, 4 in flight, 3 s) are measured. `failed`: new clients' requests "
    "with no right answer within the timeout (5 s); the last p99 counts each of them as the "
    "whole timeout. `main fds`: descriptors the server's main process holds (sockpool: its "
    "dispatcher, holding the parked connections or not).",
    "idle-async": "The idle connections connect and send nothing (`connected`: handshakes "
    "complete on the client's side, `pending`: SYNs the server's full accept queue dropped); "
    "then new echo clients as in the table above. sockpool runs with the default capacity "
    "(100 per worker) and, where it has it, `--first-byte-timeout 30` so that the idle ones "
    "stay for the whole measurement.",
    "slowloris": "Each slow client sends one byte of a never-ending request head every 2 s; new "
    "HTTP clients are measured meanwhile as above. sockpool runs with `--request-timeout 10` "
    "(default 30) where it has it, to keep the run short; `closed after`: from a slow client's "
    "connect to the server's EOF or reset, watched for the request timeout plus 5 s.",
    "slow-upload": "8 clients each POST a 64 KiB body (with `Content-Length`), sending 4 KiB "
    "every 0.25 s (4 s in all), to `http_hello`, which answers once it has read the body; new "
    "HTTP clients are measured meanwhile as above. `answered`: uploads answered. The pool's "
    "workers read each body as it comes; sockpool's dispatcher waits for the body in the "
    "kernel's buffer first (`max_buffered_body`). A closed loop's p99 hides a stall (its "
    "clients send little while they wait): see p99.9, max and conns/s.",
    "flask-upload": "The same slow uploads and new clients, to the Flask app "
    "(bench/apps/flask_hello.py, whose `/upload` view reads the body with `request.get_data()`) "
    "on 2 workers: sockpool --wsgi, gunicorn's sync workers, and gthread with 4 threads each "
    "(8 places for the 8 uploads).",
    "flask-download": "8 clients each `GET /download` from the Flask app, whose view returns "
    "`send_file()` of an 8 MiB file (wsgi.file_wrapper), each with a 64 KiB receive buffer "
    "(`SO_RCVBUF`), reading 64 KiB every 0.1 s (13 s in all); once each has begun receiving "
    "(or 1 s has passed without another beginning), new HTTP clients are measured as in "
    "the tables above (a new connection per request, 4 in flight, 3 s; `failed`: no answer "
    "within 5 s; no p99.9 or max where none was answered). `answered`: downloads that got "
    "the whole file, checked byte for byte. A worker that sends the file itself (gunicorn's "
    "sync workers; gthread's 4 threads each, 8 places for the 8 downloads) is held until "
    "the rest fits the kernel's buffers (about 10 of the 13 s here); sockpool's worker hands "
    "the rest to the dispatcher as the file itself, whatever its length, once the client "
    "takes no more.",
    "keepalive-64": "Our own keep-alive client (bench.loadgen --keepalive: 64 connections, "
    "each sends its next request when an answer is complete, 3 s) counts the connections that "
    "got no answer at all (`starved`); then `wrk -c 64` (3 s, `--timeout 2s`) gives req/s and "
    "timeouts. wrk 4.1 counts a timeout only when a late answer arrives, so connections that "
    "never get one show as starved here, not as wrk timeouts.",
    "keepalive-few": "`wrk -t2 -c2`. sockpool before issue 12 (fe504ec, extracted with `git "
    "archive`) runs in the same rounds as today's; the recorded row, if any, is from "
    "bench/results/before-issue12.json, another run on this machine (its load differs).",
    "parked-memory": "The dispatcher's VmRSS (/proc/PID/status) at rest, then with every "
    "connection idle after one keep-alive request; `parked`: the descriptors the dispatcher "
    "gained (the connections it holds).",
    "park-after": "One sockpool per value of `--park-after`: keepalive-few's load (wrk -c2) "
    "and keepalive-64's (our client, then wrk -c64), 3 s each.",
    "flask-newconn": "The same Flask app (bench/apps/flask_hello.py, a view returning "
    "`hello\\n`) under each server. `wrk -H 'Connection: close'` with the load generator's "
    "connections in flight, then bench.loadgen's http mode (every answer checked), 2 s each. "
    "`errors`: wrk's connect/read/write/status errors and timeouts (5 s).",
    "flask-keepalive": "The same app; our keep-alive client (64 connections, 2 s; an answer "
    "with `Connection: close` makes it open a new connection, counted in `closed by server`) "
    "counts the connections that got no answer at all (`starved`), then `wrk -c 64` (2 s, "
    "`--timeout 2s`) gives req/s. gunicorn's sync workers close every connection.",
    "starlette": "The same Starlette app (bench/apps/starlette_hello.py) under sockpool "
    "--asgi and uvicorn (`uvicorn[standard]`: httptools and uvloop; `--no-access-log`), "
    "measured with wrk as the two Flask scenarios are, one after the other. uvicorn takes "
    "the socket with `--fd 3`, which it wraps as an AF_UNIX socket and so never sets "
    "TCP_NODELAY on: every server here gets its socket with TCP_NODELAY set, as "
    "`NoDelay=yes` in a socket unit does "
    "(bench/peers/nodelay.py); without it uvicorn waits for the client's delayed ACK "
    "(~40 ms) on each keep-alive answer.",
}


@dataclass
class Row:
    scenario: str
    server: str
    label: str
    rounds: int
    failures: int
    errors: list[str]
    med: dict[str, float]

    def get(self, key: str) -> float | None:
        return self.med.get(key)


def aggregate(records: list[dict[str, Any]]) -> dict[str, list[Row]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault((rec["scenario"], rec["server"]), []).append(rec)
    out: dict[str, list[Row]] = {}
    for (scenario, server), recs in groups.items():
        good = [r for r in recs if not r.get("error")]
        med: dict[str, float] = {}
        keys = {k for r in good for k, v in r.items() if isinstance(v, int | float)}
        for k in keys - {"round"}:
            vals = [float(r[k]) for r in good if isinstance(r.get(k), int | float)]
            if vals:
                med[k] = statistics.median(vals)
        if good:
            colds = [float(r["cold_ms"]) for r in good if "cold_ms" in r]
            if colds:
                med["cold_min_ms"], med["cold_max_ms"] = min(colds), max(colds)
        out.setdefault(scenario, []).append(
            Row(
                scenario=scenario,
                server=server,
                label=recs[0].get("label", server),
                rounds=len(good),
                failures=sum(int(r.get("failures", 0)) for r in recs),
                errors=[str(r["error"]) for r in recs if r.get("error")],
                med=med,
            )
        )
    return out


def find(rows: dict[str, list[Row]], scenario: str, server: str) -> Row | None:
    for row in rows.get(scenario, []):
        if row.server == server and row.rounds:
            return row
    return None


def fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(headers: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def load_table(rows: dict[str, list[Row]], scenario: str) -> list[str]:
    mine = [r for r in rows.get(scenario, []) if r.server.startswith("sockpool") and r.rounds]
    base = find(rows, scenario, "sockpool") or (mine[0] if mine else None)
    base_rps = base.get("rps") if base else None
    unit = "req/s" if scenario == "keepalive" else "conns/s"
    headers = [
        "server",
        unit,
        "sockpool ÷ this",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
    ]
    if scenario in MIXED:
        headers.append("p99 ms, fast 9/10")
    headers += ["failures", "main process CPU µs/conn", "workers' CPU µs/conn", "rounds"]
    lines = []
    for row in rows.get(scenario, []):
        if not row.rounds:
            lines.append([row.label, "error: " + row.errors[0][:80], *[""] * (len(headers) - 2)])
            continue
        r = ratio(base_rps, row.get("rps"))
        line = [
            row.label,
            fmt(row.get("rps"), 0),
            "" if row is base else (f"{r:.2f}x" if r else "-"),
            fmt(row.get("p50_ms"), 2),
            fmt(row.get("p99_ms"), 2),
            fmt(row.get("p999_ms"), 2),
        ]
        if scenario in MIXED:
            line.append(fmt(row.get("fast_p99_ms"), 2))
        cpu = row.get("main_cpu_us_per_conn") if row.med.get("dispatcher") else None
        workers = row.get("workers_cpu_us_per_conn")
        line += [str(row.failures), fmt(cpu, 1), fmt(workers, 1), str(row.rounds)]
        lines.append(line)
    return table(headers, lines)


MIXED = ("mixed", "mixed-cpu", "mixed-cpu-paced")
# Every table of load_table's kind, in the order RESULTS.md shows them.
LOAD_SCENARIOS = (
    "newconn-echo",
    "newconn-echo-2w",
    "churn-cpu",
    "ceiling",
    "newconn-http",
    "newconn-http-wrk",
    "keepalive",
    *MIXED,
)


# Issue 12's tables: (header, record key or Row -> value, digits) per column.
Column = tuple[str, str | Callable[[Row], float | None], int]
_NORMAL: list[Column] = [
    ("new clients ok", "ok", 0),
    ("failed", lambda r: r.failures, 0),
    ("p50 ms", lambda r: r.get("p50_ms") if r.get("ok") else None, 2),
    ("p99 ms", lambda r: r.get("p99_ms") if r.get("ok") else None, 2),
    ("p99 ms, failures as the timeout", "p99_all_ms", 2),
]


def _slow_crowd(kind: str) -> list[Column]:
    """The slow crowds' tables (bench.run's SLOW_CROWDS: uploads to http_hello and to Flask,
    downloads from Flask), by the crowd's kind: a closed loop's p99 hides a stall, so
    p99.9, the maximum and the throughput beside it."""
    return [
        (f"{kind}s", f"{kind}_conns", 0),
        ("answered", f"{kind}_answered", 0),
        ("new clients' conns/s", "rps", 0),
        *_NORMAL,
        ("p99.9 ms", lambda r: r.get("p999_ms") if r.get("ok") else None, 2),
        ("max ms", lambda r: r.get("max_ms") if r.get("ok") else None, 1),
    ]


COLUMNS: dict[str, list[Column]] = {
    "idle-keepalive": [
        ("idle conns", "idle_conns", 0),
        ("answered", "idle_answered", 0),
        ("main fds", "main_fds", 0),
        *_NORMAL,
    ],
    "idle-async": [
        ("idle conns", "idle_conns", 0),
        ("connected", "idle_connected", 0),
        ("pending", "idle_pending", 0),
        ("closed by server", "idle_closed", 0),
        ("main fds", "main_fds", 0),
        *_NORMAL,
    ],
    "slowloris": [
        ("request timeout s", "request_timeout_s", 0),
        ("slow conns", "slow_conns", 0),
        ("closed by server", "slow_closed", 0),
        ("still open", "slow_held", 0),
        ("closed after s: min", "slow_close_min_s", 1),
        ("median", "slow_close_p50_s", 1),
        ("max", "slow_close_max_s", 1),
        *_NORMAL,
    ],
    "slow-upload": _slow_crowd("upload"),
    "flask-upload": _slow_crowd("upload"),
    "flask-download": _slow_crowd("download"),
    "keepalive-64": [
        ("req/s (wrk)", "req_per_s", 0),
        ("wrk p99 ms", "p99_ms", 2),
        ("wrk timeouts", "wrk_timeouts", 0),
        ("starved (of 64)", "starved", 0),
        ("answers per conn: min", "min_answers", 0),
        ("max", "max_answers", 0),
        ("our client req/s", "own_rps", 0),
        ("failures, all rounds", lambda r: r.failures, 0),
        ("rounds", lambda r: r.rounds, 0),
    ],
    "keepalive-few": [
        ("req/s", "req_per_s", 0),
        ("p50 ms", "p50_ms", 3),
        ("p99 ms", "p99_ms", 2),
        ("failures, all rounds", lambda r: r.failures, 0),
        ("rounds", lambda r: r.rounds, 0),
    ],
    "parked-memory": [
        ("connections", "parked_conns", 0),
        ("answered", "parked_answered", 0),
        ("parked", "parked", 0),
        ("RSS before MiB", lambda r: _mib(r.get("rss_before_kib")), 1),
        ("RSS after MiB", lambda r: _mib(r.get("rss_after_kib")), 1),
        ("KiB per parked conn", "rss_per_parked_kib", 2),
    ],
    "park-after": [
        ("park_after s", "park_after_s", 4),
        ("req/s, 2 conns", "few_rps", 0),
        ("req/s, 64 conns", "req_per_s", 0),
        ("starved (of 64)", "starved", 0),
        ("wrk timeouts", "wrk_timeouts", 0),
        ("p99 ms, 64 conns", "p99_ms", 2),
    ],
}


def _mib(kib: float | None) -> float | None:
    return None if kib is None else kib / 1024


def issue12_table(
    rows: dict[str, list[Row]], scenario: str, columns: list[Column] | None = None
) -> list[str]:
    columns = COLUMNS[scenario] if columns is None else columns
    lines = []
    for row in rows.get(scenario, []):
        if not row.rounds:
            lines.append([row.label, "error: " + row.errors[0][:80], *[""] * (len(columns) - 1)])
            continue
        cells = [row.label]
        for _header, key, digits in columns:
            value = key(row) if callable(key) else row.get(key)
            cells.append(fmt(value, digits))
        lines.append(cells)
    return table(["server", *(c[0] for c in columns)], lines)


WEB = ("flask-newconn", "flask-keepalive", "starlette")  # issue 13's scenarios


def web_table(rows: dict[str, list[Row]], scenario: str) -> list[str]:
    """Each server's figures with the ratio sockpool ÷ it, per load."""
    base = find(rows, scenario, "sockpool")

    def vs(key: str) -> Callable[[Row], float | None]:
        def get(row: Row) -> float | None:
            if base is None or row.server == "sockpool":
                return None
            return ratio(base.get(key), row.get(key))

        return get

    # What the scenario measured (bench.run's WEB_PHASES), from the figures it recorded.
    measured = {k for row in rows.get(scenario, []) for k in row.med}
    columns: list[Column] = []
    if "close_rps" in measured:
        columns += [
            ("new conn each: req/s (wrk)", "close_rps", 0),
            ("sockpool ÷ this", vs("close_rps"), 2),
            ("p99 ms", "close_p99_ms", 2),
            ("errors", "close_failures", 0),
            ("of which timeouts", "close_timeouts", 0),
        ]
    if "lg_rps" in measured:
        columns += [
            ("conns/s (bench.loadgen)", "lg_rps", 0),
            ("p99 ms", "lg_p99_ms", 2),
            ("failed", "lg_failures", 0),
        ]
    if "req_per_s" in measured:
        columns += [
            ("64 keep-alive: req/s (wrk)", "req_per_s", 0),
            ("sockpool ÷ this", vs("req_per_s"), 2),
            ("p99 ms", "p99_ms", 2),
            ("errors", "ka_errors", 0),
            ("of which timeouts", "wrk_timeouts", 0),
            ("starved (of 64)", "starved", 0),
            ("closed by server", "server_closes", 0),
            ("our client failed", "own_failures", 0),
        ]
    columns += [
        ("failures, all rounds", lambda r: r.failures, 0),
        ("rounds", lambda r: r.rounds, 0),
    ]
    return issue12_table(rows, scenario, columns)


def cold_table(rows: dict[str, list[Row]]) -> list[str]:
    lines = [
        [
            row.label,
            fmt(row.get("cold_ms"), 0),
            fmt(row.get("cold_min_ms"), 0),
            fmt(row.get("cold_max_ms"), 0),
            str(row.rounds),
        ]
        for row in rows.get("coldstart", [])
    ]
    return table(["server", "median ms", "min ms", "max ms", "rounds"], lines)


def memory_table(rows: dict[str, list[Row]], workers: int) -> list[str]:
    lines = []
    for row in rows.get("memory", []):
        pss = row.get("pss_kib")
        main = row.get("main_pss_kib")
        lines.append(
            [
                row.label,
                fmt(pss / 1024 if pss else None, 1),
                fmt(row.get("nprocs"), 0),
                fmt(main / 1024 if main else None, 1),
                fmt(pss / 1024 / workers if pss else None, 1),
            ]
        )
    return table(
        ["server", "pool PSS MiB", "processes", "main process MiB", f"per worker MiB (÷{workers})"],
        lines,
    )


CPU_SCENARIOS = ("newconn-echo", "newconn-echo-2w", "churn-cpu", "ceiling")
CPU_SCENARIOS += ("newconn-http", "newconn-http-wrk")


def cpu_table(rows: dict[str, list[Row]]) -> list[str]:
    lines = []
    for scenario in CPU_SCENARIOS:
        for row in rows.get(scenario, []):
            if not row.med.get("dispatcher") or not row.rounds:
                continue
            lines.append(
                [
                    f"{row.label} — {scenario}",
                    fmt(row.get("main_cpu_us_per_conn"), 1),
                    fmt(row.get("main_run_us_per_conn"), 1),
                    fmt(row.get("client_cpu_us_per_conn"), 1),
                ]
            )
    return table(
        [
            "main process",
            "CPU µs/conn (/proc/PID/stat)",
            "on-CPU µs/conn (schedstat)",
            "load generator CPU µs/conn",
        ],
        lines,
    )


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    digits: int = 1
    scale: float = 1.0  # results.json's figure times this is the one shown and bounded


METRICS = {
    "rps": Metric("throughput", "conns/s", 0),
    "main_cpu_us_per_conn": Metric("main process CPU", "µs/conn"),
    "fast_p99_ms": Metric("p99 of the fast requests", "ms", 2),
    "cold_ms": Metric("time to first answer", "ms", 0),
    "pss_per_worker_kib": Metric("pool PSS per worker", "MiB", 1, 1 / 1024),
    "p99_all_ms": Metric("new clients' p99 (a failure counts as the timeout)", "ms", 2),
    "starved": Metric("connections with no answer", "conns", 0),
    "wrk_timeouts": Metric("wrk timeouts", "", 0),
    "slow_held": Metric("slow clients never closed", "conns", 0),
    "slow_close_over_s": Metric("last slow client's close past its request timeout", "s", 1),
    "upload_unanswered": Metric("slow uploads not answered", "conns", 0),
    "download_unanswered": Metric("slow downloads not answered", "conns", 0),
    "p999_ms": Metric("new clients' p99.9", "ms", 2),
    "req_per_s": Metric("keep-alive throughput", "req/s", 0),
    "close_rps": Metric("throughput, a new connection per request", "req/s", 0),
    "rss_per_parked_kib": Metric("dispatcher RSS per parked connection", "KiB", 2),
    "ceiling_conns_per_s": Metric("ceiling (1e6 ÷ its CPU µs/conn)", "conns/s", 0),
}
SCENARIOS = {
    "newconn-echo": "new conn/request, echo",
    "newconn-echo-2w": "new conn/request, echo, 2 workers",
    "churn-cpu": "new conn/request, 0.5 ms CPU + echo, 2 workers",
    "ceiling": "workers that answer at once",
    "mixed-cpu": "mixed load, 5 ms of CPU in 1 of 10 (async)",
    "mixed-cpu-paced": "the same, 800 conns/s (open loop)",
    "newconn-http": "new conn/request, HTTP",
    "newconn-http-wrk": "new conn/request, HTTP (wrk client)",
    "mixed": "mixed load",
    "coldstart": "cold start",
    "memory": "memory at rest",
    "idle-keepalive": "idle keep-alive connections",
    "idle-async": "idle connections, async",
    "slowloris": "slowloris",
    "slow-upload": "slow uploads",
    "flask-upload": "slow uploads to Flask",
    "flask-download": "slow downloads from Flask",
    "keepalive-64": "64 keep-alive connections",
    "keepalive-few": "keep-alive, connections = workers",
    "parked-memory": "parked connections",
    "flask-newconn": "Flask, new conn/request",
    "flask-keepalive": "Flask, 64 keep-alive connections",
    "starlette": "Starlette",
}
SERVERS = {
    "sockpool": "sockpool",
    "sockpool-async": "sockpool (async)",
    "sockpool-d2": "sockpool with dispatchers = 2",
    "sockpool-qa0": "sockpool with queue_ahead = 0",
    "sockpool-qa3": "sockpool with queue_ahead = 3",
    "sockpool-pull": "sockpool (async) with pull = true",
    "sockpool-proxy": "sockpool behind PROXY protocol v2",
    "sockpool-aw": "sockpool with accept = workers",
    "prefork": "shared-accept pool",
    "prefork-async": "shared-accept pool (async)",
    "plainloop": "plain accept/send_fds/close loop",
    "accept-yes": "systemd Accept=yes",
    "forking": "ForkingTCPServer",
    "node": "Node.js cluster",
    "sockpool-before": "sockpool before issue 12",
    "gunicorn": "gunicorn sync",
    "gunicorn-gthread": "gunicorn gthread",
    "uvicorn": "uvicorn",
}
RELATIONS: dict[str, Callable[[float, float], bool]] = {
    "≥": operator.ge,
    ">": operator.gt,
    "≤": operator.le,
}


@dataclass(frozen=True)
class Target:
    """`server`'s `metric` in `scenario` against `bound`: a figure in the metric's unit, or
    with `peer` a multiple of the peer's. No relation: a ratio shown for scale only."""

    scenario: str
    metric: str
    relation: str
    bound: float = 1.0
    peer: str | None = None
    server: str = "sockpool"

    @property
    def text(self) -> str:
        metric = METRICS[self.metric]
        what = f"{SCENARIOS[self.scenario]}: {SERVERS[self.server]}'s {metric.label}"
        if self.peer is None and not self.relation:
            return f"(measured) {what}"
        if self.peer is None:
            return f"{what} {self.relation} {self.bound:g} {metric.unit}".rstrip()
        if not self.relation:
            return f"(for scale) {what} ÷ {SERVERS[self.peer]}'s"
        return f"{what} {self.relation} {self.bound:g}x {SERVERS[self.peer]}'s"


TARGETS = (
    Target("newconn-echo", "rps", "≥", 0.90, "prefork"),
    Target("newconn-http", "rps", "≥", 0.95, "prefork"),
    Target("newconn-http-wrk", "rps", "≥", 0.95, "prefork"),
    Target("newconn-echo", "rps", "", 1, "prefork", server="plainloop"),  # the cost of any handoff
    Target("newconn-echo", "rps", "≥", 50, "accept-yes"),
    Target("newconn-echo", "rps", "≥", 4, "forking"),
    Target("newconn-http", "rps", "≥", 4, "forking"),
    Target("newconn-echo", "rps", ">", 1, "node"),
    Target("newconn-http", "rps", ">", 1, "node"),
    Target("newconn-echo", "main_cpu_us_per_conn", "≤", 1, "plainloop"),
    # The 50 ms requests are one in ten, so the overall p99 is one of them whatever the
    # dispatch: the tail that dispatch decides is the fast requests' (queued behind slow ones).
    Target("mixed", "fast_p99_ms", "≤", 1, "prefork"),
    Target("mixed", "fast_p99_ms", "≤", 1, "prefork-async", server="sockpool-async"),
    Target("coldstart", "cold_ms", "≤", 150),
    Target("memory", "pss_per_worker_kib", "≤", 12),
    # Issue 12: idle and slow connections wait in the dispatcher, never in a worker.
    Target("idle-keepalive", "p99_all_ms", "≤", 50),
    Target("idle-async", "p99_all_ms", "≤", 50),
    Target("slowloris", "p99_all_ms", "≤", 50),
    Target("slowloris", "slow_held", "≤", 0),
    # Closed at the request timeout: within 2 s of it (the dispatcher's timer granularity).
    Target("slowloris", "slow_close_over_s", "≤", 2),
    # Slow uploads hold no worker: new clients are served as ever, and every upload too.
    # (A closed loop's p99 hides a stall: its clients send little while they wait. p99.9 and
    # the throughput show it.)
    Target("slow-upload", "p999_ms", "≤", 50),
    Target("slow-upload", "rps", "≥", 1, "prefork"),
    Target("slow-upload", "upload_unanswered", "≤", 0),
    Target("flask-upload", "p999_ms", "≤", 50),
    Target("flask-upload", "rps", "≥", 1, "gunicorn"),
    Target("flask-upload", "rps", "≥", 1, "gunicorn-gthread"),
    Target("flask-upload", "upload_unanswered", "≤", 0),
    # Nor do slow downloads, of any length: a file's rest goes to the dispatcher.
    Target("flask-download", "p999_ms", "≤", 50),
    Target("flask-download", "rps", "≥", 1, "gunicorn"),
    Target("flask-download", "rps", "≥", 1, "gunicorn-gthread"),
    Target("flask-download", "download_unanswered", "≤", 0),
    Target("keepalive-64", "starved", "≤", 0),
    Target("keepalive-64", "wrk_timeouts", "≤", 0),
    Target("keepalive-64", "req_per_s", "", 1, "prefork"),
    Target("keepalive-few", "req_per_s", "≥", 0.9, "sockpool-before"),
    Target("parked-memory", "rss_per_parked_kib", "≤", 4),
    # Issue 13: the same app, the same worker count, the same run.
    Target("flask-newconn", "close_rps", "≥", 1.3, "gunicorn"),
    Target("flask-newconn", "close_rps", "≥", 1, "gunicorn-gthread"),
    Target("flask-keepalive", "starved", "≤", 0),
    Target("flask-keepalive", "req_per_s", "≥", 2, "gunicorn"),
    Target("flask-keepalive", "req_per_s", "≥", 1, "gunicorn-gthread"),
    Target("starlette", "close_rps", "≥", 1, "uvicorn"),
    Target("starlette", "req_per_s", "≥", 1, "uvicorn"),
    # Issue 15: reading a PROXY v2 header costs churn no more than 5%.
    Target("newconn-echo", "rps", "≥", 0.95, "sockpool", server="sockpool-proxy"),
    Target("newconn-echo", "main_cpu_us_per_conn", "", 1, "sockpool", server="sockpool-proxy"),
)
# Issue 14's "done when", each against the same run's shared-accept pool or plain loop with
# the same handler and workers (newconn-echo: the run's --workers; the 2-worker ones: 2).
ISSUE14_TARGETS = (
    # The dispatcher's CPU per connection, no more than the plainest loop's.
    Target("newconn-echo", "main_cpu_us_per_conn", "≤", 1, "plainloop"),
    Target("newconn-echo-2w", "main_cpu_us_per_conn", "≤", 1, "plainloop"),
    Target("churn-cpu", "main_cpu_us_per_conn", "≤", 1, "plainloop"),
    Target("newconn-http", "main_cpu_us_per_conn", "≤", 1, "plainloop"),
    Target("newconn-http-wrk", "main_cpu_us_per_conn", "≤", 1, "plainloop"),
    # Echo churn: the limit of a separate dispatcher on shared cores, and how far that is
    # from the shared-accept pool.
    Target("newconn-echo-2w", "rps", "≥", 0.95, "plainloop"),
    Target("newconn-echo-2w", "rps", "", 1, "prefork"),
    Target("newconn-echo-2w", "rps", "", 1, "prefork", server="plainloop"),
    Target("newconn-echo", "rps", "≥", 0.95, "plainloop"),
    Target("newconn-echo", "rps", "", 1, "prefork"),
    # The realistic case: 0.5 ms of CPU per connection.
    Target("churn-cpu", "rps", "≥", 0.95, "prefork"),
    Target("churn-cpu", "rps", "", 1, "plainloop"),
    # HTTP churn, the load generator's and wrk's: the same two ratios.
    Target("newconn-http", "rps", "≥", 0.95, "plainloop"),
    Target("newconn-http", "rps", "", 1, "prefork"),
    Target("newconn-http-wrk", "rps", "≥", 0.95, "plainloop"),
    Target("newconn-http-wrk", "rps", "", 1, "prefork"),
    # Mixed load: fast requests never wait behind slow ones.
    Target("mixed", "fast_p99_ms", "≤", 1, "prefork"),
    Target("mixed", "fast_p99_ms", "≤", 1, "prefork-async", server="sockpool-async"),
    Target("mixed-cpu", "fast_p99_ms", "≤", 0.7, "prefork-async", server="sockpool-async"),
    Target("mixed-cpu-paced", "fast_p99_ms", "", 1, "prefork-async", server="sockpool-async"),
    # The same with `pull = true`, the setting for handlers that burn CPU (pull.py).
    Target("mixed-cpu", "fast_p99_ms", "≤", 0.7, "prefork-async", server="sockpool-pull"),
    Target("mixed-cpu", "rps", "", 1, "prefork-async", server="sockpool-pull"),
    Target("mixed-cpu-paced", "fast_p99_ms", "", 1, "prefork-async", server="sockpool-pull"),
    # Past one core: the measured ceiling (the projection is its own table) and two
    # dispatchers beside one.
    Target("ceiling", "ceiling_conns_per_s", ""),
    Target("ceiling", "ceiling_conns_per_s", "", server="plainloop"),
    Target("newconn-echo", "rps", "", 1, "sockpool", server="sockpool-d2"),
    # queue_ahead = 0 and 3 (1 is the default): the same churn with none queued, and with
    # three queued and completions reported a few at a time (completions.py).
    *(
        Target(scenario, metric, "", 1, peer, server=f"sockpool-qa{depth}")
        for depth in (0, 3)
        for scenario, metric, peer in (
            ("newconn-echo", "main_cpu_us_per_conn", "plainloop"),
            ("newconn-echo", "rps", "plainloop"),
            ("newconn-echo-2w", "main_cpu_us_per_conn", "plainloop"),
            ("newconn-echo-2w", "rps", "plainloop"),
            ("churn-cpu", "main_cpu_us_per_conn", "plainloop"),
            ("churn-cpu", "rps", "prefork"),
        )
    ),
    # The same churn targets with `accept = workers`: idle sync workers accept for
    # themselves (direct.py), and the dispatcher has only what is not ready.
    *(
        Target(scenario, metric, relation, bound, peer, server="sockpool-aw")
        for scenario, metric, relation, bound, peer in (
            ("newconn-echo", "main_cpu_us_per_conn", "≤", 1, "plainloop"),
            ("newconn-echo-2w", "main_cpu_us_per_conn", "≤", 1, "plainloop"),
            ("churn-cpu", "main_cpu_us_per_conn", "≤", 1, "plainloop"),
            ("newconn-http", "main_cpu_us_per_conn", "≤", 1, "plainloop"),
            ("newconn-http-wrk", "main_cpu_us_per_conn", "≤", 1, "plainloop"),
            ("newconn-echo-2w", "rps", "≥", 0.95, "plainloop"),
            ("newconn-echo-2w", "rps", "", 1, "prefork"),
            ("newconn-echo", "rps", "≥", 0.95, "plainloop"),
            ("newconn-echo", "rps", "", 1, "prefork"),
            ("churn-cpu", "rps", "≥", 0.95, "prefork"),
            ("newconn-http", "rps", "≥", 0.95, "plainloop"),
            ("newconn-http", "rps", "", 1, "prefork"),
            ("newconn-http-wrk", "rps", "≥", 0.95, "plainloop"),
            ("newconn-http-wrk", "rps", "", 1, "prefork"),
            ("mixed", "fast_p99_ms", "≤", 1, "prefork"),
        )
    ),
    # Other figures.
    Target("keepalive-few", "req_per_s", "≥", 0.9, "prefork"),
    Target("coldstart", "cold_ms", "≤", 120),
    Target("memory", "pss_per_worker_kib", "≤", 8),
)
# A run with any of these has an issue 14 section (the rest of its figures come from the
# older scenarios).
ISSUE14_SCENARIOS = ("newconn-echo-2w", "churn-cpu", "ceiling", "mixed-cpu", "mixed-cpu-paced")
ISSUE12 = ("idle-keepalive", "idle-async", "slowloris", "slow-upload", "flask-upload")
ISSUE12 += ("flask-download",)
ISSUE12 += ("keepalive-64",)
ISSUE12 += ("keepalive-few",)
ISSUE12 += ("parked-memory", "park-after")
BEFORE = RESULTS / "before-issue12.json"  # sockpool at fe504ec, before issue 12


@dataclass
class Verdict:
    text: str
    measured: str
    met: bool | None
    near: bool = False  # missed by less than 10%: within this machine's noise

    @property
    def shown(self) -> str:
        if self.met is None:
            return "-"
        if self.met:
            return "yes"
        return "**no** (within 10%)" if self.near else "**no**"


def judge(rows: dict[str, list[Row]], target: Target) -> Verdict:
    metric = METRICS[target.metric]

    def figure(server: str) -> float | None:
        row = find(rows, target.scenario, server)
        return row.get(target.metric) if row else None

    mine = figure(target.server)
    theirs = None if target.peer is None else figure(target.peer)
    if target.peer is None:
        value = None if mine is None else mine * metric.scale
    elif theirs == 0 and mine and target.relation in ("≥", ">"):
        value = math.inf  # a peer that did none (no new client answered): any is more
    else:
        value = ratio(mine, theirs)
    if value is None:
        return Verdict(target.text, "-", None)
    measured = f"{fmt(value, metric.digits)} {metric.unit}".rstrip()
    if target.peer:
        shown = f"{fmt(mine, metric.digits)} vs {fmt(theirs, metric.digits)} {metric.unit}"
        measured = f"{'∞' if math.isinf(value) else f'{value:.2f}x'} ({shown})"
    if not target.relation:
        return Verdict(target.text, measured, None)
    higher_is_better = target.relation != "≤"
    near = value >= target.bound * 0.9 if higher_is_better else value <= target.bound * 1.1
    return Verdict(target.text, measured, RELATIONS[target.relation](value, target.bound), near)


def targets(rows: dict[str, list[Row]]) -> list[Verdict]:
    out = [judge(rows, target) for target in TARGETS]
    for row_list in rows.values():
        for row in row_list:
            recorded = row.server == "sockpool-before"  # a past run's, not this one's
            if row.server.startswith("sockpool") and not recorded and row.failures:
                out.append(
                    Verdict(
                        f"no failures ({row.scenario}, {row.label})",
                        f"{row.failures} failed",
                        False,
                    )
                )
    return out


# --- issue 14: how far one dispatcher goes ---------------------------------------------

CORES = (16, 64)  # the machines the projection is for


@dataclass(frozen=True)
class Projection:
    """Where one dispatcher that spends `dispatcher_us` of CPU per connection caps a pool
    whose workers spend `workers_us` per connection, the clients on other machines.

    Alone on a core it passes at most 1e6 / dispatcher_us connections a second; its
    workers need workers_us / dispatcher_us cores to keep up with it. So with fewer than
    1 + workers_us / dispatcher_us cores the cores are the limit, and with more the single
    dispatcher is: the rest of the cores idle unless more dispatchers share the load."""

    dispatcher_us: float
    workers_us: float

    @property
    def ceiling(self) -> float:
        return 1e6 / self.dispatcher_us

    @property
    def cap_cores(self) -> float:
        return 1 + self.workers_us / self.dispatcher_us

    def conns_per_s(self, cores: int, dispatchers: int = 1) -> float:
        by_cores = cores * 1e6 / (self.workers_us + self.dispatcher_us)
        return min(dispatchers * self.ceiling, by_cores)

    def dispatchers_for(self, cores: int) -> int:
        """Dispatchers needed for the cores, not a dispatcher, to be the limit."""
        return max(
            1, math.ceil(cores * self.dispatcher_us / (self.workers_us + self.dispatcher_us))
        )


# (pool, scenario and server whose workers' CPU per connection it takes, the record key).
POOLS = (
    ("echo", "newconn-echo", "sockpool", "workers_cpu_us_per_conn"),
    ("Flask", "flask-newconn", "sockpool", "lg_workers_cpu_us_per_conn"),
    ("Flask", "flask-newconn", "gunicorn", "lg_workers_cpu_us_per_conn"),  # no --wsgi yet
)
DISPATCHERS = (("sockpool", "sockpool's dispatcher"), ("plainloop", "the plain loop"))


def projection_table(rows: dict[str, list[Row]]) -> list[str]:
    """One line per pool and dispatcher: the dispatcher's CPU per connection from the
    ceiling scenario (workers that answer at once), the pool's workers' from its own."""
    lines = []
    done: set[str] = set()
    for pool, scenario, server, key in POOLS:
        row = find(rows, scenario, server)
        workers_us = row.get(key) if row else None
        if pool in done or not workers_us:
            continue
        done.add(pool)
        for name, label in DISPATCHERS:
            drow = find(rows, "ceiling", name)
            dispatcher_us = drow.get("main_cpu_us_per_conn") if drow else None
            if not dispatcher_us:
                continue
            pr = Projection(dispatcher_us, workers_us)
            cells = [
                f"{pool} ({SERVERS[server]}'s workers, {scenario})",
                fmt(workers_us, 1),
                label,
                fmt(dispatcher_us, 1),
                fmt(pr.ceiling, 0),
                fmt(pr.cap_cores, 1),
            ]
            for cores in CORES:
                bound = "dispatcher" if pr.cap_cores < cores else "cores"
                cells += [
                    f"{fmt(pr.conns_per_s(cores), 0)} ({bound})",
                    str(pr.dispatchers_for(cores)),
                ]
            lines.append(cells)
    headers = [
        "pool",
        "workers' CPU µs/conn",
        "dispatcher",
        "its CPU µs/conn",
        "one dispatcher's ceiling, conns/s",
        "caps the pool from (cores)",
    ]
    for cores in CORES:
        headers += [f"{cores} cores, one dispatcher: conns/s (limit)", "dispatchers needed"]
    return table(headers, lines)


PROJECTION_NOTE = (
    "One dispatcher alone on a core passes at most 1e6 ÷ (its CPU µs per connection) "
    "connections a second (its CPU from the `ceiling` scenario: workers that answer at "
    "once). Its workers need (their CPU µs per connection ÷ the dispatcher's) cores to keep "
    "up with it, so one dispatcher caps the pool on any machine with more than 1 + that "
    "many cores; below, the cores are the limit. The workers' CPU per connection is "
    "measured from /proc here (user+system time of every process below the main one, over "
    "the measurement, ÷ the connections answered): on these 2 shared cores, with the "
    "clients beside them, so it includes the contention, and kernel time spent on a "
    "connection's TCP handshake is charged to whichever process was running. The "
    "projection assumes the clients on other machines and the CPU per connection "
    "unchanged with more cores. `dispatchers needed`: for the cores, not a dispatcher, to "
    "be the limit (`dispatchers = N`)."
)


def issue14_section(
    rows: dict[str, list[Row]], cfg: dict[str, Any], level: str = "##"
) -> list[str]:
    """Issue 14's targets and the one-dispatcher projection."""
    md = [
        f"{level} Issue 14 targets",
        "",
        f"Against the same run's shared-accept pool (every worker calls `accept()`) and plain "
        f"loop (accept, `send_fds`, close), with the same handler and workers: "
        f"{cfg['workers']} workers in new conn/request echo and HTTP, 2 where it says so; the "
        "mixed loads run the same worker count as the rest. `(measured)` and `(for scale)` "
        "rows have no target.",
        "",
    ]
    md += table(
        ["target", "measured", "met"],
        [[t.text, t.measured, t.shown] for t in (judge(rows, x) for x in ISSUE14_TARGETS)],
    )
    proj = projection_table(rows)
    if len(proj) > 2:
        md += ["", f"{level} One dispatcher's ceiling, projected to 16 and 64 cores", ""]
        md += [PROJECTION_NOTE, "", *proj]
    return md


def with_before(rows: dict[str, list[Row]], result: dict[str, Any], path: Path = BEFORE) -> None:
    """Add sockpool's recorded figures from before issue 12 to the issue 12 tables this run
    has (as server "sockpool-before"): the "before" that keepalive-few is held to."""
    if not path.exists():
        return
    before = json.loads(path.read_text())
    if before["meta"] == result["meta"]:  # rendering the recorded run itself
        return
    old = aggregate(before["records"])
    rev = before["meta"]["versions"]["sockpool"].partition(" ")[2].strip("()") or "?"
    for scenario in ISSUE12:
        row = find(old, scenario, "sockpool")
        live = find(rows, scenario, "sockpool-before")  # measured in this run: that one
        if row is not None and scenario in rows and live is None:
            label = f"sockpool before issue 12 ({rev}, recorded {before['meta']['date']})"
            rows[scenario].append(dataclasses.replace(row, server="sockpool-before", label=label))


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    rows = aggregate(result["records"])
    with_before(rows, result)
    cfg = meta["config"]
    m = meta["machine"]
    v = meta["versions"]
    load = cfg["procs"] * cfg["concurrency"]
    md = [
        "# sockpool benchmark results",
        "",
        f"Run {meta['date']}{' (smoke run)' if meta.get('smoke') else ''}, "
        f"{meta.get('elapsed_s', 0):.0f} s. Reproduce with `make bench`.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['mem_mib']:,} MiB, {m['os']}, "
        f"Linux {m['kernel']}; load average {' '.join(m['loadavg_start'])} at start, "
        f"{' '.join(m.get('loadavg_end', ['?']))} at end.",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Every server has {cfg['workers']} workers and is started by `systemd-socket-activate`"
        f" on its own 127.0.0.1 port (Accept=yes: by systemd in a container); "
        f"{cfg['rounds']} rounds of {cfg['duration']:g} s each, the servers one after another "
        "in a rotating order; figures are medians over the rounds.",
        f"- Client load: `bench.loadgen`, {cfg['procs']} processes x {cfg['concurrency']} "
        f"connections in flight ({load}), a new connection per request, every answer checked; "
        f"keep-alive: `wrk -t{min(cfg['procs'], cfg['workers'])} -c{cfg['workers']}`; "
        f"new HTTP connections also with `wrk -c{load} -H 'Connection: close'`. "
        "Client and servers share the same cores: the client's CPU is part of every figure, "
        "so throughput ratios understate differences in server cost. bench.loadgen's "
        "latencies include the connect; wrk's start at the request.",
    ]
    if any(scenario in rows for scenario in ISSUE12):
        md.append(
            "- Issue 12's scenarios (idle, slow and keep-alive connections: "
            + ", ".join(s for s in ISSUE12 if s in rows)
            + ") run 2 workers whatever the above says, one round each except keepalive-64 "
            "and keepalive-few; each table says what it measures."
        )
    if any(scenario in rows for scenario in WEB):
        md.append(
            "- Issue 13's scenarios (web applications: "
            + ", ".join(s for s in WEB if s in rows)
            + f") run {cfg['workers']} workers in every server (gunicorn gthread: 4 threads "
            "each), no access log, and every listening socket has TCP_NODELAY, as "
            "`NoDelay=yes` in a socket unit sets it; each table says what it measures."
        )
    md += [
        "",
        "## Targets",
        "",
    ]
    md += table(
        ["target", "measured", "met"],
        [[t.text, t.measured, t.shown] for t in targets(rows)],
    )
    if any(scenario in rows for scenario in ISSUE14_SCENARIOS):
        md += ["", *issue14_section(rows, cfg)]
    for scenario in LOAD_SCENARIOS:
        if scenario in rows:
            md += ["", f"## {TITLES[scenario]}", "", *load_table(rows, scenario)]
    if any(s in rows for s in CPU_SCENARIOS):
        md += [
            "",
            "## Dispatcher CPU time per connection",
            "",
            "user+system time of the main process only (sockpool's dispatcher, the plain "
            "loop, Node's primary), divided by the connections answered.",
            "",
            *cpu_table(rows),
        ]
    if "coldstart" in rows:
        md += ["", f"## {TITLES['coldstart']}", "", *cold_table(rows)]
    if "memory" in rows:
        md += ["", f"## {TITLES['memory']}", "", *memory_table(rows, cfg["workers"])]
    for scenario in ISSUE12:
        if scenario in rows:
            md += ["", f"## {TITLES[scenario]}", "", NOTES[scenario], ""]
            md += issue12_table(rows, scenario)
    for scenario in WEB:
        if scenario in rows:
            md += ["", f"## {TITLES[scenario]}", "", NOTES[scenario], ""]
            md += web_table(rows, scenario)
    if meta.get("skipped"):
        md += ["", "## Skipped", "", *[f"- {s}" for s in meta["skipped"]]]
    errs = [(r.scenario, r.label, e) for rs in rows.values() for r in rs for e in r.errors]
    if errs:
        md += ["", "## Errors", "", *[f"- {s}, {label}: {e}" for s, label, e in errs]]
    md += [
        "",
        "Notes: the machine was shared with other work during the run (see the load "
        "averages): treat differences under ~10% as noise. Raw per-round figures are in "
        "`results.json`.",
        "",
    ]
    return "\n".join(md)


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    rows = aggregate(result["records"])
    panels: list[tuple[str, str, str, Callable[[Row], float | None], bool]] = [
        ("newconn-echo", "new conn/request, echo", "conns/s", lambda r: r.get("rps"), True),
        ("newconn-echo-2w", "echo churn, 2 workers", "conns/s", lambda r: r.get("rps"), False),
        ("churn-cpu", "0.5 ms CPU churn, 2 workers", "conns/s", lambda r: r.get("rps"), False),
        ("newconn-http", "new conn/request, HTTP", "conns/s", lambda r: r.get("rps"), True),
        (
            "newconn-http-wrk",
            "new conn/request, HTTP (wrk)",
            "req/s",
            lambda r: r.get("rps"),
            False,
        ),
        ("keepalive", "keep-alive HTTP", "req/s", lambda r: r.get("rps"), False),
        ("flask-newconn", "Flask, new conn/request", "req/s", lambda r: r.get("close_rps"), False),
        ("flask-keepalive", "Flask, 64 keep-alive", "req/s", lambda r: r.get("req_per_s"), False),
        ("starlette", "Starlette, 64 keep-alive", "req/s", lambda r: r.get("req_per_s"), False),
        (
            "mixed",
            "mixed load: p99 of the fast 9 in 10",
            "ms",
            lambda r: r.get("fast_p99_ms"),
            False,
        ),
        (
            "mixed-cpu",
            "5 ms CPU in 1 of 10, async: p99 fast",
            "ms",
            lambda r: r.get("fast_p99_ms"),
            False,
        ),
        (
            "newconn-echo",
            "main process CPU per connection (echo)",
            "µs",
            lambda r: r.get("main_cpu_us_per_conn") if r.med.get("dispatcher") else None,
            False,
        ),
        ("coldstart", "cold start to first answer", "ms", lambda r: r.get("cold_ms"), False),
        (
            "memory",
            "pool PSS at rest",
            "MiB",
            lambda r: (r.get("pss_kib") or 0) / 1024 or None,
            False,
        ),
    ]
    panels = [p for p in panels if p[0] in rows]
    if not panels:
        return False
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.8 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (scenario, title, unit, get, log) in zip(axes.flat, panels, strict=False):
        data = [(r.label, get(r)) for r in rows[scenario] if r.rounds and get(r)]
        labels = [d[0] for d in data]
        values = [float(d[1] or 0) for d in data]
        colors = ["tab:orange" if lab.startswith("sockpool") else "tab:blue" for lab in labels]
        ax.barh(labels, values, color=colors)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(unit)
        ax.tick_params(axis="y", labelsize=8)
        if log and values and max(values) / max(min(values), 1e-9) > 50:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        for y, val in enumerate(values):
            ax.text(val, y, f" {val:,.0f}" if val >= 10 else f" {val:.1f}", va="center", fontsize=7)
    meta = result["meta"]
    fig.suptitle(
        f"sockpool vs peers — {meta['date']}, {meta['machine']['cores']} cores, "
        f"{meta['config']['workers']} workers each",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(result: dict[str, Any], out: Path) -> None:
    md = markdown(result)
    (out / "RESULTS.md").write_text(md)
    png = plot(result, out / "bench.png")
    print(f"wrote {out / 'RESULTS.md'}" + (f" and {out / 'bench.png'}" if png else " (no plot)"))


def readme_section(result: dict[str, Any]) -> str:
    """The README's benchmark section: how to reproduce, and the headline tables."""
    meta = result["meta"]
    rows = aggregate(result["records"])
    m, cfg = meta["machine"], meta["config"]
    md = [
        "## Benchmarks",
        "",
        "`make bench` measures sockpool against its peers on the machine at hand, in one run "
        "(about 22 minutes on 2 cores): it installs what it needs (wrk and Node.js from the "
        "distribution, gunicorn, uvicorn, matplotlib and py-spy into the venv), starts every "
        "server exactly as "
        "systemd would (`systemd-socket-activate`, and a real systemd in a throw-away "
        "container for `Accept=yes`), and writes "
        "[bench/results/RESULTS.md](bench/results/RESULTS.md) and "
        "[bench/results/bench.png](bench/results/bench.png). `make bench-smoke` runs the same "
        "harness for a few seconds; options go through `BENCH_ARGS` "
        "(e.g. `make bench BENCH_ARGS='--rounds 5 --duration 10'`, see "
        "`python -m bench.run --help`).",
        "",
        f"Every server runs {cfg['workers']} workers and serves the same handler functions "
        "(`sockpool.handlers:echo`, `http_hello`, and the bench's 50 ms mixed handler): sockpool; "
        "a shared-accept pre-forked pool (every worker calls `accept()` on the inherited socket: "
        "the baseline that isolates the cost of the handoff); the plainest dispatcher "
        "(accept, `send_fds`, close); `socketserver.ForkingTCPServer`; systemd `Accept=yes`; "
        "gunicorn's sync workers; Node.js cluster. The raw-TCP client (`bench/loadgen.py`) opens "
        "a new connection per request from several processes and checks every answer; HTTP "
        "keep-alive uses `wrk`.",
        "",
        f"Latest run: {meta['date']}, {m['cpu']}, {m['cores']} cores, {m['os']}, "
        f"load average {' '.join(m['loadavg_start'])} at start (a machine shared with other "
        "work, so expect ~10% noise); client and servers share the cores.",
        "",
        "### Targets",
        "",
        *table(
            ["target", "measured", "met"],
            [[t.text, t.measured, t.shown] for t in targets(rows)],
        ),
    ]
    if any(scenario in rows for scenario in ISSUE14_SCENARIOS):
        md += ["", *issue14_section(rows, cfg, "###")]
        md += [
            "",
            "`make bench-profile` records where the dispatcher's CPU goes under echo churn "
            "(py-spy and perf): [bench/results/profile/](bench/results/profile/README.md).",
        ]
    for scenario in ("newconn-echo", "newconn-http", "newconn-http-wrk"):
        if scenario in rows:
            md += ["", f"### {TITLES[scenario]}", "", *load_table(rows, scenario)]
    md += [
        "",
        "Keep-alive, mixed-load, cold-start and memory figures: "
        "[bench/results/RESULTS.md](bench/results/RESULTS.md).",
        "",
        "![sockpool vs peers](bench/results/bench.png)",
        "",
    ]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="RESULTS.md and bench.png beside a `make bench` results.json, without "
        "measuring again",
    )
    ap.add_argument(
        "results",
        nargs="?",
        type=Path,
        default=RESULTS / "results.json",
        help="a `make bench` results.json (default: bench/results/results.json)",
    )
    ap.add_argument("--readme", type=Path, help="also write README's Benchmarks section here")
    args = ap.parse_args(argv)
    try:
        result = json.loads(args.results.read_text())
    except (OSError, ValueError) as exc:
        ap.exit(2, f"bench.report: cannot read {args.results}: {exc}\n")
    write(result, args.results.parent)
    if args.readme:
        args.readme.write_text(readme_section(result))
        print(f"wrote {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
