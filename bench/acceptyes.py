"""systemd's Accept=yes with the same handler: a service instance per connection.

Runs in a real systemd booted in a throw-away container (tests/system/nspawn.py, imported
by path), never on the host's own tree. The container shares the host's network, so the
same load generator drives it from the host on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import loadgen, procfs

REPO = Path(__file__).resolve().parent.parent
NSPAWN = REPO / "tests" / "system" / "nspawn.py"
BENCH_ROOT = "/opt/sockpool-bench"
NAME = "sockpool-bench"
HANDLER = "sockpool.handlers:echo"

SOCKET_UNIT = """\
[Unit]
Description=sockpool bench: Accept=yes echo

[Socket]
ListenStream=127.0.0.1:{port}
Accept=yes
Backlog=4096
MaxConnections=1024
# The default (200 per 2 s for Accept=yes) would put the socket into failed state.
TriggerLimitIntervalSec=1s
TriggerLimitBurst=1000000
"""

SERVICE_UNIT = """\
[Unit]
Description=sockpool bench: Accept=yes echo instance
CollectMode=inactive-or-failed

[Service]
ExecStart=/usr/bin/python3 -m bench.peers.accept_yes {handler}
Environment=PYTHONPATH={root}
StandardInput=socket
StandardOutput=journal
StandardError=journal
"""


def load_nspawn() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sockpool_nspawn", NSPAWN)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {NSPAWN}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def unavailable_reason() -> str | None:
    if not NSPAWN.exists():
        return f"{NSPAWN} not found"
    reason: str | None = load_nspawn().unavailable_reason()
    return reason


def run(
    procs: int, concurrency: int, duration: float, rounds: int, log: Path
) -> list[dict[str, Any]]:
    """rounds of the new-connection echo load against Accept=yes; one record per round."""
    if reason := unavailable_reason():
        raise RuntimeError(f"no container: {reason}")
    nspawn = load_nspawn()
    from bench.run import free_port, one_request

    port = free_port()
    records: list[dict[str, Any]] = []
    t0 = time.monotonic()
    with nspawn.Container(NAME) as box:
        boot_s = time.monotonic() - t0
        box.install_sockpool(REPO)
        box.put_tree(REPO / "bench", f"{BENCH_ROOT}/bench")
        box.put_files(
            {
                "/etc/systemd/system/bench-echo.socket": SOCKET_UNIT.format(port=port),
                "/etc/systemd/system/bench-echo@.service": SERVICE_UNIT.format(
                    handler=HANDLER, root=BENCH_ROOT
                ),
            }
        )
        box.daemon_reload()
        box.systemctl("start", "bench-echo.socket")
        deadline = time.monotonic() + 15
        while not procfs.listening(port):
            if time.monotonic() > deadline:
                raise RuntimeError("bench-echo.socket never listened")
            time.sleep(0.05)
        if not one_request(port, "echo"):
            raise RuntimeError("Accept=yes instance gave a wrong answer")
        for r in range(rounds):
            res = loadgen.run(port, "echo", procs, concurrency, duration, timeout=10)
            rec: dict[str, Any] = {
                "scenario": "newconn-echo",
                "server": "accept-yes",
                "label": "systemd Accept=yes",
                "round": r,
                "container_boot_s": boot_s,
            }
            rec |= dataclasses.asdict(res)
            rec["rps"] = res.conns_per_s
            state = box.systemctl(
                "show", "-p", "NAccepted,NConnections,ActiveState", "bench-echo.socket", check=False
            )
            rec["socket_state"] = " ".join(state.split())
            records.append(rec)
            time.sleep(1.0)  # let the instances of the last round go away
        failed = box.systemctl("list-units", "--failed", "--plain", "--no-legend", check=False)
        with log.open("a") as f:
            f.write(f"\n== accept-yes: failed units after the run:\n{failed}\n")
            journal = box.run(
                "journalctl", "-n", "30", "--no-pager", "-u", "bench-echo@*", check=False
            ).stdout
            f.write(journal)
    return records
