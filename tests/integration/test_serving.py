"""The dispatcher serving real clients, started by the real systemd-socket-activate."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
from pathlib import Path

import pytest

from harness import (
    Load,
    connect,
    custom_slices,
    free_port,
    read_to_eof,
    request,
    sched_slice_ns,
    wait_until,
)
from sockpool import cpuslice

ECHO = "sockpool.handlers:echo"


def tcp() -> str:
    return f"127.0.0.1:{free_port()}"


def test_echo_over_tcp_and_unix(serve, tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    service = serve(["--workers=2", ECHO], listen=[tcp(), path], fdnames=["tcp", "unix"])
    for address in service.addresses:
        assert request(address, b"hello over " + str(address).encode()) == (
            b"hello over " + str(address).encode()
        )
    assert "READY=1" in service.read_notifications()


def test_listen_is_not_bound_under_socket_activation(serve) -> None:
    """The socket units say where to listen: a `listen` left over from development would
    open a port none of them declares."""
    extra = tcp()
    service = serve([f"--listen=extra={extra}", "--workers=1", ECHO], listen=[tcp()])
    assert request(service.address, b"hi") == b"hi"
    wait_until(lambda: "listen ignored (extra=" in service.output(), "the warning")
    host, port = extra.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()


def test_a_reload_that_changes_listen_under_socket_activation_says_nothing_of_it(
    serve, tmp_path: Path
) -> None:
    """A restart would ignore it too: no 'a restart applies the change'."""
    config = tmp_path / "c.toml"
    config.write_text(f'handler = "{ECHO}"\nworkers = 1\nlisten = ["{tcp()}"]\n')
    service = serve([f"--config={config}"], listen=[tcp()])
    config.write_text(f'handler = "{ECHO}"\nworkers = 1\nlisten = ["{tcp()}"]\n')
    service.signal(signal.SIGHUP)
    wait_until(lambda: service.read_notifications().count("READY=1") == 2, "the reload")
    assert "restart applies" not in service.output()


def test_two_named_listeners_are_served_by_their_own_handlers(serve, tmp_path: Path) -> None:
    config = tmp_path / "two.toml"
    config.write_text(
        'handler = "apps:whoami"\nworkers = 2\n[listeners.admin]\nhandler = "apps:admin"\n'
    )
    unix = str(tmp_path / "admin.sock")
    service = serve([f"--config={config}"], listen=[tcp(), unix], fdnames=["web", "admin"])
    web, admin = service.addresses
    assert request(web, b"hi\n").startswith(b"whoami web ")
    assert request(admin, b"hi\n").startswith(b"admin admin ")


def test_unix_peer_credentials_reach_the_handler(serve, tmp_path: Path) -> None:
    path = str(tmp_path / "who.sock")
    service = serve(["--workers=1", "apps:whoami"], listen=[path], fdnames=["local"])
    words = request(service.address, b"hi\n").decode().split()
    # whoami LISTENER WORKER_PID PEER PEER_PID PEER_UID
    assert words[1] == "local"
    assert int(words[2]) in service.workers()
    assert words[4:] == [str(os.getpid()), str(os.getuid())]


@pytest.mark.parametrize("unix_first", [False, True])
def test_a_tcp_and_a_unix_socket_of_one_name_each_give_their_own_peer(
    serve, tmp_path: Path, unix_first: bool
) -> None:
    """As a socket unit with ListenStream=127.0.0.1:P and ListenStream=/run/x.sock passes
    them: one name for both. A UNIX client gets its credentials, a TCP client none."""
    listen = [tcp(), str(tmp_path / "who.sock")]
    if unix_first:
        listen.reverse()
    service = serve(["--workers=1", "apps:whoami"], listen=listen, fdnames=["web", "web"])
    tcp_address, unix_address = service.addresses[::-1] if unix_first else service.addresses
    # whoami LISTENER WORKER_PID PEER PEER_PID PEER_UID
    assert request(tcp_address, b"hi\n").decode().split()[4:] == ["None", "None"]
    assert request(unix_address, b"hi\n").decode().split()[3:] == [
        "unix",
        str(os.getpid()),
        str(os.getuid()),
    ]


def test_unix_peer_credentials_reach_the_journal_fields(serve, tmp_path: Path) -> None:
    path = str(tmp_path / "boom.sock")
    service = serve(["--workers=1", "apps:boom"], listen=[path], fdnames=["local"])
    request(service.address, b"go\n")
    wait_until(lambda: "about to fail" in service.output(), "the handler's log line")
    line = next(ln for ln in service.output().splitlines() if "about to fail" in ln)
    assert f"PEER_PID={os.getpid()} PEER_UID={os.getuid()}" in line


@pytest.mark.parametrize("clients", [1, 6])
def test_workers_that_report_completions_a_few_at_a_time_answer_every_client(
    serve, clients: int
) -> None:
    # queue_ahead = 3: a worker reports its completions once it has finished three, or once
    # it runs out of work (completions.py). One client's connections one after another
    # leave it idle after each; six clients keep both workers full. Once they are all
    # answered, none is still counted in a worker's hands: `systemctl status` says so.
    service = serve(["--workers=2", "--queue-ahead=3", ECHO], listen=[tcp()])
    with Load(service.address, clients=clients, limit=60) as load:
        load.join()
    assert load.ok == 60 * clients, load.summary()
    idle = f"STATUS=workers 2/2, busy 0, parked 0, served {load.ok}, refused 0"
    wait_until(lambda: idle in service.statuses(), idle)


def test_sync_handler_runs_one_connection_per_worker(serve) -> None:
    service = serve(["--workers=2", "apps:slow_echo"], listen=[tcp()])
    clients = [connect(service.address) for _ in range(3)]
    # Two are in workers' hands at once; the other waits until one is free. Which two is
    # not promised: with queue_ahead, one can be queued behind a worker the dispatcher
    # still counts as busy (its completion not yet read) while a later one goes to the
    # other worker, which has room.
    readable, _, _ = select.select(clients, [], [], 10)
    while len(readable) < 2:
        more, _, _ = select.select([c for c in clients if c not in readable], [], [], 10)
        assert more, "fewer than two connections were served at once"
        readable += more
    assert [c.recv(1) for c in readable] == [b"+", b"+"]
    [waiting] = [c for c in clients if c not in readable]
    waiting.settimeout(0.5)
    try:
        early = waiting.recv(1)
    except TimeoutError:
        early = b""
    assert early == b"", "a sync worker took a second connection at once"
    for c in clients:
        c.sendall(b"x\n")
    waiting.settimeout(10)
    assert waiting.recv(1) == b"+"
    for c in clients:
        c.close()


def test_async_handler_serves_many_connections_per_worker(serve) -> None:
    service = serve(["--workers=1", "--capacity=50", "apps:async_slow_echo"], listen=[tcp()])
    clients = [connect(service.address) for _ in range(20)]
    # One worker holds all twenty at once: each says '+' before any has been answered.
    assert [c.recv(1) for c in clients] == [b"+"] * 20
    for i, c in enumerate(clients):
        c.sendall(f"line {i}\n".encode())
    assert [c.recv(100) for c in clients] == [f"line {i}\n".encode() for i in range(20)]
    for c in clients:
        c.close()
    reply = request(service.address, b"\n")
    assert reply == b"+\n"


def test_async_handler_sees_its_connection(serve) -> None:
    service = serve(["--workers=1", "apps:async_whoami"], listen=[tcp()], fdnames=["api"])
    words = request(service.address, b"hi\n").decode().split()
    assert words[:2] == ["async", "api"] and int(words[2]) in service.workers()


def test_thousand_concurrent_connections_all_answered(either) -> None:
    service = either(["--workers=2", "sockpool.handlers:echo_async"], listen=[tcp()])
    host, port = service.address

    async def one(i: int) -> bool:
        reader, writer = await asyncio.open_connection(host, port)
        payload = f"connection {i}\n".encode()
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        answer = await reader.read()
        writer.close()
        return answer == payload

    async def all_of_them() -> list[bool]:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1000))), 60)

    assert all(asyncio.run(all_of_them()))


def test_handler_exception_is_logged_and_the_worker_lives(serve) -> None:
    service = serve(["--workers=1", "apps:boom"], listen=[tcp()])
    worker = service.workers()
    assert request(service.address, b"go\n") == b""
    wait_until(lambda: "boom in the handler" in service.output(), "the traceback")
    log = service.output()
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: boom in the handler" in log
    assert "CONN_ID=" in log and "LISTENER=" in log
    # The handler's own logging call carries the connection's fields too.
    line = next(ln for ln in log.splitlines() if "about to fail" in ln)
    assert "CONN_ID=" in line and "PEER=127.0.0.1:" in line
    assert service.workers() == worker


@pytest.mark.parametrize("handler", ["apps:exits", "apps:async_exits"])
def test_a_handler_that_calls_sys_exit_ends_its_connection_not_the_worker(
    serve, handler: str
) -> None:
    """A request cannot end the worker, nor the other connections an async one holds."""
    service = serve(["--workers=1", handler], listen=[tcp()])
    worker = service.workers()
    held = handler.startswith("apps:async")  # both connections at once, in one worker
    with connect(service.address) as leaving:
        assert leaving.recv(1) == b"+"
        other = connect(service.address)
        if held:
            assert other.recv(1) == b"+"
        leaving.sendall(b"exit\n")
        assert read_to_eof(leaving) == b""
    with other:
        if not held:
            assert other.recv(1) == b"+"
        other.sendall(b"still here\n")
        assert other.makefile("rb").readline() == b"still here\n"
    wait_until(lambda: "SystemExit: 3" in service.output(), "the traceback")
    assert service.workers() == worker


def test_killed_worker_is_replaced_and_other_connections_succeed(either) -> None:
    service = either(["--workers=3", ECHO], listen=[tcp()])
    with Load(service.address, clients=6) as load:
        load.progress(200)
        victim = service.workers()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: victim not in service.workers() and len(service.workers()) == 3,
            "a replacement worker",
        )
        load.progress(200)
    # At most the one connection that was in the killed worker's hands (its queued one is
    # read back and served): cut by a reset, or by a close if it had read the request.
    assert load.refused == load.mismatched == 0 and load.cut <= 1, load.summary()
    assert "killed by signal SIGKILL" in service.output()


def stopped(pid: int) -> bool:
    """The process is stopped by a signal (state T in /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "T"


def test_connection_handed_to_a_worker_that_dies_before_taking_it_is_served(serve) -> None:
    service = serve(["--workers=2", "apps:slow_echo"], listen=[tcp()])
    stuck, other = service.workers()
    os.kill(stuck, signal.SIGSTOP)  # it cannot take (acknowledge) what it is sent
    # Once it is stopped: kill() only queues the signal, and a worker woken by it but not
    # yet stopped would still take a handoff that came meanwhile (and die with it).
    wait_until(lambda: stopped(stuck), f"worker {stuck} to stop")
    clients = [connect(service.address) for _ in range(2)]
    # One of the two went to the stopped worker; it answers nothing until rescued.
    os.kill(stuck, signal.SIGKILL)
    for c in clients:
        c.sendall(b"rescued\n")
    answers = []
    for c in clients:
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(100)
            assert chunk, "connection closed without an answer"
            data += chunk
        answers.append(data)
        c.close()
    assert answers == [b"+rescued\n", b"+rescued\n"]
    assert other in service.workers()


@pytest.mark.parametrize("pull", [[], ["--pull"]], ids=["default", "pull"])
def test_sigterm_drains_connections_in_flight(serve, pull: list[str]) -> None:
    args = ["--workers=2", "--capacity=50", *pull, "apps:async_slow_echo"]
    service = serve(args, listen=[tcp()])
    clients = [connect(service.address) for _ in range(40)]
    assert [c.recv(1) for c in clients] == [b"+"] * 40  # all in workers' hands
    for i, c in enumerate(clients):
        c.sendall(f"in flight {i}\n".encode())
    service.signal(signal.SIGTERM)
    for i, c in enumerate(clients):
        c.settimeout(10)
        assert c.recv(100) == f"in flight {i}\n".encode()  # not reset: answered in full
        assert c.recv(100) == b""
        c.close()
    assert service.wait() == 0
    service.read_notifications()
    assert "STOPPING=1" in service.notifications


@pytest.mark.parametrize(
    "args", [[ECHO], ["--pull", "sockpool.handlers:echo_async"]], ids=["sync", "async-pull"]
)
def test_sighup_swaps_generations_under_load(either, args: list[str]) -> None:
    service = either(["--workers=2", *args], listen=[tcp()])
    first = set(service.workers())
    with Load(service.address, clients=6) as load:
        load.progress(100)
        for n in (1, 2):
            service.signal(signal.SIGHUP)
            service.wait_for("RELOADING=1")
            wait_until(
                lambda n=n: f"generation {n + 1} serves" in service.output(), f"generation {n + 1}"
            )
        load.progress(200)
    assert load.refused == load.reset == load.wrong == 0, load.summary()
    wait_until(lambda: len(service.workers()) == 2, "the old generation to drain")
    assert not first & set(service.workers())
    assert service.read_notifications().count("READY=1") == 3


def test_reload_with_a_bad_config_keeps_serving(serve, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('handler = "sockpool.handlers:echo"\nworkers = 2\n')
    service = serve([f"--config={config}"], listen=[tcp()])
    workers = service.workers()
    config.write_text("workers = 0\n")
    service.signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in service.output(), "the reload to fail")
    assert "workers: expected an integer from 1 to 4096, got 0" in service.output()
    assert request(service.address, b"still here") == b"still here"
    assert service.workers() == workers


def test_reload_with_a_handler_that_cannot_import_keeps_serving(serve, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('handler = "sockpool.handlers:echo"\nworkers = 1\n')
    service = serve([f"--config={config}"], listen=[tcp()])
    config.write_text('handler = "broken_app:handle"\nworkers = 1\nlog_level = "warning"\n')
    service.signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in service.output(), "the reload to fail", timeout=30)
    assert "this module is broken on purpose" in service.output()
    assert request(service.address, b"old code") == b"old code"
    # The reload that failed changed nothing, its log_level included: info records still go.
    service.signal(signal.SIGTERM)
    assert service.wait() == 0
    assert "stopping on SIGTERM" in service.output()


@pytest.mark.parametrize("dispatchers", [1, 2])
def test_a_reload_applies_log_level_and_says_once_what_needs_a_restart(
    serve, tmp_path: Path, dispatchers: int
) -> None:
    """name stays as it runs, with one warning (not one per dispatcher), and listen is
    not bound (socket-activated, a restart would not bind it either, so the warning leaves
    it out); log_level = "warning" silences the reload's own info records."""
    config = tmp_path / "c.toml"
    first = f'handler = "{ECHO}"\nworkers = 2\ndispatchers = {dispatchers}\nname = "before"\n'
    config.write_text(first)
    service = serve([f"--config={config}"], listen=[tcp()])
    moved = ("127.0.0.1", free_port())
    config.write_text(
        first.replace('"before"', '"after"')
        + f'log_level = "warning"\nlisten = ["{moved[0]}:{moved[1]}"]\n'
    )
    service.signal(signal.SIGHUP)
    wait_until(lambda: service.read_notifications().count("READY=1") == 2, "the reload")
    [said] = [line for line in service.output().splitlines() if "a reload keeps" in line]
    assert said.endswith(": name: a reload keeps what runs; a restart applies the change")
    assert " before[" in said and " after[" not in service.output()
    assert "reloaded: " not in service.output() and "reload failed" not in service.output()
    assert request(service.address, b"same socket") == b"same socket"
    with pytest.raises(ConnectionRefusedError):
        connect(moved)


def test_status_reports_live_figures(serve) -> None:
    service = serve(["--workers=2", ECHO], listen=[tcp()])
    for _ in range(5):
        request(service.address, b"x")
    # Five requests; the connection that activated the service sent nothing, so no worker
    # ever saw it: the dispatcher closed it when its client did.
    wait_until(
        lambda: any("served 5," in s for s in service.statuses()), "STATUS with served 5", timeout=5
    )
    assert any(s.startswith("STATUS=workers 2/2, busy ") for s in service.statuses())


def test_watchdog_is_fed_when_systemd_asks(serve) -> None:
    service = serve(["--workers=1", ECHO], listen=[tcp()], env={"WATCHDOG_USEC": "200000"})
    wait_until(
        lambda: service.read_notifications().count("WATCHDOG=1") >= 3, "WATCHDOG=1 x3", timeout=5
    )


def test_descriptors_do_not_leak_over_10000_connections(serve) -> None:
    service = serve(["--workers=2", ECHO], listen=[tcp()])
    request(service.address, b"warm up")
    service.wait_idle()
    at_start = service.settled_fds()
    with Load(service.address, clients=8, limit=1250, seconds=120) as load:
        load.join()
    assert load.ok == 10_000, load.summary()
    wait_until(
        lambda: service.fd_count() == at_start, "the dispatcher's descriptors to settle", timeout=5
    )


def slice_ns(pid: int) -> int | None:
    return sched_slice_ns(Path(f"/proc/{pid}/sched").read_text())


@pytest.mark.skipif(not custom_slices(), reason="no custom CPU slices before Linux 6.12")
def test_dispatcher_asks_for_the_shortest_cpu_slice_and_workers_keep_the_default(serve) -> None:
    """So a connection that arrives while CPU-bound workers fill every core waits for no
    worker's slice to end (cpuslice.py). A worker forked after that, like the replacement
    for a killed one, gets the kernel's default again."""
    default = slice_ns(os.getpid())
    service = serve(["--workers=2", ECHO], listen=[tcp()])
    assert request(service.address, b"x\n") == b"x\n"
    assert slice_ns(service.pid) == cpuslice.SHORTEST_NS != default
    victim = service.workers()[0]
    os.kill(victim, signal.SIGKILL)
    # Listed as soon as it is forked, before it can reset its slice: wait for what it reads.
    wait_until(
        lambda: (
            victim not in (workers := service.workers())
            and [slice_ns(w) for w in workers] == [default, default]
        ),
        "a replacement worker with the default slice",
    )


def test_a_program_a_handler_starts_does_not_ignore_sighup_or_sigint(serve) -> None:
    """Workers leave Ctrl-C and reloads to the dispatcher by catching SIGINT and SIGHUP, not
    ignoring them: an ignored signal would stay ignored in every program they exec."""
    service = serve(["--workers=1", "apps:child_ignores"], listen=[tcp()])
    ignored = int(request(service.address, b"").split(b":")[1], 16)
    assert not ignored & (1 << (signal.SIGHUP - 1) | 1 << (signal.SIGINT - 1)), hex(ignored)
