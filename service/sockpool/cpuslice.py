"""The dispatcher's CPU time slice: the shortest the kernel gives, so no handoff waits out a
worker's.

Every connection passes through the dispatcher. While CPU-bound handlers keep every core
busy, a connection that arrives wakes the dispatcher, and Linux's EEVDF scheduler lets the
running worker finish its slice first (0.7 ms times 1 + log2 of the CPUs, at most 8: 1.4 ms
on 2 cores, 2.8 ms from 8), unless the woken task asked for a shorter one (sched_setattr's
sched_runtime, Linux 6.12 and later). The dispatcher runs for tens of microseconds a
wake-up, so the shortest slice (0.1 ms) costs it nothing, and the workers lose no share of
the CPU: only the moment the dispatcher runs changes. Measured in bench/ (mixed-cpu-paced):
the fast requests' p99 fell from 3.9 to 2.2 ms.

Workers keep the kernel's default slice: CPU-bound handlers run best with it, so a worker
resets its own right after the fork (not with SCHED_FLAG_RESET_ON_FORK, which would also
take a negative `Nice=` away from the workers). A kernel before 6.12 takes the call and
changes nothing. A policy the admin chose (CPUSchedulingPolicy=idle, fifo, rr) is left as it
is. A call the unit's SystemCallFilter= denies fails with SystemCallErrorNumber= (EPERM in
the shipped units) and changes nothing either. Without that setting systemd kills the
process that makes it (SIGSYS): so under any seccomp filter the call is made in a child
first, and only if that child lives, in the dispatcher.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from typing import Any

SHORTEST_NS = 100_000  # the least custom slice the kernel takes (0.1 ms)
DEFAULT_NS = 0  # sched_runtime 0: the kernel's default slice again
_RESET_ON_FORK = 0x01  # SCHED_FLAG_RESET_ON_FORK: kept as the admin set it (flags 0 clears it)
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

# (syscall number, policy, flags) once this process has asked for SHORTEST_NS: its workers
# ask for the default with the same.
_shortened: tuple[int, int, int] | None = None


def decide(machine: str, is_64bit: bool, policy: int) -> tuple[int, int, int] | str:
    """What sched_setattr needs (number, policy, flags) to shorten the slice of a process
    with this scheduling policy (sched_getscheduler's), or why it is left as it is."""
    number = _SYSCALL.get((machine, is_64bit))
    if number is None:
        return "sched_setattr's number is not known on this architecture"
    flags = _RESET_ON_FORK if policy & os.SCHED_RESET_ON_FORK else 0
    policy &= ~os.SCHED_RESET_ON_FORK
    if policy not in FAIR:
        return "its scheduling policy is not the normal one (CPUSchedulingPolicy=)"
    return number, policy, flags


def shorten() -> str | None:
    """Ask for the shortest slice (the dispatcher): None once the call succeeded, else why
    not, for the debug log. Never raises: it is worth a few microseconds, not a failure."""
    global _shortened
    try:
        how = decide(os.uname().machine, sys.maxsize > 2**32, os.sched_getscheduler(0))
        if isinstance(how, str):
            return how
        if _filtered() and not _survives(how):
            return "the unit's SystemCallFilter= kills a process that calls it"
        _set_slice(how, SHORTEST_NS)
    except (OSError, ImportError, AttributeError) as exc:
        return f"sched_setattr failed: {exc}"
    _shortened = how
    return None


def reset_in_child() -> None:
    """In a worker just forked: the kernel's default slice again (see above)."""
    if _shortened is not None:  # allowed in the dispatcher: nothing in between denies it
        with contextlib.suppress(OSError, ImportError, AttributeError):
            _set_slice(_shortened, DEFAULT_NS)


def _filtered() -> bool:
    """A seccomp filter is on (the unit's SystemCallFilter=): it may kill the caller."""
    try:
        with open("/proc/self/status") as status:
            return any(line.split() == ["Seccomp:", "2"] for line in status)
    except OSError:
        return True  # cannot tell: take the safe way


def _survives(how: tuple[int, int, int]) -> bool:
    """Whether a child that makes the call lives (it may fail with an error: that is for
    the dispatcher's own call to find out). The child dumps no core when killed."""
    pid = os.fork()
    if pid == 0:
        try:
            import ctypes

            ctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE 0: no core, no coredump record
            _set_slice(how, SHORTEST_NS)
        finally:
            os._exit(0)
    return not os.WIFSIGNALED(os.waitpid(pid, 0)[1])


def _set_slice(how: tuple[int, int, int], runtime_ns: int) -> None:
    """sched_setattr(0, attr, 0) with the process's own policy, flags and nice value, so
    only the slice changes. Raises OSError."""
    import ctypes  # here: only a dispatcher needs it (about 3 ms to import)

    number, policy, flags = how
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    attr = _sched_attr()(48, policy, flags, nice, 0, runtime_ns, 0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, 0, ctypes.byref(attr), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@functools.cache
def _sched_attr() -> Any:
    """struct sched_attr as far as SCHED_ATTR_SIZE_VER0 (48 bytes)."""
    import ctypes

    class SchedAttr(ctypes.Structure):
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

    return SchedAttr
