"""The benchmark harness runs end to end in seconds and produces well-formed results.

Speed is never asserted here: only that every server answered every request right.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed"
)


def test_bench_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "results.json").read_text())
    meta, records = result["meta"], result["records"]
    assert meta["smoke"] is True
    assert meta["machine"]["cores"] >= 1
    assert {"sockpool", "python", "systemd"} <= set(meta["versions"])
    seen = {(r["scenario"], r["server"]) for r in records}
    assert seen == {
        (scenario, server)
        for scenario in ("newconn-echo", "newconn-http")
        for server in ("sockpool", "prefork")
    }
    for rec in records:
        where = f"{rec['scenario']} {rec['server']}"
        assert "error" not in rec, where
        assert rec["failures"] == 0, (where, rec["failure_kinds"])
        assert rec["ok"] > 0, where
        assert rec["rps"] > 0, where
        assert 0 < rec["p50_ms"] <= rec["p99_ms"] <= rec["p999_ms"] <= rec["max_ms"], where
        assert rec["pss_kib"] > 0, where
        assert rec["alive"], where
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Targets" in text
    assert "New connection per request, echo" in text
