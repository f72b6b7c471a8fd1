"""Telling a hung worker from an OOM kill and from a crash, and reading a worker's vitals.

Stacks: every worker points faulthandler at a memfd the dispatcher made before the fork.
On a crash (SIGSEGV, SIGABRT, ...) faulthandler writes the Python stacks there by itself;
for a hang the dispatcher asks with SIGUSR1. Either way the dispatcher reads the memfd and
puts the stacks in the journal, with the connection's fields: the worker needs neither a
working interpreter loop nor a journal connection for it.
"""

from __future__ import annotations

import contextlib
import os
import signal

DUMP_SIGNAL = signal.SIGUSR1
_PAGE = os.sysconf("SC_PAGE_SIZE")
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}


def new_stack_file(pid_hint: int) -> int:
    return os.memfd_create(f"sockpool-stacks-{pid_hint}", os.MFD_CLOEXEC)


def clear_stacks(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)  # the offset is shared with the worker: it writes at 0


def read_stacks(fd: int, limit: int = 64 * 1024) -> str:
    return os.pread(fd, limit, 0).decode(errors="replace").strip()


def crash_part(stacks: str) -> str:
    """What a crash wrote: faulthandler's report begins "Fatal Python error". Stacks dumped
    before it, by a SIGUSR1 nobody cleared (an admin's), are not the crash's."""
    start = stacks.rfind("Fatal Python error")
    return stacks[start:] if start > 0 else stacks


def rss_mib(pid: int) -> float | None:
    try:
        resident = int(_read(f"/proc/{pid}/statm").split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident * _PAGE / (1 << 20)


def _read(path: str) -> str:
    # Plain open(), not pathlib: pathlib brings urllib.parse and ipaddress to every start.
    with open(path) as f:
        return f.read()


def oom_kills(
    proc_cgroup: str | os.PathLike[str] = "/proc/self/cgroup",
    sysfs: str | os.PathLike[str] = "/sys/fs/cgroup",
) -> int | None:
    """The OOM killer's count for our cgroup (v2 memory.events, or v1 memory.oom_control);
    None where neither can be read (no memory controller of our own, as in some containers)."""
    try:
        lines = _read(os.fspath(proc_cgroup)).splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates.append(os.path.join(sysfs, path.lstrip("/"), "memory.events"))
        elif "memory" in controllers.split(","):
            candidates.append(os.path.join(sysfs, "memory", path.lstrip("/"), "memory.oom_control"))
    for candidate in candidates:
        with contextlib.suppress(OSError, ValueError):
            for line in _read(candidate).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return None


def exit_reason(status: int, killed_for: str, oom_before: int | None, oom_after: int | None) -> str:
    """One word for EXIT_REASON: retired, hung, recycled, oom, crashed, killed or exited."""
    if killed_for:
        return killed_for
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGKILL and oom_before is not None and (oom_after or 0) > oom_before:
            return "oom"
        return "crashed" if sig in _CRASH_SIGNALS else "killed"
    return "exited"
