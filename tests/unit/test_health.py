"""Telling hangs, OOM kills and crashes apart; stacks from a live process via faulthandler."""

from __future__ import annotations

import faulthandler
import os
import signal
import time
from pathlib import Path

import pytest

from sockpool import health


@pytest.mark.parametrize(
    ("status", "killed_for", "before", "after", "reason"),
    [
        (signal.SIGKILL, "hung", 0, 0, "hung"),
        (signal.SIGKILL, "", 2, 3, "oom"),
        (signal.SIGKILL, "", 2, 2, "killed"),
        (signal.SIGKILL, "", None, None, "killed"),  # no counter to read: no guess
        (signal.SIGSEGV | 0x80, "", 0, 0, "crashed"),
        (signal.SIGABRT, "", 0, 0, "crashed"),
        (0, "retired", 0, 0, "retired"),
        (1 << 8, "", 0, 0, "exited"),
    ],
)
def test_exit_reason(status: int, killed_for: str, before, after, reason: str) -> None:
    assert health.exit_reason(status, killed_for, before, after) == reason


def test_oom_counter_cgroup_v2(tmp_path: Path) -> None:
    (tmp_path / "proc").write_text("0::/system.slice/sockpool@web.service\n")
    unit = tmp_path / "sys" / "system.slice" / "sockpool@web.service"
    unit.mkdir(parents=True)
    (unit / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    assert health.oom_kills(tmp_path / "proc", tmp_path / "sys") == 2


def test_oom_counter_cgroup_v1(tmp_path: Path) -> None:
    (tmp_path / "proc").write_text(
        "12:cpu,cpuacct:/x\n4:memory:/system.slice/a.service\n0::/system.slice/a.service\n"
    )
    unit = tmp_path / "sys" / "memory" / "system.slice" / "a.service"
    unit.mkdir(parents=True)
    (unit / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n")
    assert health.oom_kills(tmp_path / "proc", tmp_path / "sys") == 7


def test_no_memory_controller(tmp_path: Path) -> None:
    (tmp_path / "proc").write_text("0::/\n")
    assert health.oom_kills(tmp_path / "proc", tmp_path / "sys") is None


def test_rss_of_a_live_and_a_missing_process() -> None:
    assert health.rss_mib(os.getpid()) > 1
    assert health.rss_mib(2**22 + 12345) is None


def waiting_in_a_named_function(ready: int) -> None:
    """Says so from inside: signalled between a write before the call and the call, the
    stacks would show only the caller's line."""
    os.write(ready, b".")
    while True:
        time.sleep(0.01)


def test_stacks_of_a_busy_process_on_request() -> None:
    stacks = health.new_stack_file(0)
    registered_r, registered_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        faulthandler.register(health.DUMP_SIGNAL, file=stacks, all_threads=True)
        waiting_in_a_named_function(registered_w)  # not signalled before: it would be killed
    try:
        os.close(registered_w)
        assert os.read(registered_r, 1) == b"."
        health.clear_stacks(stacks)
        os.kill(pid, health.DUMP_SIGNAL)
        deadline = time.monotonic() + 5
        while "waiting_in_a_named_function" not in health.read_stacks(stacks):
            assert time.monotonic() < deadline, health.read_stacks(stacks)
            time.sleep(0.02)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(stacks)
        os.close(registered_r)


def test_a_crash_report_leaves_out_stacks_dumped_before_it() -> None:
    """An admin's SIGUSR1 to a worker dumps its stacks where nobody clears them; a crash
    later writes its report after them."""
    stacks = health.new_stack_file(0)
    pid = os.fork()
    if pid == 0:
        faulthandler.register(health.DUMP_SIGNAL, file=stacks, all_threads=True)
        faulthandler.enable(file=stacks, all_threads=True)
        faulthandler.dump_traceback(file=stacks)  # as a SIGUSR1 would
        os.abort()
    try:
        os.waitpid(pid, 0)
        assert health.read_stacks(stacks).count("most recent call first") == 2
        report = health.crash_part(health.read_stacks(stacks))
        assert report.startswith("Fatal Python error: Aborted")
        assert report.count("most recent call first") == 1
    finally:
        os.close(stacks)
