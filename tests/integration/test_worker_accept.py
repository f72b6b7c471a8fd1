"""`accept = workers` (direct.py): idle sync workers accept their connections themselves,
and give the dispatcher what is not ready. What holds for ready work, reloads, hangs and
recycling either way is asserted where those are (the `either` fixture); here, what is
this setting's own. Every wait is on what the service shows, never on a duration.
"""

from __future__ import annotations

import os
import signal
import socket

import pytest

from harness import Load, connect, free_port, read_to_eof, request, wait_until
from sockpool.direct import DIRECT
from test_ready_work import Lines, figures, launch, mark, settle

ECHO = "sockpool.handlers:echo"
WORKERS = "--accept=workers"


def tcp() -> str:
    return f"127.0.0.1:{free_port()}"


def listening_socket(pid: int) -> str:
    """The socket systemd passed (fd 3), as /proc names it."""
    return os.readlink(f"/proc/{pid}/fd/3")


def holds(pid: int, target: str) -> bool:
    return any(
        os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{pid}/fd")
    )


@pytest.mark.parametrize("accept", ["dispatcher", "workers"])
def test_idle_workers_accept_for_themselves_and_status_counts_what_they_served(
    serve, accept: str
) -> None:
    service = launch(serve, ["--workers=2", f"--accept={accept}", "apps:ids"])
    since = mark(service)
    for _ in range(5):
        client = Lines(service.address)
        conn_id, pid = client.ask(b"id")
        # CONN_ID, in its records too: ids from 2**62 on are those a worker accepted
        assert (int(conn_id) >= DIRECT) == (accept == "workers")
        assert pid in service.workers()
        client.close()
    settle(service, busy=0, parked=0, since=since)
    # Each was served and, once its client closed, given back between lines and closed
    # there, or finished in the worker: served counts each connection, however it ended.
    wait_until(lambda: figures(service)[2] >= 5, "STATUS served 5")
    listener = listening_socket(service.pid)
    assert all(holds(w, listener) == (accept == "workers") for w in service.workers())


def test_async_workers_leave_accepting_to_the_dispatcher(serve) -> None:
    service = serve(["--workers=2", WORKERS, "sockpool.handlers:echo_async"], listen=[tcp()])
    listener = listening_socket(service.pid)
    assert not any(holds(w, listener) for w in service.workers())
    assert request(service.address, b"async\n") == b"async\n"


def test_a_silent_client_in_the_backlog_pins_no_worker(serve) -> None:
    service = launch(serve, ["--workers=1", WORKERS, ECHO])
    silent = connect(service.address)
    with connect(service.address) as client:  # the one worker serves it meanwhile
        client.sendall(b"hello\n")
        client.shutdown(socket.SHUT_WR)
        assert read_to_eof(client) == b"hello\n"
    # Linux hands the silent one over after about a second (TCP_DEFER_ACCEPT); the worker
    # that accepts it gives it back, and it waits in the dispatcher for its first byte.
    settle(service, busy=0, parked=1)
    silent.sendall(b"late\n")
    silent.shutdown(socket.SHUT_WR)
    assert read_to_eof(silent) == b"late\n"
    silent.close()


def test_a_keep_alive_client_makes_room_for_a_new_one_waiting_in_the_backlog(serve) -> None:
    """One worker, held by a client that keeps asking: the new client waits in the
    listener's backlog, where only the worker's own look finds it."""
    service = launch(serve, ["--workers=1", WORKERS, "apps:ids"])
    busy = Lines(service.address)
    first, pid = busy.ask(b"id")
    newcomer = Lines(service.address)
    conn_id, newcomer_pid = newcomer.ask(b"id")  # answered while `busy` keeps asking
    assert newcomer_pid == pid and conn_id != first
    for _ in range(20):
        assert busy.ask(b"id") == (first, pid)
    busy.close()
    newcomer.close()


def test_reloads_under_load_refuse_nothing(serve) -> None:
    service = serve(["--workers=2", WORKERS, ECHO], listen=[tcp()])
    with Load(service.address, clients=6) as load:
        load.progress(100)
        for n in (1, 2, 3):
            service.signal(signal.SIGHUP)
            wait_until(lambda n=n: f"generation {n + 1} serves" in service.output(), "reload")
            load.progress(100)
    assert load.refused == load.reset == load.wrong == 0, load.summary()
