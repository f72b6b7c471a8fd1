"""The journal writer against a real datagram socket standing in for a stalled journald."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

from sockpool.journal import Journal, encode


def journald(tmp_path: Path) -> tuple[socket.socket, str]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "journal.socket")
    server.bind(path)
    return server, path


def drain(server: socket.socket) -> list[bytes]:
    got = []
    server.setblocking(False)
    while True:
        try:
            got.append(server.recv(65536))
        except BlockingIOError:
            return got


def fill(journal: Journal) -> int:
    """Send sockpool records until journald's queue is full and one waits; how many."""
    sent = 0
    while not journal.queue:
        journal.send(f"record {sent}", LOGGER="sockpool")
        sent += 1
        assert sent < 100_000, "the socket never filled up"
    return sent


def test_native_protocol_fields() -> None:
    data = encode("two\nlines", {"PRIORITY": 6, "lower": "dropped", "CODE_LINE": 3, "X": None})
    assert data == (
        b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\n" + b"PRIORITY=6\nCODE_LINE=3\n"
    )


def test_sockpools_records_wait_in_order_then_past_the_bound_are_counted(tmp_path) -> None:
    server, path = journald(tmp_path)
    journal = Journal(path, limit=5, name="sockpool@web")
    taken = fill(journal) - 1
    for n in range(10):
        journal.send(f"late {n}", LOGGER="sockpool.dispatcher")  # returns at once: no wait
    assert len(journal.queue) == 5 and journal.dropped == 6
    assert len(drain(server)) == taken
    journal.flush()
    got = drain(server)
    assert [g.split(b"\n")[0] for g in got[:5]] == [
        f"MESSAGE=record {taken}".encode(),
        *(f"MESSAGE=late {n}".encode() for n in range(4)),
    ]
    assert b"6 of sockpool's records were dropped" in got[5] and len(got) == 6
    assert b"\nSYSLOG_IDENTIFIER=sockpool@web\n" in got[5]  # --name, as the records it counts
    assert not journal.queue and journal.dropped == 0


def test_a_handlers_own_record_waits_for_room_instead(tmp_path) -> None:
    server, path = journald(tmp_path)
    journal = Journal(path)
    fill(journal)
    got: list[bytes] = []
    reader = threading.Timer(0.2, lambda: got.extend(drain(server)))  # journald catches up
    reader.start()
    journal.send("the application's record", LOGGER="app")
    reader.join()
    got += drain(server)  # what it sent once journald had room: before any flush()
    assert any(b"the application's record" in g for g in got)
    assert len(journal.queue) == 1 and journal.dropped == 0  # sockpool's one still waits


def test_the_loop_watches_the_socket_only_while_records_wait(tmp_path) -> None:
    server, path = journald(tmp_path)
    journal = Journal(path)
    calls: list[tuple[str, int]] = []
    journal.attach(
        lambda fd, flush: calls.append(("watch", fd)), lambda fd: calls.append(("unwatch", fd))
    )
    fill(journal)
    assert calls == [("watch", journal.fileno())]
    drain(server)
    journal.flush()
    assert calls == [("watch", journal.fileno()), ("unwatch", journal.fileno())]


def test_no_journald_at_all_loses_records_without_raising(tmp_path) -> None:
    journal = Journal(str(tmp_path / "nothing-here"), limit=2)
    for n in range(5):
        journal.send(f"r{n}", LOGGER="sockpool")
    assert len(journal.queue) == 2 and journal.dropped == 3


def test_drain_says_whether_journald_took_everything(tmp_path) -> None:
    nobody = Journal(str(tmp_path / "nothing-here"))
    nobody.send("the reason we exit", LOGGER="sockpool")
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(nobody.drain(60.0)))
    thread.start()
    thread.join(10)
    assert got == [False], "it waited out its timeout for a journald that is not there"
    server, path = journald(tmp_path)
    journal = Journal(path)
    fill(journal)
    assert journal.drain(0.05) is False  # stalled: nobody reads
    drain(server)
    assert journal.drain(10.0) is True and not journal.queue
