"""`sockpool --reload=PID`, the units' ExecReload=: check first, then SIGHUP, without kill(1).

The target is a stand-in process that counts the SIGHUPs it gets, run as a script named
sockpool; what a real dispatcher does with one is tested in tests/system (systemctl reload).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import SOCKPOOL

ECHO = "sockpool.handlers:echo"
# Counts SIGHUPs; on SIGTERM prints the count and exits.
TARGET = """
import signal, sys
hups = 0
def hup(*_):
    global hups
    hups += 1
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGTERM, lambda *_: (print(f"hups={hups}", flush=True), sys.exit(0)))
print("ready", flush=True)
while True:
    signal.pause()
"""


def stand_in(directory: Path, name: str = "sockpool") -> subprocess.Popen[str]:
    script = directory / name
    script.write_text(TARGET)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


@pytest.fixture
def target(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = stand_in(tmp_path)
    yield proc
    proc.kill()
    proc.wait()


def sockpool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SOCKPOOL, *args], capture_output=True, text=True, timeout=30)


def hups(target: subprocess.Popen[str]) -> str:
    target.terminate()
    out, _ = target.communicate(timeout=10)
    return out.strip()


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.splitlines()
    return line


def test_a_bad_configuration_fails_the_reload_and_sends_nothing(target) -> None:
    bad = sockpool(f"--reload={target.pid}", "--workers=0", ECHO)
    assert bad.returncode == 78
    assert one_line(bad).startswith("sockpool: ")
    broken = sockpool(f"--reload={target.pid}", "no_such_module_here:handle")
    assert broken.returncode == 78
    good = sockpool(f"--reload={target.pid}", ECHO)
    assert good.returncode == 0, good.stderr
    assert f"sent SIGHUP to {target.pid}" in good.stdout
    assert hups(target) == "hups=1"  # the good one's only


def test_a_full_or_closed_stdout_does_not_stop_the_reload(target) -> None:
    """What it reports is done: the SIGHUP goes, the exit code says so, no traceback."""
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [SOCKPOOL, f"--reload={target.pid}", ECHO],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 0 and result.stderr == ""
    assert hups(target) == "hups=1"


def test_no_such_process() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names nothing now (reuse within the test is unlikely)
    result = sockpool(f"--reload={gone.pid}", ECHO)
    assert result.returncode == 67
    assert one_line(result) == f"sockpool: --reload: no process {gone.pid}"


def test_a_process_that_is_not_sockpool_gets_no_signal(tmp_path: Path) -> None:
    other = stand_in(tmp_path, "something-else")
    try:
        result = sockpool(f"--reload={other.pid}", ECHO)
        assert result.returncode == 67
        assert one_line(result) == (
            f"sockpool: --reload: process {other.pid} is not a sockpool's main process"
        )
        assert hups(other) == "hups=0"
    finally:
        other.kill()
        other.wait()


def test_python_with_options_running_the_module_is_a_sockpool(tmp_path: Path) -> None:
    """`python3 -u -m sockpool` is the same program as the console script."""
    (tmp_path / "sockpool.py").write_text(TARGET)  # the stand-in, as the module
    proc = subprocess.Popen(
        [sys.executable, "-u", "-X", "dev", "-m", "sockpool"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        result = sockpool(f"--reload={proc.pid}", ECHO)
        assert result.returncode == 0, result.stderr
        assert hups(proc) == "hups=1"
    finally:
        proc.kill()
        proc.wait()


def test_a_program_reading_a_file_named_sockpool_gets_no_signal(tmp_path: Path) -> None:
    """`cat ./sockpool` is no sockpool: a SIGHUP would end it."""
    os.mkfifo(tmp_path / "sockpool")  # cat waits for a writer
    cat = subprocess.Popen(["cat", "sockpool"], cwd=tmp_path)
    try:
        result = sockpool(f"--reload={cat.pid}", ECHO)
        assert result.returncode == 67
        assert "is not a sockpool's main process" in one_line(result)
        assert cat.poll() is None
    finally:
        cat.kill()
        cat.wait()


@pytest.mark.parametrize("pid", ["", "0", "1", "-1", "12x", " 42", "\u00b9", str(1 << 64)])
def test_not_a_process_id(pid: str) -> None:
    result = sockpool(f"--reload={pid}", ECHO)
    assert result.returncode == 64
    assert "not a process ID" in one_line(result)
