"""The bench's issue 14 scenarios and profile run end to end and record what the report
needs; the one-dispatcher projection says what its formula says. Speed is never asserted
here: only that every server answered every request right and each figure is there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.run import PACED_RATE, sockpool_has

REPO = Path(__file__).resolve().parents[2]

needs_activate = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed"
)
SERVERS = {
    "newconn-echo-2w": {"sockpool", "prefork", "plainloop"},
    "churn-cpu": {"sockpool", "prefork", "plainloop"},
    "ceiling": {"sockpool", "plainloop"},
    "newconn-http": {"sockpool", "prefork", "plainloop"},
    "mixed-cpu": {"sockpool-async", "sockpool-pull", "prefork-async"},
    "mixed-cpu-paced": {"sockpool-async", "sockpool-pull", "prefork-async"},
}
DISPATCHERS = {"sockpool", "plainloop", "sockpool-async", "sockpool-pull"}


def bench(tmp_path: Path, *args: str, module: str = "bench.run") -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args, "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_activate
def test_issue14_scenarios(tmp_path: Path) -> None:
    servers = ",".join(set().union(*SERVERS.values()))
    args = ["--scenarios", ",".join(SERVERS), "--servers", servers, "--no-container"]
    bench(tmp_path, *args, "--rounds", "1", "--duration", "1")
    records = json.loads((tmp_path / "results.json").read_text())["records"]
    for scenario, expected in SERVERS.items():
        assert {r["server"] for r in records if r["scenario"] == scenario} == expected
    for rec in records:
        where = f"{rec['scenario']} {rec['server']}"
        assert "error" not in rec, (where, rec.get("error"))
        assert rec["failures"] == 0, (where, rec["failure_kinds"])
        assert rec["ok"] > 0 and rec["alive"], where
        # Every server's workers did the work, measured from /proc.
        assert rec["workers_cpu_us_per_conn"] > 0, where
        if rec["server"] in DISPATCHERS:
            assert rec["main_cpu_us_per_conn"] > 0, where
            assert rec["ceiling_conns_per_s"] > 0, where
        if rec["scenario"] in ("newconn-echo-2w", "churn-cpu"):
            assert rec["workers"] == 2, where
        if rec["scenario"].startswith("mixed-cpu"):  # both kinds of request were answered
            assert 0 < rec["fast_p99_ms"] <= rec["max_ms"], where
        if rec["scenario"] == "mixed-cpu-paced":  # an open loop, at the rate it asked for
            assert rec["rate"] == PACED_RATE, where
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Issue 14 targets" in text
    assert "0.5 ms of CPU then echo, 2 workers" in text


def test_profile_takes_only_the_dispatchers_it_can_drive() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.profile", "--scenario", "churn-cpu", "--servers", "prefork"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].endswith(
        "unknown servers: prefork "
        "(from: sockpool, sockpool-aw, sockpool-qa0, sockpool-qa3, plainloop)"
    )


def test_turns_traces_whole_turns_of_churn() -> None:
    """bench.turns counts the Python of whole turns: each finishes one connection, which it
    checks itself (exit 1 otherwise), with the hot path's steps in its table."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.turns", "--turns", "50"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.rsplit(None, 1)[-1]: line.split()[:2] for line in proc.stdout.splitlines()[2:]}
    for step in ("HotPath.timeout", "HotPath.accept", "HotPath._send_one", "HotPath._finished"):
        assert float(rows[step][0]) == 1.0, step  # once per turn
    calls, bytecodes = map(float, rows["all"])
    assert calls > 10 and bytecodes > calls


@needs_activate
def test_dispatchers_two_is_measured_or_skipped_with_a_note(tmp_path: Path) -> None:
    args = ["--scenarios", "newconn-echo", "--servers", "sockpool,sockpool-d2"]
    bench(tmp_path, *args, "--rounds", "1", "--duration", "1", "--no-container")
    result = json.loads((tmp_path / "results.json").read_text())
    servers = {r["server"] for r in result["records"] if not r.get("error")}
    note = "newconn-echo, sockpool: this sockpool has no --dispatchers"
    has = sockpool_has("--dispatchers")
    assert servers == ({"sockpool", "sockpool-d2"} if has else {"sockpool"})
    assert any(s.startswith(note) for s in result["meta"]["skipped"]) != has


def test_projection_caps_the_pool_where_the_dispatcher_runs_out() -> None:
    # A dispatcher at 50 µs/conn passes 20,000 conns/s; workers at 150 µs/conn need 3 cores
    # for that, so one dispatcher is the limit from 4 cores on.
    pr = report.Projection(dispatcher_us=50, workers_us=150)
    assert pr.ceiling == 20_000
    assert pr.cap_cores == 4
    assert pr.conns_per_s(2) == 10_000  # 2 cores at 200 µs per connection
    assert pr.conns_per_s(16) == 20_000
    assert pr.dispatchers_for(16) == 4
    assert pr.conns_per_s(16, dispatchers=4) == 80_000
    assert pr.dispatchers_for(64) == 16


def test_projection_table_from_a_run() -> None:
    def rec(scenario: str, server: str, **figures: float) -> dict[str, object]:
        return {"scenario": scenario, "server": server, "round": 0, "ok": 1} | figures

    records = [
        rec("ceiling", "sockpool", main_cpu_us_per_conn=50.0),
        rec("ceiling", "plainloop", main_cpu_us_per_conn=25.0),
        rec("newconn-echo", "sockpool", workers_cpu_us_per_conn=150.0),
        rec("flask-newconn", "gunicorn", lg_workers_cpu_us_per_conn=750.0),
    ]
    lines = report.projection_table(report.aggregate(records))
    body = [line.split(" | ") for line in lines[2:]]
    assert len(body) == 4  # echo and Flask, each under both dispatchers
    echo = body[0]
    assert echo[0].startswith("| echo (sockpool's workers")
    assert echo[4:7] == ["20,000", "4.0", "20,000 (dispatcher)"]
    flask_plain = body[3]
    assert flask_plain[0].startswith("| Flask (gunicorn sync's workers")
    # 775 µs per connection on 16 cores: 20,645 conns/s, under the plain loop's 40,000.
    assert flask_plain[6:8] == ["20,645 (cores)", "1"]


@needs_activate
@pytest.mark.skipif(
    not (Path(sys.executable).parent / "py-spy").exists() or shutil.which("perf") is None,
    reason="py-spy (make bench-deps) or perf (linux-perf) not installed",
)
def test_profile(tmp_path: Path) -> None:
    bench(tmp_path, "--duration", "1", "--workers", "2", module="bench.profile")
    assert (tmp_path / "sockpool-dispatcher.svg").read_text().lstrip().startswith("<?xml")
    for server in ("sockpool", "plainloop"):
        top = (tmp_path / f"{server}-dispatcher-top.txt").read_text()
        assert "samples of the dispatcher at work" in top
        for role in ("dispatcher", "workers"):
            assert "[kernel.kallsyms]" in (tmp_path / f"{server}-{role}-perf-top.txt").read_text()
    summary = (tmp_path / "summary.md").read_text()
    assert "## plain loop (accept/send_fds/close): where the workers' CPU goes (perf)" in summary
    # The plain loop's dispatcher accepts and passes on every connection itself.
    rows = [line.split(" | ") for line in summary.splitlines() if line.startswith("| dispatcher")]
    calls = {row[1] for row in rows if row[3].strip()}  # a count in the plain loop's column
    assert {"accept4", "sendmsg", "close"} <= calls
