"""Profile sockpool's dispatcher under churn: where its CPU per connection goes.

`make bench-profile` (python -m bench.profile) starts sockpool's pool as a churn scenario
does (bench.run's launcher, bench.loadgen's clients): --scenario newconn-echo (echo,
--workers workers) or churn-cpu (0.5 ms of CPU per connection, 2 workers); and the plain
accept/send_fds/close loop after it for comparison, and measures each under the same load
in phases of --duration seconds, one tool at a time:

- ``baseline``: no tool; conns/s and CPU µs per connection from /proc, as bench.run does;
- ``flame`` (sockpool only): ``py-spy record --native -r 1000`` of the dispatcher, a
  flame graph (SERVER-dispatcher.svg);
- ``top``: the same sampling as collapsed stacks (SERVER-dispatcher.collapsed.txt),
  summed per function into SERVER-dispatcher-top.txt;
- ``dump`` (sockpool only): a few ``py-spy dump --native`` snapshots under load;
- ``perf-stat``: ``perf stat --per-thread`` (task-clock, context switches, syscalls) of
  the dispatcher and every worker;
- ``perf-trace``: ``perf trace -s``, every syscall by name, per process;
- ``perf-record`` and ``perf-record-workers``: ``perf record -e cpu-clock -g`` of the
  dispatcher, then of the workers: user space against kernel, and the hottest C symbols
  (SERVER-dispatcher-perf-top.txt, SERVER-workers-perf-top.txt). A handoff costs both
  ends: the workers' half is as large as the dispatcher's.

Each tool's counts are divided by the connections answered during its phase; summary.md
puts them side by side. The tools slow what they watch (py-spy stops the dispatcher for
every sample): the conns/s of each phase say by how much; the CPU shares and per-connection
counts stay comparable. README.md in the output directory says how to read the files.

    python -m bench.profile --out bench/results/profile --duration 5
    python -m bench.profile --scenario churn-cpu --no-native
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import loadgen, procfs, run
from bench.report import fmt, table

PY_SPY = run.BIN / "py-spy"
SERVERS = ("sockpool", "plainloop")  # by default; --servers also takes queue_ahead variants
ATTACH_S = 0.5  # for a tool to attach before the load starts
PERF_EVENTS = "task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter"
TOP_LINES = 25
# What each scenario is called in the summary.
SCENARIOS = {"newconn-echo": "echo churn", "churn-cpu": "churn with 0.5 ms of CPU per connection"}
# Leaves where the dispatcher waits for work: py-spy --native counts a thread inside a
# syscall as active, so these take the samples of its idle time too. The top table leaves
# them out and says how many there were.
WAITS = ("epoll_wait (libc.so.6)", "poll (libc.so.6)", "select (libc.so.6)")


@dataclasses.dataclass
class Phase:
    name: str
    conns: int
    rps: float
    cpu: dict[str, float]


def roles(pid: int) -> dict[int, str]:
    """Each thread of the server: "dispatcher" (the main process's) or "workers"."""
    out: dict[int, str] = {}
    for i, p in enumerate(procfs.descendants(pid)):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                out[int(tid)] = "dispatcher" if i == 0 else "workers"
    return out


@contextlib.contextmanager
def tool(argv: list[str] | None, log: Path) -> Iterator[None]:
    """Run argv (if any) around the block; SIGINT ends it, as Ctrl-C would (py-spy writes
    its output then, perf prints its summary)."""
    if argv is None:
        yield
        return
    with log.open("a") as f:
        f.write(f"\n== {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=f, stderr=f)
        try:
            time.sleep(ATTACH_S)
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def phase(
    name: str,
    pid: int,
    port: int,
    cfg: run.Config,
    log: Path,
    argv: list[str] | None = None,
    during: Callable[[], None] | None = None,
) -> Phase:
    """The echo load for cfg.duration seconds with one tool attached (or none)."""
    with tool(argv, log):
        helper = threading.Timer(1.0, during) if during else None
        if helper:
            helper.start()
        before = run.cpu_mark(pid)
        res = loadgen.run(port, "echo", cfg.procs, cfg.concurrency, cfg.duration, timeout=5)
        cpu = run.cpu_per_conn(before, run.cpu_mark(pid), res.ok)
        if helper:
            helper.join()
    if res.failures:
        raise RuntimeError(f"{name}: {res.failures} failed requests {res.failure_kinds}")
    print(f"  {name}: {res.conns_per_s:,.0f} conns/s", flush=True)
    return Phase(name, res.ok, res.conns_per_s, cpu)


def py_spy(pid: int, *args: str, no_native: bool = False) -> list[str]:
    """--native stops the dispatcher for every sample while it unwinds the C stack, long
    enough to slow it several times over, and then its timers fire more often than
    unwatched (churn-cpu: rebalance()). Without it (--no-native), a sample is
    short, and a syscall's time goes to the Python function that makes it."""
    how = [] if no_native else ["--native"]
    return [str(PY_SPY), "record", *how, "-r", "1000", "--pid", str(pid), *args]


def dumps(pid: int, path: Path, count: int = 3) -> Callable[[], None]:
    def take() -> None:
        with path.open("w") as f:
            for i in range(count):
                f.write(f"# py-spy dump --native, snapshot {i + 1} of {count}\n")
                f.flush()
                argv = [str(PY_SPY), "dump", "--native", "--pid", str(pid)]
                subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=30)
                time.sleep(0.3)

    return take


# --- reading the tools' output ------------------------------------------------------------

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """`func (path/file.py:123)` as `func (file.py)`: one line per function."""
    m = FRAME.match(frame)
    if not m:
        return frame
    return f"{m['func']} ({os.path.basename(m['file'])})"


def top_table(
    collapsed: Path, lines: int = TOP_LINES, no_native: bool = False
) -> tuple[list[str], int]:
    """py-spy's collapsed stacks (`root;...;leaf count`) as the functions with the most
    samples on their own (the leaf) and in total (anywhere in the stack)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = waiting = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        if frames[-1] in WAITS:
            waiting += n
            continue
        samples += n
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
    out = [
        f"{samples} samples of the dispatcher at work "
        f"(py-spy{'' if no_native else ' --native'}, 1000/s); "
        f"{waiting} more in {', '.join(w.split()[0] for w in WAITS)}, waiting or not, "
        "left out (perf record has the on-CPU share)",
        "",
    ]
    out.append(f"{'own %':>7} {'total %':>8}  function (file)")
    for name, n in own.most_common(lines):
        out.append(f"{100 * n / samples:7.1f} {100 * total[name] / samples:8.1f}  {name}")
    out += ["", "By total (the function and what it calls):", ""]
    out.append(f"{'total %':>8} {'own %':>7}  function (file)")
    for name, n in total.most_common(lines):
        out.append(f"{100 * n / samples:8.1f} {100 * own[name] / samples:7.1f}  {name}")
    return out, samples


def perf_stat(path: Path, who: dict[int, str]) -> dict[str, dict[str, float]]:
    """perf stat --per-thread -x, output summed per role: {role: {event: count}}."""
    out: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        parts = line.split(",")
        if len(parts) < 4 or line.startswith("#"):
            continue
        m = re.search(r"-(\d+)$", parts[0])
        value = parts[1].strip()
        if not m or not re.fullmatch(r"[\d.]+", value):
            continue
        role = who.get(int(m[1]))
        if role is None:
            continue
        event = parts[3].strip()
        counts = out.setdefault(role, {})
        counts[event] = counts.get(event, 0.0) + float(value)
    return out


TRACE_HEAD = re.compile(r"^\s*(?P<comm>.+?) \((?P<tid>\d+)\), \d+ events")
TRACE_LINE = re.compile(r"^\s+(?P<name>[a-z_0-9]+)\s+(?P<calls>\d+)\s+(?P<errors>\d+)\s")


def perf_trace(path: Path, who: dict[int, str]) -> dict[str, Counter[str]]:
    """perf trace -s output summed per role: {role: {syscall: calls}}."""
    out: dict[str, Counter[str]] = {}
    role: str | None = None
    for line in path.read_text().splitlines():
        if m := TRACE_HEAD.match(line):
            role = who.get(int(m["tid"]))
            continue
        if role and (m := TRACE_LINE.match(line)):
            out.setdefault(role, Counter())[m["name"]] += int(m["calls"])
    return out


def perf_top(data: Path, dest: Path, whose: str = "the dispatcher") -> list[str]:
    """perf report of on-CPU samples: the share of user space and kernel, then of each
    symbol (C functions: Python 3.11 has no perf trampoline, so the Python view is
    py-spy's)."""
    out = [f"# perf record -e cpu-clock -F 999 -g of {whose}: on-CPU samples only", ""]
    for sort in ("dso", "dso,sym"):
        argv = ["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none"]
        argv += ["--sort", sort, "--percent-limit", "0.5"]
        report = subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout
        out += [line for line in report.splitlines() if line.strip() and "%" in line[:12]]
        out.append("")
    dest.write_text("\n".join(out))
    return out


# --- one server, every phase -------------------------------------------------------------


def profile(
    spec: run.Spec, cfg: run.Config, out: Path, log: Path, what: str, no_native: bool
) -> dict[str, Any]:
    name = spec.server
    port = run.free_port()
    found: dict[str, Any] = {"label": spec.label, "phases": {}, "workers": spec.workers}
    with run.launch(spec, port, log) as srv:
        run.wait_answering(port, "echo")
        run.wait_pool(srv.pid, (spec.workers or cfg.workers) + 1)
        loadgen.run(port, "echo", cfg.procs, cfg.concurrency, cfg.warmup, timeout=5)
        who = roles(srv.pid)
        pids = ",".join(str(p) for p in procfs.descendants(srv.pid))
        print(f"{spec.label}: dispatcher {srv.pid}, processes {pids}", flush=True)
        phases = found["phases"]
        phases["baseline"] = phase("baseline", srv.pid, port, cfg, log)
        if name == "sockpool":
            svg = out / f"{name}-dispatcher.svg"
            argv = py_spy(srv.pid, "-o", str(svg), no_native=no_native)
            phases["flame"] = phase("flame", srv.pid, port, cfg, log, argv)
        collapsed = out / f"{name}-dispatcher.collapsed.txt"
        argv = py_spy(srv.pid, "-f", "raw", "-o", str(collapsed), no_native=no_native)
        phases["top"] = phase("top", srv.pid, port, cfg, log, argv)
        if collapsed.exists():
            lines, samples = top_table(collapsed, no_native=no_native)
            head = f"# {spec.label}: the dispatcher's hottest functions under {what}"
            (out / f"{name}-dispatcher-top.txt").write_text("\n".join([head, "", *lines, ""]))
            found["top"] = lines
            found["samples"] = samples
        if name == "sockpool":
            take = dumps(srv.pid, out / f"{name}-dispatcher-dump.txt")
            phases["dump"] = phase("dump", srv.pid, port, cfg, log, during=take)
        if shutil.which("perf"):
            stat = out / f"{name}-perf-stat.txt"
            argv = ["perf", "stat", "--per-thread", "-x,", "-o", str(stat)]
            argv += ["-e", PERF_EVENTS, "-p", pids]
            phases["perf-stat"] = phase("perf-stat", srv.pid, port, cfg, log, argv)
            found["stat"] = perf_stat(stat, who) if stat.exists() else {}
            trace = out / f"{name}-perf-trace.txt"
            argv = ["perf", "trace", "-s", "-o", str(trace), "-p", pids]
            phases["perf-trace"] = phase("perf-trace", srv.pid, port, cfg, log, argv)
            found["trace"] = perf_trace(trace, who) if trace.exists() else {}
            # The dispatcher's samples, then the workers': a handoff costs both sides.
            workers = ",".join(str(p) for p in procfs.descendants(srv.pid)[1:])
            for role, whose, ids, suffix in (
                ("dispatcher", "the dispatcher", str(srv.pid), ""),
                ("workers", "the workers", workers, "-workers"),
            ):
                data = out / f"{name}-{role}.perf.data"
                argv = ["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o", str(data)]
                argv += ["-p", ids]
                key = "perf-record" + suffix
                phases[key] = phase(key, srv.pid, port, cfg, log, argv)
                if data.exists():
                    top = perf_top(data, out / f"{name}-{role}-perf-top.txt", whose)
                    found["perf-top" + suffix] = top
                    data.unlink()
    return found


# --- summary.md ---------------------------------------------------------------------------


def per_conn(found: dict[str, Any], tool_phase: str, value: float) -> float | None:
    ph = found["phases"].get(tool_phase)
    return value / ph.conns if ph and ph.conns else None


def summary(found: dict[str, dict[str, Any]], cfg: run.Config, meta: dict[str, Any]) -> str:
    names = list(found)
    labels = [found[n]["label"] for n in names]
    workers = next(iter(found.values()))["workers"] or cfg.workers
    md = [
        f"# Dispatcher profile under {meta['what']}",
        "",
        f"Run {meta['date']}, sockpool {meta['sockpool']}, {meta['cores']} cores, load average "
        f"{meta['load_start']} at start, {meta['load_end']} at end (a shared machine: "
        "expect ~10% noise). Reproduce with `make bench-profile`; "
        "bench/results/profile/README.md says how to read these files.",
        "",
        f"Each server: {workers} workers, `{meta['handler']}`, bench.loadgen "
        f"{cfg.procs} processes x {cfg.concurrency} connections in flight, a new connection "
        f"per request, {cfg.duration:g} s per phase, one tool per phase.",
        "",
        "## Throughput in each phase (how much each tool slows the pool)",
        "",
    ]
    if not shutil.which("perf"):
        md[-2:-2] = ["No `perf` here (Debian: linux-perf): no perf figures.", ""]
    phase_names = [
        "baseline", "flame", "top", "dump", "perf-stat", "perf-trace", "perf-record",
        "perf-record-workers",
    ]  # fmt: skip
    rows = []
    for ph in phase_names:
        cells = [ph]
        for n in names:
            p = found[n]["phases"].get(ph)
            cells.append(fmt(p.rps, 0) if p else "-")
        rows.append(cells)
    md += table(["phase", *(f"{lab}: conns/s" for lab in labels)], rows)
    md += ["", "## Per connection", ""]
    figures: list[tuple[str, Callable[[dict[str, Any], str], float | None]]] = [
        (
            "CPU µs (/proc, baseline)",
            lambda f, r: f["phases"]["baseline"].cpu.get(
                "main_cpu_us_per_conn" if r == "dispatcher" else "workers_cpu_us_per_conn"
            ),
        ),
        (
            "task-clock µs (perf stat)",
            lambda f, r: _stat(f, r, "task-clock", 1e3),
        ),
        ("context switches (perf stat)", lambda f, r: _stat(f, r, "context-switches")),
        ("CPU migrations (perf stat)", lambda f, r: _stat(f, r, "cpu-migrations")),
        ("syscalls (perf stat)", lambda f, r: _stat(f, r, "raw_syscalls:sys_enter")),
    ]
    rows = []
    for label, get in figures:
        for role in ("dispatcher", "workers"):
            cells = [f"{label}, {role}"]
            cells += [fmt(get(found[n], role), 2) for n in names]
            rows.append(cells)
    md += table(["figure (workers: all of them together)", *labels], rows)
    md += [
        "",
        "## Syscalls per connection (perf trace -s)",
        "",
        "Calls of each syscall during the perf-trace phase ÷ the connections answered in it.",
        "",
    ]
    calls: set[tuple[str, str]] = set()
    for n in names:
        for role, counter in found[n].get("trace", {}).items():
            calls.update((role, sc) for sc in counter)
    rows = []
    for role in ("dispatcher", "workers"):
        listed = sorted(
            {sc for r, sc in calls if r == role},
            key=lambda sc: -max(found[n].get("trace", {}).get(role, Counter())[sc] for n in names),
        )
        for sc in listed:
            cells = [role, sc]
            for n in names:
                c = found[n].get("trace", {}).get(role, Counter())[sc]
                cells.append(fmt(per_conn(found[n], "perf-trace", c), 3) if c else "")
            rows.append(cells)
    md += table(["process", "syscall", *labels], rows)
    for n in names:
        for key, whose in (("perf-top", "the dispatcher's"), ("perf-top-workers", "the workers'")):
            if key in found[n]:
                md += ["", f"## {found[n]['label']}: where {whose} CPU goes (perf)", ""]
                md += ["```", *found[n][key][: TOP_LINES + 8], "```"]
        if "top" in found[n]:
            md += ["", f"## {found[n]['label']}: hottest functions (py-spy)", "", "```"]
            md += [*found[n]["top"][: TOP_LINES + 3], "```"]
    md.append("")
    return "\n".join(md)


def _stat(found: dict[str, Any], role: str, event: str, scale: float = 1.0) -> float | None:
    """A perf stat event per connection; task-clock (ms) in µs with scale 1e3."""
    value = found.get("stat", {}).get(role, {}).get(event)
    if value is None:
        return None
    v = per_conn(found, "perf-stat", value)
    return None if v is None else v * scale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="profile sockpool's dispatcher under churn")
    ap.add_argument("--scenario", choices=list(SCENARIOS), default="newconn-echo")
    ap.add_argument("--out", type=Path, help="default: bench/results/profile[-SCENARIO]")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of load per phase")
    ap.add_argument(
        "--no-native", action="store_true", help="py-spy without --native: see py_spy()"
    )
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="sockpool, plainloop (the default); sockpool-qa0, sockpool-qa3 (queue_ahead = 0, "
        "3), sockpool-aw (accept = workers) where the scenario runs them",
    )
    args = ap.parse_args(argv)
    if args.out is None:
        suffix = "" if args.scenario == "newconn-echo" else f"-{args.scenario}"
        args.out = run.BENCH / "results" / f"profile{suffix}"
    cfg = run.Config(workers=args.workers, duration=args.duration, out=args.out)
    # The dispatchers profile() knows how to drive: one Python main process that
    # dispatches to its workers, under the plain load (so not PROXY's, nor one of N):
    # SERVERS, and sockpool with another queue_ahead (run.queue_ahead_specs()) or with
    # accept = workers (run.workers_accept(): its workers' half is the one to look at).
    specs = {
        s.server: s
        for s in run.servers_for(args.scenario, cfg)
        if s.server in SERVERS or {run.FLAG_QUEUE_AHEAD, run.FLAG_ACCEPT} & set(s.argv)
    }
    servers = [s for s in args.servers.split(",") if s]
    if unknown := set(servers) - set(specs):
        ap.error(f"unknown servers: {', '.join(sorted(unknown))} (from: {', '.join(specs)})")
    if not PY_SPY.exists():
        sys.exit(f"bench.profile: no {PY_SPY} (make bench-deps installs py-spy)")
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*"):
        if old.name != "README.md" and old.is_file():
            old.unlink()
    log = args.out / "tools.log"
    loadgen.raise_nofile()
    stamp = dt.datetime.now(dt.UTC)
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    found: dict[str, dict[str, Any]] = {}
    what = SCENARIOS[args.scenario]
    for name in servers:
        found[name] = profile(specs[name], cfg, args.out, log, what, args.no_native)
    meta = {
        "date": stamp.strftime("%Y-%m-%d %H:%M UTC"),
        "sockpool": run.versions()["sockpool"],
        "cores": os.cpu_count(),
        "load_start": load_start,
        "load_end": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "what": what,
        "handler": run.CPU_ECHO if args.scenario == "churn-cpu" else run.ECHO,
    }
    (args.out / "summary.md").write_text(summary(found, cfg, meta))
    print(f"wrote {args.out / 'summary.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
