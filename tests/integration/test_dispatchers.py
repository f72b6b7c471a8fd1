"""`dispatchers = 2` under the real systemd-socket-activate: one main process, two
dispatchers accepting from the same socket, each with its share of the workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import (
    SOCKPOOL,
    Load,
    connect,
    cpu_seconds,
    free_port,
    proc_stat,
    request,
    wait_until,
)

ECHO = "sockpool.handlers:echo"
ECHO_ASYNC = "sockpool.handlers:echo_async"
ECHO_SLOW_ASYNC = "apps:async_slow_echo"  # says "+" once in a worker's hands


def tcp() -> str:
    return f"127.0.0.1:{free_port()}"


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def parent(pid: int) -> int:
    return int(proc_stat(pid)[1])


def alive(pid: int) -> bool:
    try:
        return proc_stat(pid)[0] != "Z"
    except FileNotFoundError:
        return False


def two_dispatchers(serve, *args: str, workers: int = 4, **kw):
    service = serve([f"--workers={workers}", "--dispatchers=2", *args], listen=[tcp()], **kw)
    dispatchers = wait_until(lambda: len(service.workers()) == 2 and service.workers(), "two")
    shares = wait_until(
        lambda: (
            sorted(len(children(d)) for d in dispatchers) == [workers // 2, workers - workers // 2]
        ),
        "each dispatcher's share of the workers",
    )
    assert shares
    return service, dispatchers


def test_serves_with_two_dispatchers_and_sums_their_status(serve) -> None:
    service, dispatchers = two_dispatchers(serve, ECHO, workers=5)
    assert sorted(len(children(d)) for d in dispatchers) == [2, 3]
    for n in range(6):
        assert request(service.address, f"hello {n}".encode()) == f"hello {n}".encode()
    wait_until(
        lambda: any(
            s.startswith("STATUS=workers 5/5, busy 0, parked 0, served 6, refused 0")
            and s.endswith(", dispatchers 2/2")
            for s in service.statuses()
        ),
        "the summed STATUS",
    )
    log = service.output()
    # The lifecycle records come once, from the main process.
    assert log.count("started: ") == 1 and "5 workers in 2 dispatchers" in log
    assert log.count("ready: ") == 1 and f"sockpool[{service.pid}] INFO: ready:" in log
    assert service.read_notifications().count("READY=1") == 1


@dataclass
class ByDispatcher(Load):
    """Load's clients of apps:whoami, whose answer names the worker that served it: counted
    by that worker's dispatcher. An answer that names one stands for the echo Load checks."""

    def _exchange(self, payload: bytes) -> bytes:
        answer = request(self.address, payload, self.timeout)
        words = answer.split()
        if len(words) < 3 or not words[2].isdigit():
            return answer
        self._served_by(parent(int(words[2])))
        return payload


def test_a_refusal_is_logged_as_one_dispatchers_share_of_the_limit(serve) -> None:
    """max_connections = 2 over two dispatchers is one each: what a dispatcher logs about
    its refusals says it is its share, not the limit the admin set."""
    service, _ = two_dispatchers(
        serve, "--max-connections=2", "--overload-reply=busy", "apps:slow_echo", workers=2
    )
    held, refused = [], 0
    while not refused:  # each one either holds a place or is refused: three fill both
        sock = connect(service.address)
        if sock.recv(5) == b"+":
            held.append(sock)
        else:
            refused += 1
            sock.close()
    wait_until(lambda: "refused 1 connections over the limits" in service.output(), "the log")
    assert (
        "(max_connections=1, max_connections_per_source=0 in this dispatcher, one of 2;"
        in service.output()
    )
    for sock in held:
        sock.close()


def test_max_connections_is_the_services_not_one_dispatchers(serve) -> None:
    """A dispatcher at its share (3 of 6) leaves new connections to the other one, rather
    than refuse them with 3 in flight: here while that one is stopped (SIGSTOP), so the
    first always gets them. All 6 are served; only the 7th is refused."""
    service, dispatchers = two_dispatchers(
        serve, "--max-connections=6", "--overload-reply=busy", ECHO_SLOW_ASYNC, workers=2
    )
    everyone = [*dispatchers, *(w for d in dispatchers for w in children(d))]
    wait_until(  # the activating connection gone: it would count against a share
        lambda: not any(service.connections_held(pid) for pid in everyone), "nothing held"
    )
    os.kill(dispatchers[1], signal.SIGSTOP)
    try:
        held = [connect(service.address) for _ in range(3)]
        assert [sock.recv(5) for sock in held] == [b"+"] * 3  # the first one's share
        held.append(connect(service.address))  # waits in the backlog for the other
        cpu = cpu_seconds(dispatchers[0])
        time.sleep(1)  # meanwhile it leaves that backlog alone, and does not spin over it
        assert cpu_seconds(dispatchers[0]) - cpu < 0.3
    finally:
        os.kill(dispatchers[1], signal.SIGCONT)
    assert held[-1].recv(5) == b"+"  # not b"busy\n"
    held += [connect(service.address) for _ in range(2)]
    assert [sock.recv(5) for sock in held[4:]] == [b"+"] * 2
    extra = connect(service.address)
    assert extra.recv(5) == b"busy\n"  # every share is full
    for sock in [extra, *held]:
        sock.close()


def test_both_dispatchers_accept_under_load(serve) -> None:
    """Connections from 8 concurrent clients, each answered by a worker that names itself:
    the workers of both dispatchers answer (EPOLLEXCLUSIVE wakes one dispatcher a
    connection, not always the same one)."""
    service, dispatchers = two_dispatchers(serve, "apps:whoami")
    with ByDispatcher(service.address, clients=8, limit=150) as load:
        load.join()
    print(f"\nconnections per dispatcher: {dict(load.served)}")
    assert load.ok == 1200, load.summary()
    assert set(load.served) == set(dispatchers), load.served


def test_a_busy_dispatcher_leaves_new_connections_to_an_idle_one(serve) -> None:
    """One worker each: while the first connection holds one dispatcher's only worker, the
    next is served by the other dispatcher's at once, not after the first one ends (with
    EPOLLEXCLUSIVE the busy dispatcher, asleep in epoll_wait, took its wake-up: 3 of 5
    such second connections waited)."""
    service, _ = two_dispatchers(serve, "apps:slow_echo", workers=2)
    for _ in range(5):
        with connect(service.address) as first, connect(service.address) as second:
            assert first.recv(1) == b"+"  # in a worker's hands, and holding it
            assert second.recv(1) == b"+"  # in the other worker's
            for sock in (first, second):
                sock.sendall(b"done\n")
                assert sock.recv(10) == b"done\n"
        # Both workers free again (each dispatcher's STATUS says busy 0 in the sum).
        wait_until(lambda: "busy 0," in service.statuses()[-1], "both workers free")


# `pull`: each dispatcher feeds only its own workers' waiting loops (pull.py).
@pytest.mark.parametrize("args", [[ECHO], ["--pull", ECHO_ASYNC]], ids=["sync", "async-pull"])
def test_reload_under_load_loses_nothing(serve, args: list[str]) -> None:
    service, dispatchers = two_dispatchers(serve, *args)
    first = {w for d in dispatchers for w in children(d)}
    with Load(service.address, clients=6) as load:
        load.progress(100)
        service.signal(signal.SIGHUP)
        service.wait_for("RELOADING=1")
        wait_until(lambda: "reloaded: 2 dispatchers serve" in service.output(), "the reload")
        load.progress(200)
    assert load.done and load.refused == load.reset == load.wrong == 0, load.summary()
    assert service.read_notifications().count("READY=1") == 2
    assert service.workers() == dispatchers  # the same dispatchers, new workers
    wait_until(lambda: sum(len(children(d)) for d in dispatchers) == 4, "the old workers to drain")
    assert not first & {w for d in dispatchers for w in children(d)}
    log = service.output()
    assert log.count("reloading: re-reading") == 1 and log.count("reloaded: ") == 1


def test_reload_to_fewer_workers_than_dispatchers_keeps_one_each(serve, tmp_path: Path) -> None:
    """The dispatcher count changes on restart, not on reload: a reload serves on with
    what it cannot apply, as --reload's check (which cannot see the count) said it would."""
    config = tmp_path / "c.toml"
    config.write_text(f'handler = "{ECHO}"\nworkers = 4\ndispatchers = 2\n')
    service = serve([f"--config={config}"], listen=[tcp()])
    config.write_text(f'handler = "{ECHO}"\nworkers = 1\n')
    check = subprocess.run(
        [SOCKPOOL, f"--reload={service.pid}", f"--config={config}"], capture_output=True
    )
    assert check.returncode == 0, check.stderr
    wait_until(lambda: "reloaded: 2 dispatchers serve" in service.output(), "the reload")
    assert "reload failed" not in service.output()
    assert "workers: 1 is fewer than the 2 dispatchers running: 2 workers" in service.output()
    wait_until(lambda: [len(children(d)) for d in service.workers()] == [1, 1], "one each")
    assert request(service.address, b"still here") == b"still here"


def test_a_dispatcher_that_dies_after_a_failed_reload_comes_back_with_what_serves(
    serve, tmp_path: Path
) -> None:
    """Not with the handler that failed: its workers would never start, it would exit 70,
    and the main process would stop the service."""
    config = tmp_path / "c.toml"
    config.write_text('handler = "apps:whoami"\nworkers = 2\ndispatchers = 2\n')
    service = serve([f"--config={config}"], listen=[tcp()])
    first = wait_until(lambda: len(service.workers()) == 2 and service.workers(), "two")
    config.write_text('handler = "broken_app:handle"\nworkers = 2\ndispatchers = 2\n')
    service.signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in service.output(), "the reload to fail", timeout=30)
    os.kill(first[0], signal.SIGKILL)
    [restarted] = wait_until(
        lambda: len(service.workers()) == 2 and set(service.workers()) - set(first),
        "the dispatcher's restart",
    )

    def served_by_the_restarted() -> bool:
        words = request(service.address, b"who?\n").split()
        return len(words) > 2 and words[2].isdigit() and parent(int(words[2])) == restarted

    wait_until(served_by_the_restarted, "an answer from the restarted dispatcher's worker")
    assert service.proc.poll() is None


def test_sigterm_drains_in_flight_connections(serve) -> None:
    service, _ = two_dispatchers(serve, "--capacity=50", "apps:async_slow_echo", workers=2)
    clients = [connect(service.address) for _ in range(20)]
    assert [c.recv(1) for c in clients] == [b"+"] * 20  # all in workers' hands
    for i, c in enumerate(clients):
        c.sendall(f"in flight {i}\n".encode())
    service.signal(signal.SIGTERM)
    for i, c in enumerate(clients):
        assert c.recv(100) == f"in flight {i}\n".encode()  # answered in full, not reset
        assert c.recv(100) == b""
        c.close()
    assert service.wait() == 0
    assert "STOPPING=1" in service.read_notifications()
    log = service.output()
    assert log.count("stopping on SIGTERM: draining") == 1
    assert "stopped: 2 dispatchers exited" in log


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_one_stop_to_every_process_drains_what_is_in_flight(serve, signum: int) -> None:
    """A terminal's Ctrl-C, or systemctl kill (a stop under KillMode=control-group), signals
    every process: the main process stops the dispatchers, which also got the signal. A
    dispatcher took the terminal's SIGINT after the main's SIGTERM for a second Ctrl-C,
    and later (d937502) a second SIGTERM, and killed its workers: tried thrice, as the
    order varies."""
    for _ in range(3):
        service, _ = two_dispatchers(serve, "apps:slow_echo", workers=2)
        client = connect(service.address)
        assert client.recv(1) == b"+"  # in a worker's hands
        client.sendall(b"in flight\n")
        os.killpg(service.pid, signum)
        assert client.recv(100) == b"in flight\n"
        client.close()
        assert service.wait() == 0
        assert "killing" not in service.output()


def test_a_second_ctrl_c_stops_waiting(serve) -> None:
    """The main process tells the dispatchers over their socketpair (they leave the
    terminal's SIGINT to it): they stop waiting for what is in flight."""
    service, _ = two_dispatchers(serve, "--graceful-timeout=300", "apps:slow_echo", workers=2)
    client = connect(service.address)
    assert client.recv(1) == b"+"  # in a worker's hands, and it will not finish
    os.killpg(service.pid, signal.SIGINT)
    wait_until(lambda: "stopping on SIGINT" in service.output(), "the stop")
    os.killpg(service.pid, signal.SIGINT)
    assert service.wait() == 0  # not after graceful_timeout's 300 s
    client.close()


def test_a_reload_that_turns_proxy_off_puts_back_systemds_accept(serve, tmp_path) -> None:
    """A PROXY listener's TCP_DEFER_ACCEPT holds a connection until it speaks, up to
    proxy_timeout. A dispatcher started while its sibling had set it took that for
    systemd's setting, and a reload that turned PROXY off put it back: a handler that
    speaks first then greeted every client proxy_timeout late, until a restart. Both are
    restarted here, each while the other has it set."""
    config = tmp_path / "proxy.toml"
    text = 'handler = "apps:slow_echo"\nproxy_timeout = 10\n[listeners.edge]\n'
    config.write_text(text + 'proxy_protocol = "v1"\n')
    service, dispatchers = two_dispatchers(serve, f"--config={config}", workers=2, fdnames=["edge"])
    for victim in dispatchers:
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda v=victim: len(service.workers()) == 2 and v not in service.workers(),
            "another dispatcher",
        )
        wait_until(lambda: all(children(d) for d in service.workers()), "its worker")
    config.write_text(text)
    service.signal(signal.SIGHUP)
    wait_until(lambda: "reloaded: 2 dispatchers serve" in service.output(), "the reload")
    with connect(service.address) as sock:
        sock.settimeout(5)  # half proxy_timeout: the greeting comes at once, or then
        assert sock.recv(1) == b"+"


def test_killed_dispatcher_is_restarted_and_the_service_keeps_serving(serve) -> None:
    service, dispatchers = two_dispatchers(serve, ECHO)
    victim = dispatchers[0]
    orphans = children(victim)
    with Load(service.address, clients=6) as load:
        load.progress(100)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(service.workers()) == 2 and victim not in service.workers(),
            "another dispatcher",
        )
        wait_until(lambda: "dispatchers 2/2" in service.statuses()[-1], "both ready again")
        load.progress(200)
    # Only what the killed dispatcher held (accepted, not yet handed over) may be cut.
    assert load.refused == load.mismatched == 0, load.summary()
    assert "dispatcher 0 killed by signal SIGKILL; starting another" in service.output()
    wait_until(lambda: not any(alive(w) for w in orphans), "its workers to leave")
    assert request(service.address, b"after") == b"after"


def test_watchdog_is_fed_only_while_every_dispatcher_feeds_its_own(serve) -> None:
    service, dispatchers = two_dispatchers(serve, ECHO, workers=2, env={"WATCHDOG_USEC": "200000"})

    def fed() -> int:
        return service.read_notifications().count("WATCHDOG=1")

    wait_until(lambda: fed() >= 3, "WATCHDOG=1 x3")
    os.kill(dispatchers[1], signal.SIGSTOP)  # it stops feeding; its loop looks hung
    try:
        quiet = {"count": fed(), "since": time.monotonic()}

        def silent_for_a_while() -> bool:
            if (now := fed()) != quiet["count"]:
                quiet.update(count=now, since=time.monotonic())
            return time.monotonic() - quiet["since"] > 1.0  # five of systemd's intervals

        wait_until(silent_for_a_while, "the main process to stop feeding systemd")
    finally:
        os.kill(dispatchers[1], signal.SIGCONT)
    before = fed()
    wait_until(lambda: fed() >= before + 3, "feeding again")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SOCKPOOL, *args], capture_output=True, text=True, timeout=60)


def test_check_accepts_dispatchers_and_refuses_bad_values(tmp_path: Path) -> None:
    assert run("--check", "--workers=2", "--dispatchers=2", ECHO).returncode == 0
    assert run("--check", "--dispatchers=auto", ECHO).returncode == 0
    config = tmp_path / "c.toml"
    for value, message in [
        ("0", "dispatchers: expected a positive integer or 'auto', got 0"),
        ('"many"', "dispatchers: expected a positive integer or 'auto', got 'many'"),
        ("3", "dispatchers: 3 is more than workers (2)"),
    ]:
        config.write_text(f'handler = "{ECHO}"\nworkers = 2\ndispatchers = {value}\n')
        result = run("--check", f"--config={config}")
        lines = result.stderr.splitlines()
        assert result.returncode == 78 and len(lines) == 1, result
        assert lines[0].startswith("sockpool: config ") and message in lines[0], lines
    result = run("--check", "--dispatchers=many", ECHO)
    assert result.returncode == 78
    assert result.stderr == (
        "sockpool: --dispatchers: expected a positive integer or 'auto', got 'many'\n"
    )


def test_a_sighup_to_every_process_reloads_once(serve) -> None:
    """`systemctl kill --signal=SIGHUP` signals every process of the unit: the dispatchers
    leave a SIGHUP to the main process, which asks each of them once."""
    service, dispatchers = two_dispatchers(serve, ECHO)
    everyone = [service.pid, *dispatchers, *(w for d in dispatchers for w in children(d))]
    for pid in everyone:
        os.kill(pid, signal.SIGHUP)
    wait_until(lambda: "reloaded: 2 dispatchers serve" in service.output(), "the reload")
    wait_until(lambda: sum(len(children(d)) for d in dispatchers) == 4, "the old workers to drain")
    log = service.output()
    assert log.count("GENERATION=2]") == 4  # its four workers ready, and no other reload
    assert "GENERATION=3" not in log and log.count("reloaded: ") == 1, log
    assert service.read_notifications().count("READY=1") == 2
