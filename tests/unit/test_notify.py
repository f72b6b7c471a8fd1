"""sd_notify through a fake NOTIFY_SOCKET: a datagram socket that we read, or do not."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from sockpool import notify
from sockpool.notify import MIN_WATCHDOG_INTERVAL, Notifier, forget_environment

T = TypeVar("T")


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.1)
    yield sock, {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    sock.close()


def received(sock: socket.socket) -> list[str]:
    lines = []
    try:
        while True:
            lines += sock.recv(4096).decode().split("\n")
    except TimeoutError:
        return lines


def test_ready_reload_stop(systemd) -> None:
    sock, env = systemd
    n = Notifier(env)
    n.ready("workers 2/2")
    n.reloading()
    n.stopping("stopping")
    assert received(sock) == [
        "READY=1",
        "STATUS=workers 2/2",
        "RELOADING=1",
        "STATUS=reloading",
        "STOPPING=1",
        "STATUS=stopping",
    ]


def test_status_only_when_changed_and_at_most_once_a_second(systemd) -> None:
    sock, env = systemd
    n = Notifier(env)
    n.tick(100.0, lambda: "a")
    n.tick(100.1, lambda: "b")  # too soon
    n.tick(101.0, lambda: "b")
    n.tick(103.0, lambda: "b")  # unchanged
    assert received(sock) == ["STATUS=a", "STATUS=b"]


def test_watchdog_at_half_the_interval(systemd) -> None:
    sock, env = systemd
    n = Notifier({**env, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_interval == 1.0
    n._last_status = "s"
    for now in (10.0, 10.5, 11.0, 11.9, 12.0):
        n.tick(now, lambda: "s")
    assert received(sock) == ["WATCHDOG=1"] * 3
    assert n.next_due(12.2) == pytest.approx(0.8)


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval == 0
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_interval == 0
    assert Notifier({"WATCHDOG_USEC": "\u00b9"}).watchdog_interval == 0  # a digit, not ASCII
    assert Notifier({"WATCHDOG_USEC": "9" * 5000}).watchdog_interval == 0  # past int()'s limit


def test_a_tiny_watchdog_does_not_become_a_busy_loop() -> None:
    assert Notifier({"WATCHDOG_USEC": "1"}).watchdog_interval == MIN_WATCHDOG_INTERVAL


def test_without_systemd_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled
    n.ready("x")  # no error, no socket


def test_workers_forget_the_notify_socket() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1", "HOME": "/root"}
    forget_environment(env)
    assert env == {"HOME": "/root"}


def test_a_notifier_with_a_target_tells_it_not_systemd(systemd) -> None:
    """A dispatcher under the supervisor: the same assignments, to the main process, and
    its watchdog fed at the interval it was given; systemd hears nothing from it."""
    sock, env = systemd
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.settimeout(0.1)
    with ours, theirs:
        n = Notifier(env, target=theirs, watchdog_interval=0.5)
        n.ready("workers 1/1")
        n.tick(1.0, lambda: "workers 1/1")
        n.round = 3  # the main process asked for reload 3: its state changes say so
        n.reloading()
        assert [ours.recv(4096) for _ in range(3)] == [
            f"{notify.ROUND}=0\nREADY=1\nSTATUS=workers 1/1".encode(),
            b"WATCHDOG=1",
            f"{notify.ROUND}=3\nRELOADING=1\nSTATUS=reloading".encode(),
        ]
        assert n.next_due(1.0) == 0.5
        assert received(sock) == []


def test_an_unhealthy_tick_does_not_feed_the_watchdog(systemd) -> None:
    sock, env = systemd
    n = Notifier({**env, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    n.tick(1.0, lambda: "", healthy=False)
    assert received(sock) == []
    assert n.next_due(1.0) == pytest.approx(notify.RETRY)  # soon: 0 made the loop spin
    n.tick(1.1, lambda: "", healthy=True)
    assert received(sock) == ["WATCHDOG=1"]


def test_an_abstract_notify_socket() -> None:
    name = f"sockpool-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(0.1)
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("x")
        assert received(sock) == ["READY=1", "STATUS=x"]


def test_a_notify_socket_that_is_no_unix_address_is_ignored_as_sd_notify_does() -> None:
    for value in ("relative/notify", "@", "vsock:2:1234"):
        n = Notifier({"NOTIFY_SOCKET": value})
        assert not n.enabled
        n.ready("x")  # no error


def returning(call: Callable[[], T]) -> T:
    """call() in a thread, which must return: libsystemd's sd_notify waited for room."""
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(10)
    assert result, "it waited for room in systemd's queue"
    return result[0]


def fill(n: Notifier) -> int:
    """STATUS= until one finds no room: how many went (net.unix.max_dgram_qlen, 10 or 512)."""

    def until_full() -> int:
        for i in range(100_000):
            if not n.send(f"STATUS={i}"):
                return i
        raise AssertionError("the queue never filled")

    return returning(until_full)


def test_a_full_queue_keeps_a_state_change_and_sends_it_in_order_once_there_is_room(
    systemd,
) -> None:
    sock, env = systemd
    n = Notifier(env)
    went = fill(n)
    returning(lambda: n.ready("r"))
    returning(lambda: n.tick(5.0, lambda: "s"))  # not before READY=1: it waits its turn
    assert received(sock) == [f"STATUS={i}" for i in range(went)]  # systemd reads
    assert n.next_due(5.0) == notify.RETRY
    n.tick(5.1, lambda: "after")
    assert received(sock) == ["READY=1", "STATUS=r", "STATUS=after"]
    assert not n.pending and n.next_due(5.1) == notify.STATUS_INTERVAL


def test_a_skipped_status_and_watchdog_go_at_the_next_try_with_the_figures_of_then(
    systemd,
) -> None:
    sock, env = systemd
    n = Notifier({**env, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    fill(n)
    returning(lambda: n.tick(10.0, lambda: "busy 1"))
    received(sock)
    n.tick(10.0 + notify.RETRY, lambda: "busy 2")
    assert received(sock) == ["WATCHDOG=1", "STATUS=busy 2"]


def test_a_systemd_that_never_reads_costs_a_bounded_memory_and_no_busy_loop(systemd) -> None:
    _, env = systemd
    n = Notifier({**env, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    fill(n)
    for _ in range(notify.MAX_PENDING + 10):
        returning(n.reloading)
    assert len(n.pending) == notify.MAX_PENDING
    returning(lambda: n.tick(20.0, lambda: "s"))
    assert n.next_due(20.0) == notify.RETRY  # not 0, though the watchdog is overdue
