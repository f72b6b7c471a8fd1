"""The dispatcher's CPU time slice: the shortest the kernel gives, so no handoff waits out a
worker's.

Every connection passes through the dispatcher. While CPU-bound handlers keep every core
busy, a connection that arrives wakes the dispatcher, and Linux's EEVDF scheduler lets the
running worker finish its slice (about 3 ms) first, unless the woken task asked for a
shorter one (sched_setattr's sched_runtime, Linux 6.12 and later). The dispatcher runs for
tens of microseconds a wake-up, so the shortest slice (0.1 ms) costs it nothing, and the
workers lose no share of the CPU: only the moment the dispatcher runs changes. Measured in
bench/ (mixed-cpu-paced): the fast requests' p99 fell from 3.9 to 2.2 ms.

Workers keep the kernel's default slice: CPU-bound handlers run best with it, so a worker
resets its own right after the fork (not SCHED_RESET_ON_FORK, which would also take a
negative `Nice=` away from the workers). An older kernel has no custom slice for normal
tasks and ignores the request. A policy the admin chose (CPUSchedulingPolicy=idle, fifo,
rr) is left as it is. Where the call is denied (a unit's SystemCallFilter= without it) or
unknown (an architecture not listed below), nothing else changes.
"""

from __future__ import annotations

import os
import sys

SHORTEST_NS = 100_000  # the least custom slice the kernel takes (0.1 ms)
DEFAULT_NS = 0  # sched_runtime 0: the kernel's default slice again
# sched_setattr(2) by (uname machine, 64-bit process): glibc 2.36 (Debian 12) has no wrapper.
# From the kernel's headers: asm/unistd_64.h and _32.h, asm-generic/unistd.h.
_SYSCALL = {
    ("x86_64", True): 314,
    ("i686", False): 351,
    ("i386", False): 351,
    ("aarch64", True): 274,
    ("riscv64", True): 274,
    ("loongarch64", True): 274,
}
# Only the fair class has slices; the others are an admin's choice, not ours to change.
FAIR = frozenset({os.SCHED_OTHER, os.SCHED_BATCH})

_shortened = False  # this process asked for SHORTEST_NS and got it


def syscall_number(machine: str, is_64bit: bool) -> int | None:
    return _SYSCALL.get((machine, is_64bit))


def why_not(policy: int, number: int | None) -> str | None:
    """Why the slice is left as it is, or None when it should be shortened."""
    if number is None:
        return "sched_setattr's number is not known on this architecture"
    if policy not in FAIR:
        return "its scheduling policy is not the normal one (CPUSchedulingPolicy=)"
    return None


def shorten() -> str | None:
    """Ask for the shortest slice (the dispatcher, once its first workers are forked):
    None when the kernel took it, else why not, for the debug log."""
    global _shortened
    number = syscall_number(os.uname().machine, sys.maxsize > 2**32)
    try:
        policy = os.sched_getscheduler(0)
        reason = why_not(policy, number)
        if reason is None:
            _set_slice(number, policy, SHORTEST_NS)  # type: ignore[arg-type]
    except OSError as exc:
        return f"sched_setattr failed: {exc.strerror}"
    _shortened = reason is None
    return reason


def reset_in_child() -> None:
    """In a worker just forked: the kernel's default slice again (see above)."""
    if _shortened:
        try:
            number = syscall_number(os.uname().machine, sys.maxsize > 2**32)
            _set_slice(number, os.sched_getscheduler(0), DEFAULT_NS)  # type: ignore[arg-type]
        except OSError:
            pass  # allowed in the dispatcher a moment ago: nothing in between denies it


def _set_slice(number: int, policy: int, runtime_ns: int) -> None:
    """sched_setattr(0, attr, 0) with the process's own policy and nice value, so only the
    slice changes. Raises OSError."""
    import ctypes  # here: only a dispatcher needs it (about 3 ms to import)

    class SchedAttr(ctypes.Structure):  # struct sched_attr, SCHED_ATTR_SIZE_VER0
        _fields_ = [
            ("size", ctypes.c_uint32),
            ("policy", ctypes.c_uint32),
            ("flags", ctypes.c_uint64),
            ("nice", ctypes.c_int32),
            ("priority", ctypes.c_uint32),
            ("runtime", ctypes.c_uint64),
            ("deadline", ctypes.c_uint64),
            ("period", ctypes.c_uint64),
        ]

    nice = os.getpriority(os.PRIO_PROCESS, 0)
    attr = SchedAttr(ctypes.sizeof(SchedAttr), policy, 0, nice, 0, runtime_ns, 0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, 0, ctypes.byref(attr), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
