"""The chaos test: 20,000 checked connections while the service is reloaded, restarted, and
its workers killed and frozen, under a real systemd. Nothing may be refused or answered
wrongly; the only connections allowed to fail are those inside a worker at the moment it
was killed, as the journal counts them (CONNECTIONS_LOST of each WORKER_EXITED).

Run three times in a row, as `make test` does, once more with `dispatchers = 2` (the
workers killed and frozen are then the dispatchers' children), and once with `accept =
workers`, where the workers accept for themselves (direct.py).
"""

from __future__ import annotations

import random

import pytest

from conftest import MakeInstance
from harness import Load
from sockpool.events import Event
from support import CLIENT_TIMEOUT, Unit, listen_on, request, wait_until

pytestmark = pytest.mark.system

ADDRESS = ("127.0.0.1", 7120)
CONNECTIONS = 20_000
CLIENTS = 8  # threads, each with its share of the connections
CONFIG = """\
handler = "sockpool.handlers:echo"
workers = 3
timeout = 2            # a worker holding a connection this long is hung
graceful_timeout = 10
"""
SOCKET = listen_on(ADDRESS)


def _proc(unit: Unit, what: str) -> str:
    return unit.machine.run("sh", "-c", f"{what}").stdout


def _fds(unit: Unit) -> int:
    return int(_proc(unit, f"ls /proc/{unit.main_pid()}/fd | wc -l"))


def _rss_kib(unit: Unit) -> int:
    status = _proc(unit, f"cat /proc/{unit.main_pid()}/status")
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1])


def _events(unit: Unit, cursor: str, event: Event) -> list[dict[str, str]]:
    """Entries of one event since the cursor. (journalctl 252 finds nothing when
    --after-cursor and a field match are combined, so the match is done here.)"""
    entries = unit.journal(f"--after-cursor={cursor}")
    return [e for e in entries if e.get("MESSAGE_ID") == event.value]


def _ready(unit: Unit) -> set[int]:
    """The dispatcher's children once all three have reported ready, else an empty set: a
    worker frozen while it still imports its handler holds no connection to hang on."""
    workers = unit.workers()
    started = unit.journal(f"MESSAGE_ID={Event.WORKER_STARTED.value}")
    ready = workers & {int(e["WORKER_PID"]) for e in started}
    return workers if len(workers) == 3 and ready == workers else set()


def _settled(unit: Unit) -> None:
    wait_until(lambda: len(unit.workers()) == 3, "three workers", timeout=30)
    wait_until(lambda: "busy 0," in unit.prop("StatusText"), "an idle pool", timeout=30)


def _storm(
    unit: Unit, clients: Load, cursor: str, rng: random.Random, workers_accept: bool
) -> tuple[int, int, int]:
    """Restart, reload, kill and freeze as the clients progress; (SIGKILLs, the dispatcher's
    fds and RSS in KiB before the reloads and kills).

    A worker frozen while it holds a connection is found hung. When workers accept, one
    frozen while idle takes nothing (the kernel wakes only a worker that waits), so none
    is hung: it is woken again once the little load is through, all of which the other
    two must have served."""

    def at(fraction: float) -> None:
        wait_until(lambda: clients.done >= fraction * CONNECTIONS, f"{fraction:.0%} done", 300)

    kills = 0
    for step in range(3):  # restarts first: the last dispatcher is the one we measure
        at(0.05 + 0.05 * step)
        unit.machine.systemctl("restart", unit.service)
    wait_until(lambda: len(unit.workers()) == 3, "three workers", timeout=30)
    # Under load a sample may catch a connection between accept and handoff: the least.
    start_fds = min(_fds(unit) for _ in range(5))
    start_rss = _rss_kib(unit)
    operations = ["reload"] * 5 + ["kill"] * 20 + ["stop-worker"]
    rng.shuffle(operations)
    for i, op in enumerate(operations):
        at(0.2 + 0.7 * i / len(operations))
        if op == "reload":
            unit.machine.systemctl("reload", unit.service)
            continue
        workers = unit.workers()
        if op == "stop-worker":  # one that serves: not one draining, nor one still starting
            workers = wait_until(lambda: _ready(unit), "three ready workers", timeout=30)
        victim = rng.choice(sorted(workers))
        if op == "kill":
            unit.machine.run("kill", "-KILL", str(victim), check=False)
            kills += 1
        else:  # frozen with a connection in hand: hung once past timeout=2
            unit.machine.run("kill", "-STOP", str(victim))
            # A little load of the test's own meanwhile: a connection reaches the frozen
            # worker even if the main load has finished by now. More clients than the other
            # two workers can hold: least-busy dispatch sends to a third only then.
            with Load(ADDRESS, 4, 1000, seconds=30, timeout=CLIENT_TIMEOUT) as little:
                if workers_accept:
                    little.join()
                    if not _events(unit, cursor, Event.WORKER_HUNG):
                        assert little.ok == little.done == 4000, little.summary()
                        unit.machine.run("kill", "-CONT", str(victim))
                        continue
                wait_until(lambda: _events(unit, cursor, Event.WORKER_HUNG), "the hang", 20)
    return kills, start_fds, start_rss


@pytest.mark.parametrize(
    ("run", "dispatchers", "accept"),
    [(1, 1, "dispatcher"), (2, 1, "dispatcher"), (3, 1, "dispatcher"), (1, 2, "dispatcher"),
     (1, 1, "workers")],
)  # fmt: skip
def test_chaos(instance: MakeInstance, run: int, dispatchers: int, accept: str) -> None:
    config = f'{CONFIG}dispatchers = {dispatchers}\naccept = "{accept}"\n'
    unit = instance("chaos", config, socket=SOCKET)
    unit.dispatchers = dispatchers
    unit.start_socket()
    assert request(ADDRESS, b"wake up\n") == b"wake up\n"
    unit.wait_running()
    since = unit.prop("InvocationID")  # journal of this run only (-u also covers restarts)
    cursor = unit.machine.run("journalctl", "-n0", "--show-cursor", "-q").stdout.split()[-1]

    # Unique payloads, one connection each: a reset, or a close without an answer, is a cut
    # connection; any other answer than the echo is a wrong one.
    load = Load(ADDRESS, CLIENTS, CONNECTIONS // CLIENTS, seconds=600, timeout=CLIENT_TIMEOUT)
    with load as clients:
        rng = random.Random(run)
        kills, start_fds, start_rss = _storm(unit, clients, cursor, rng, accept == "workers")
        clients.join()
    _settled(unit)
    end_fds, end_rss = _fds(unit), _rss_kib(unit)

    exited = _events(unit, cursor, Event.WORKER_EXITED)
    lost = sum(int(e.get("CONNECTIONS_LOST", 0)) for e in exited)
    hung = _events(unit, cursor, Event.WORKER_HUNG)
    reasons = sorted(e.get("EXIT_REASON", "?") for e in exited)
    print(
        f"\nchaos run {run}, {dispatchers} dispatchers, accept = {accept}: "
        f"{clients.done} connections: "
        f"{clients.ok} answered, "
        f"{clients.refused} refused, {clients.cut} cut, {clients.mismatched} wrong; "
        f"lost in killed workers per the journal: {lost}; {kills} SIGKILLs, "
        f"{len(hung)} hung; exits {dict((r, reasons.count(r)) for r in set(reasons))}; "
        f"dispatcher fds {start_fds} -> {end_fds}, RSS {start_rss} -> {end_rss} KiB "
        f"(invocation {since})"
    )
    assert clients.done == CONNECTIONS
    assert clients.refused == 0
    assert clients.mismatched == 0, clients.errors
    assert clients.cut <= lost
    assert len(hung) == 1 or (accept == "workers" and not hung)
    assert all("Its stacks:" in h["MESSAGE"] for h in hung)
    assert end_fds <= start_fds
    assert end_rss <= start_rss + 2048
