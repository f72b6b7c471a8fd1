"""sd_notify through a fake NOTIFY_SOCKET, the way python-systemd tests itself."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockpool.notify import MIN_WATCHDOG_INTERVAL, Notifier, forget_environment


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


def test_ready_reload_stop(systemd, monkeypatch) -> None:
    sock, env = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
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


def test_status_only_when_changed_and_at_most_once_a_second(systemd, monkeypatch) -> None:
    sock, env = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    n = Notifier(env)
    n.tick(100.0, lambda: "a")
    n.tick(100.1, lambda: "b")  # too soon
    n.tick(101.0, lambda: "b")
    n.tick(103.0, lambda: "b")  # unchanged
    assert received(sock) == ["STATUS=a", "STATUS=b"]


def test_watchdog_at_half_the_interval(systemd, monkeypatch) -> None:
    sock, env = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
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


def test_a_notifier_with_a_target_tells_it_not_systemd(systemd, monkeypatch) -> None:
    """A dispatcher under the supervisor: the same assignments, to the main process, and
    its watchdog fed at the interval it was given; systemd hears nothing from it."""
    sock, env = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.settimeout(0.1)
    with ours, theirs:
        n = Notifier(env, target=theirs, watchdog_interval=0.5)
        n.ready("workers 1/1")
        n.tick(1.0, lambda: "workers 1/1")
        assert [ours.recv(4096) for _ in range(2)] == [
            b"READY=1\nSTATUS=workers 1/1",
            b"WATCHDOG=1",
        ]
        assert n.next_due(1.0) == 0.5
        assert received(sock) == []


def test_an_unhealthy_tick_does_not_feed_the_watchdog(systemd, monkeypatch) -> None:
    sock, env = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    n = Notifier({**env, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    n.tick(1.0, lambda: "", healthy=False)
    assert received(sock) == []
    n.tick(1.1, lambda: "", healthy=True)
    assert received(sock) == ["WATCHDOG=1"]
