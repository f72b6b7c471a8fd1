"""Which processes ask for a short CPU slice: the decisions, without touching the scheduler."""

from __future__ import annotations

import os

import pytest

from sockpool import cpuslice


@pytest.mark.parametrize(
    ("machine", "is_64bit", "number"),
    [
        ("x86_64", True, 314),
        ("aarch64", True, 274),
        ("riscv64", True, 274),
        ("i686", False, 351),
        ("x86_64", False, None),  # a 32-bit or x32 userland: its number is not ours to guess
        ("s390x", True, None),
    ],
)
def test_sched_setattr_numbers(machine: str, is_64bit: bool, number: int | None) -> None:
    assert cpuslice.syscall_number(machine, is_64bit) == number


@pytest.mark.parametrize("policy", [os.SCHED_OTHER, os.SCHED_BATCH])
def test_normal_policies_are_shortened(policy: int) -> None:
    assert cpuslice.why_not(policy, 314) is None


@pytest.mark.parametrize("policy", [os.SCHED_IDLE, os.SCHED_FIFO, os.SCHED_RR])
def test_a_policy_the_admin_chose_is_left_alone(policy: int) -> None:
    assert "CPUSchedulingPolicy=" in (cpuslice.why_not(policy, 314) or "")


def test_an_unknown_architecture_is_left_alone() -> None:
    assert "architecture" in (cpuslice.why_not(os.SCHED_OTHER, None) or "")
