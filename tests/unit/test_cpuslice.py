"""Which processes ask for a short CPU slice, and what a denied call leaves: the decisions,
without touching the scheduler."""

from __future__ import annotations

import errno
import os

import pytest

from sockpool import cpuslice

OTHER = os.SCHED_OTHER


@pytest.mark.parametrize(
    ("machine", "is_64bit", "number"),
    [
        ("x86_64", True, 314),
        ("aarch64", True, 274),
        ("riscv64", True, 274),
        ("i686", False, 351),
    ],
)
def test_sched_setattr_numbers(machine: str, is_64bit: bool, number: int) -> None:
    assert cpuslice.decide(machine, is_64bit, OTHER) == (number, OTHER, 0)


@pytest.mark.parametrize(("machine", "is_64bit"), [("x86_64", False), ("s390x", True)])
def test_an_architecture_whose_number_is_not_known_is_left_alone(
    machine: str, is_64bit: bool
) -> None:
    """x86_64 with a 32-bit userland could be i386's number or x32's: not ours to guess."""
    assert "architecture" in str(cpuslice.decide(machine, is_64bit, OTHER))


@pytest.mark.parametrize("policy", [os.SCHED_OTHER, os.SCHED_BATCH])
def test_normal_policies_are_shortened_with_their_own_policy(policy: int) -> None:
    assert cpuslice.decide("x86_64", True, policy) == (314, policy, 0)


def test_reset_on_fork_set_by_the_admin_stays_set() -> None:
    """CPUSchedulingResetOnFork=yes: the policy comes with the flag, which a call without
    it would clear."""
    assert cpuslice.decide("x86_64", True, OTHER | os.SCHED_RESET_ON_FORK) == (314, OTHER, 1)


@pytest.mark.parametrize("policy", [os.SCHED_IDLE, os.SCHED_FIFO, os.SCHED_RR])
def test_a_policy_the_admin_chose_is_left_alone(policy: int) -> None:
    assert "CPUSchedulingPolicy=" in str(cpuslice.decide("x86_64", True, policy))


def test_a_denied_call_is_a_reason_and_workers_are_left_alone(monkeypatch) -> None:
    """The unit's SystemCallFilter= denies it (EPERM): the dispatcher logs why and goes on,
    and the workers it forks make no call of their own."""
    calls: list[int] = []

    def denied(how: tuple[int, int, int], runtime_ns: int) -> None:
        calls.append(runtime_ns)
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(cpuslice, "_set_slice", denied)
    monkeypatch.setattr(cpuslice, "_shortened", None)
    assert "Operation not permitted" in (cpuslice.shorten() or "")
    cpuslice.reset_in_child()
    assert calls == [cpuslice.SHORTEST_NS]
