"""The bench's issue 13 scenarios run end to end: every server answers every request right
and each scenario records what its report needs. Speed is never asserted here.

The peers (gunicorn, uvicorn) are bench dependencies (`make bench-deps`): without them this
is skipped. sockpool has rows only once it has --wsgi/--asgi; until then a note says why.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import SOCKPOOL

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(
        shutil.which("systemd-socket-activate") is None or shutil.which("wrk") is None,
        reason="systemd-socket-activate or wrk not installed (scripts/ensure-deps bench)",
    ),
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("gunicorn", "uvicorn", "uvloop")),
        reason="gunicorn or uvicorn[standard] not installed (make bench-deps)",
    ),
]
PEERS = {
    "flask-newconn": {"gunicorn", "gunicorn-gthread"},
    "flask-keepalive": {"gunicorn", "gunicorn-gthread"},
    "starlette": {"uvicorn"},
}


def test_web_scenarios(tmp_path: Path) -> None:
    args = ["--scenarios", ",".join(PEERS), "--rounds", "1", "--duration", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", *args, "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "results.json").read_text())
    helptext = subprocess.run([SOCKPOOL, "--help"], capture_output=True, text=True).stdout
    has = {"--wsgi": "--wsgi" in helptext, "--asgi": "--asgi" in helptext}
    skipped = "\n".join(result["meta"]["skipped"])
    for scenario, peers in PEERS.items():
        flag = "--asgi" if scenario == "starlette" else "--wsgi"
        servers = {r["server"] for r in result["records"] if r["scenario"] == scenario}
        assert servers == peers | ({"sockpool"} if has[flag] else set())
        assert (f"{scenario}, sockpool: this sockpool has no {flag}" in skipped) != has[flag]
    for rec in result["records"]:
        where = f"{rec['scenario']} {rec['server']}"
        assert "error" not in rec, where
        assert rec["failures"] == 0, where
        assert rec["alive"], where
        if rec["scenario"] != "flask-keepalive":  # a new connection per request
            assert rec["close_rps"] > 0, where
        if rec["scenario"] == "flask-newconn":
            assert rec["lg_ok"] > 0, where
        if rec["scenario"] != "flask-newconn":  # 64 keep-alive connections, every one served
            assert rec["req_per_s"] > 0, where
            assert rec["starved"] == 0, where
            # gunicorn's sync workers close every connection; the others keep them open
            assert (rec["server_closes"] > 0) == (rec["server"] == "gunicorn"), where
    text = (tmp_path / "RESULTS.md").read_text()
    assert 'Flask "hello", 64 keep-alive connections' in text
