"""What the harness reads from /proc: CPU time, PSS, process trees, listening ports."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # comm (field 2) may hold spaces and parentheses: split after its last ")".
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """user+system CPU time of one process (not its children), from /proc/PID/stat."""
    f = _stat_fields(pid)
    # After comm, f[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(f[11]) + int(f[12])) / CLK_TCK


def run_ns(pid: int) -> int:
    """Time on CPU in nanoseconds from /proc/PID/schedstat (finer than the tick counts)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def ppid(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def descendants(root: int) -> list[int]:
    """root and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            parents.setdefault(ppid(int(entry.name)), []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    out = [root]
    i = 0
    while i < len(out):
        out.extend(parents.get(out[i], []))
        i += 1
    return out


def pss_kib(pid: int) -> int:
    """Proportional set size in KiB, from /proc/PID/smaps_rollup (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    """Resident set size in KiB, from /proc/PID/status (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def listening(port: int, host_hex: str = "0100007F") -> bool:
    """Whether 127.0.0.1:port is in LISTEN state (/proc/net/tcp), without connecting."""
    want = f"{host_hex}:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        f = line.split()
        if f[1] == want and f[3] == "0A":
            return True
    return False
