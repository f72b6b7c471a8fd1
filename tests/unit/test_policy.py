"""The lifecycle policy, as event sequences: no sockets, no processes, no clock.

Each test feeds events to a Lifecycle and asserts the states it reaches and the actions it
asks for, the way h11 tests its connection state machine.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable

import pytest

from harness import only, records
from sockpool import lifecycle as ev
from sockpool.config import Config
from sockpool.deadlines import DUMP_GRACE
from sockpool.errors import ExitCode
from sockpool.events import Event
from sockpool.policy import Lifecycle
from sockpool.states import (
    TRANSITIONS,
    ExitReason,
    TransitionError,
    Trigger,
    Worker,
    WorkerState,
    advance,
)

S = WorkerState


class Sim:
    """A Lifecycle, a clock, and pids handed out the way fork would."""

    def __init__(self, **settings: object) -> None:
        settings.setdefault("workers", 2)
        self.config = Config(handler="app:handle", **settings)  # type: ignore[arg-type]
        self.policy = Lifecycle(self.config, rng=random.Random(7))
        self.now = 0.0
        self.next_pid = 100
        self.actions: list[ev.Action] = []

    def feed(self, event: object) -> list[ev.Action]:
        actions = self.policy.handle(event)
        self.actions += actions
        return actions

    def spawn(self, actions: Iterable[ev.Action]) -> list[int]:
        """Carry out the Spawn actions: each gets a pid and is reported Spawned."""
        pids = []
        for action in actions:
            if isinstance(action, ev.Spawn):
                self.next_pid += 1
                pids.append(self.next_pid)
                self.feed(ev.Spawned(self.next_pid, action.generation.number, self.now))
        return pids

    def ready(self, *pids: int) -> list[ev.Action]:
        return [a for pid in pids for a in self.feed(ev.Ready(pid, 1, self.now))]

    def start(self) -> list[int]:
        pids = self.spawn(self.policy.start(self.now))
        self.ready(*pids)
        return pids

    def exit(self, pid: int, natural: ExitReason = ExitReason.EXITED, lost: int = 0):
        return self.feed(ev.Exited(pid, "exited with status 1", natural, lost, "", self.now))

    def tick(self, at: float, undelivered: int = 0) -> list[ev.Action]:
        self.now = at
        return self.feed(ev.Tick(at, undelivered))

    def state(self, pid: int) -> WorkerState:
        return self.policy.workers[pid].state

    def serving(self) -> set[int]:
        return {w.pid for w in self.policy.pool.serving(self.policy.active)}


# -- starting ----------------------------------------------------------------------------------


def test_start_spawns_the_pool_and_a_first_tick() -> None:
    sim = Sim(workers=3)
    actions = sim.policy.start(0.0)
    assert len(only(actions, ev.Spawn)) == 3 and only(actions, ev.Wake) == [ev.Wake(0.0)]
    pids = sim.spawn(actions)
    assert [sim.state(p) for p in pids] == [S.STARTING] * 3 and sim.serving() == set()


def test_ready_is_announced_once_when_the_whole_pool_is_ready() -> None:
    sim = Sim()
    a, b = sim.spawn(sim.policy.start(0.0))
    assert not records(sim.ready(a), Event.READY)
    actions = sim.ready(b)
    assert [r.message for r in records(actions, Event.READY)] == ["ready: 2 workers"]
    assert only(actions, ev.Notify) == [ev.Notify("ready")]
    assert sim.serving() == {a, b}
    sim.exit(a, ExitReason.CRASHED)
    [replacement] = sim.spawn(sim.actions[-1:])
    assert not records(sim.ready(replacement), Event.READY)  # no second READY=1


def test_only_ready_listening_workers_of_the_active_generation_take_work() -> None:
    sim = Sim(workers=4, timeout=1.0)
    a, b, c, d = sim.start()
    starting = sim.spawn([ev.Spawn(sim.policy.active)])[0]
    sim.policy.workers[b].handed[1] = (0.0, "web", "peer")
    sim.tick(5.0)  # b hangs
    sim.feed(ev.ChannelClosed(c))
    sim.policy.pool.retire([sim.policy.workers[d]], 5.0, 30.0)
    assert sim.serving() == {a} and starting not in sim.serving()


def test_the_serving_set_changes_bump_the_version() -> None:
    sim = Sim()
    before = sim.policy.pool.version
    a, _ = sim.start()
    after_ready = sim.policy.pool.version
    sim.feed(ev.ChannelClosed(a))
    assert before < after_ready < sim.policy.pool.version


def test_a_second_ready_on_one_channel_is_reported() -> None:
    sim = Sim()
    a, _ = sim.start()
    [record] = only(sim.ready(a), ev.Record)
    assert record.level == logging.ERROR and "reported ready twice" in record.message
    assert "fork at import" in record.message and sim.state(a) is S.READY


# -- exits and replacement ---------------------------------------------------------------------


def test_a_crashed_worker_is_replaced_at_once_and_its_losses_logged() -> None:
    sim = Sim()
    a, _ = sim.start()
    actions = sim.exit(a, ExitReason.CRASHED, lost=1)
    [record] = records(actions, Event.WORKER_EXITED)
    assert record.level == logging.WARNING and record.fields["EXIT_REASON"] == "crashed"
    assert record.fields["CONNECTIONS_LOST"] == 1 and "1 connections" in record.message
    assert len(only(actions, ev.Spawn)) == 1 and a not in sim.policy.workers


def test_the_exit_of_an_unknown_process_changes_nothing() -> None:
    sim = Sim()
    sim.start()
    assert sim.exit(999) == []


# -- failing starts ----------------------------------------------------------------------------


def test_workers_dying_before_ready_are_restarted_with_backoff() -> None:
    sim = Sim()
    a, _b = sim.spawn(sim.policy.start(0.0))
    waits = []
    pid = a
    for _ in range(3):
        actions = sim.exit(pid)
        assert not only(actions, ev.Spawn)  # not at once: after the backoff
        [wake] = only(actions, ev.Wake)
        waits.append(round(wake.at - sim.now, 3))
        assert not only(sim.tick(wake.at - 0.01), ev.Spawn)
        [pid] = sim.spawn(sim.tick(wake.at))
    assert waits == [0.1, 0.2, 0.4]


def test_too_many_failed_starts_in_a_row_give_up_with_the_last_reason() -> None:
    sim = Sim(workers=1)
    [pid] = sim.spawn(sim.policy.start(0.0))
    for attempt in range(5):  # workers + 4
        sim.feed(ev.Failed(pid, f"cannot import app (attempt {attempt})"))
        actions = sim.exit(pid)
        if give_up := only(actions, ev.GiveUp):
            break
        [pid] = sim.spawn(sim.tick(only(actions, ev.Wake)[0].at))
    assert attempt == 4
    [stop] = give_up
    assert stop.code is ExitCode.WORKERS_FAILING
    assert "5 workers in a row" in stop.message and "(attempt 4)" in stop.message


def test_a_ready_worker_resets_the_failure_count() -> None:
    sim = Sim(workers=1)
    [pid] = sim.spawn(sim.policy.start(0.0))
    wake = only(sim.exit(pid), ev.Wake)[0]
    [pid] = sim.spawn(sim.tick(wake.at))
    sim.ready(pid)
    assert sim.policy.active.start_failures == 0


def test_a_fork_that_fails_is_a_failed_start() -> None:
    sim = Sim(workers=1)
    actions = sim.feed(ev.SpawnFailed(1, "Resource temporarily unavailable", 0.0))
    [record] = only(actions, ev.Record)
    assert record.level == logging.ERROR and "Resource temporarily unavailable" in record.message
    [wake] = only(actions, ev.Wake)
    assert wake.at == pytest.approx(0.1)
    assert len(only(sim.tick(wake.at), ev.Spawn)) == 1
    again = sim.feed(ev.SpawnFailed(1, "Resource temporarily unavailable", 0.1))
    assert not only(again, ev.Record) and only(again, ev.Wake)  # said once, still retried


def test_a_worker_not_ready_within_start_timeout_is_killed_and_counts_as_failed() -> None:
    sim = Sim(workers=1, start_timeout=5.0)
    [pid] = sim.spawn(sim.policy.start(0.0))
    assert not only(sim.tick(4.9), ev.Kill)
    actions = sim.tick(5.0)
    assert only(actions, ev.Kill) == [ev.Kill(pid, ExitReason.START_TIMEOUT)]
    assert "start_timeout=5s" in only(actions, ev.Record)[0].message
    actions = sim.exit(pid, ExitReason.KILLED)
    assert records(actions, Event.WORKER_EXITED)[0].fields["EXIT_REASON"] == "start-timeout"
    assert sim.policy.active.start_failures == 1 and only(actions, ev.Wake)


# -- reload ------------------------------------------------------------------------------------


def reload(sim: Sim, **settings: object) -> list[ev.Action]:
    config = Config(handler="app:handle", **{"workers": 2, **settings})  # type: ignore[arg-type]
    return sim.feed(ev.ReloadRequested(config, "", sim.now))


def test_reload_swaps_generations_once_the_new_one_is_ready() -> None:
    sim = Sim()
    old = sim.start()
    actions = reload(sim)
    assert only(actions, ev.Notify) == [ev.Notify("reloading")]
    assert records(actions, Event.RELOADING)
    new = sim.spawn(actions)
    assert sim.serving() == set(old)  # the old generation serves meanwhile
    sim.ready(new[0])
    assert sim.serving() == set(old)
    actions = sim.ready(new[1])
    assert only(actions, ev.Swap)[0].generation.number == 2
    assert {a.pid for a in only(actions, ev.SendStop)} == set(old)
    assert (
        "reloaded: generation 2 serves, 2 old workers drain"
        in records(actions, Event.READY)[0].message
    )
    assert only(actions, ev.Notify) == [ev.Notify("ready")]
    assert sim.serving() == set(new) and {sim.state(p) for p in old} == {S.RETIRING}
    actions = sim.exit(old[0])
    assert records(actions, Event.WORKER_EXITED)[0].fields["EXIT_REASON"] == "retired"
    assert not only(actions, ev.Spawn)  # a retired worker is not replaced


def test_a_reload_says_in_one_line_what_only_a_restart_changes_and_goes_on() -> None:
    sim = Sim(listen=("127.0.0.1:7007",))
    sim.start()
    changed = {"listen": ("127.0.0.1:8008",), "name": "renamed", "dispatchers": "auto"}
    actions = reload(sim, workers=1, **changed)
    assert [r.message for r in records(actions, None)] == [
        "listen, name: a reload keeps what runs; a restart applies the change"
    ]  # auto is one dispatcher for one worker: nothing to say about the count
    [spawn, *_] = only(actions, ev.Spawn)
    kept = spawn.generation.config  # the new generation's, with what runs kept
    assert (kept.listen, kept.name, kept.workers) == (("127.0.0.1:7007",), "sockpool", 1)
    actions = reload(sim, listen=("127.0.0.1:7007",), dispatchers=2)
    assert [r.message for r in records(actions, None)] == [
        "dispatchers (2 asked, 1 serving): a reload keeps what runs; a restart applies the change"
    ]
    # Still one alone, whose sync workers keep queue_ahead (none with several, spec.py).
    assert not only(actions, ev.Spawn)[0].generation.config.shares_sockets


def test_one_of_several_dispatchers_leaves_what_a_reload_keeps_to_the_main_process() -> None:
    sim = Sim(dispatchers=2)
    sim.start()
    actions = reload(sim, dispatchers=2, listen=("127.0.0.1:8008",))
    assert not records(actions, None)
    assert len(only(actions, ev.Spawn)) == 2


def test_a_reload_whose_config_fails_to_load_keeps_the_old_generation() -> None:
    sim = Sim()
    old = sim.start()
    actions = sim.feed(ev.ReloadRequested(None, "config x.toml: workers: bad", 1.0))
    [failed] = records(actions, Event.RELOAD_FAILED)
    assert failed.level == logging.ERROR and "workers: bad" in failed.message
    assert only(actions, ev.Notify) == [ev.Notify("reloading"), ev.Notify("ready")]
    assert not only(actions, ev.Spawn) and sim.serving() == set(old)
    assert sim.policy.incoming is None


def test_a_reload_whose_workers_fail_to_start_aborts_and_the_old_serves_on() -> None:
    sim = Sim(workers=1)
    [old] = sim.start()
    [pid] = sim.spawn(reload(sim, workers=1))
    for _ in range(5):
        actions = sim.exit(pid)
        if records(actions, Event.RELOAD_FAILED):
            break
        [pid] = sim.spawn(sim.tick(only(actions, ev.Wake)[0].at))
    assert "workers in a row failed to start" in records(actions, Event.RELOAD_FAILED)[0].message
    assert not only(actions, ev.GiveUp) and sim.policy.incoming is None
    assert sim.serving() == {old} and sim.policy.active.number == 1


def test_a_reload_during_the_start_tells_systemd_ready_only_once_workers_are() -> None:
    """READY=1 is what ends systemd's start: not while no worker is ready, and once."""
    sim = Sim()
    first = sim.spawn(sim.policy.start(sim.now))
    actions = sim.feed(ev.ReloadRequested(None, "config x.toml: workers: bad", 0.1))
    assert records(actions, Event.RELOAD_FAILED) and not only(actions, ev.Notify)
    assert only(sim.ready(*first), ev.Notify) == [ev.Notify("ready")]
    # Its workers ready while a reload's started, and that reload failed: ready now.
    sim = Sim(workers=1)
    [first] = sim.spawn(sim.policy.start(sim.now))
    [pid] = sim.spawn(reload(sim, workers=1))
    assert not only(sim.ready(first), ev.Notify)  # the reload's generation is the one
    for _ in range(5):
        actions = sim.exit(pid)
        if records(actions, Event.RELOAD_FAILED):
            break
        [pid] = sim.spawn(sim.tick(only(actions, ev.Wake)[0].at))
    assert only(actions, ev.Notify) == [ev.Notify("ready")] and sim.serving() == {first}
    sim = Sim()
    first = sim.spawn(sim.policy.start(sim.now))
    actions = reload(sim)
    assert not only(actions, ev.Notify)
    second = sim.spawn(actions)
    assert not only(sim.ready(*first), ev.Notify)  # the reload's generation is the one
    actions = sim.ready(*second)
    assert only(actions, ev.Notify) == [ev.Notify("ready")]
    assert [r.message for r in records(actions, Event.READY)] == [
        "ready: 2 workers",  # the start's, as ever, then the reload's, as ever
        "reloaded: generation 2 serves, 2 old workers drain",
    ]
    assert sim.serving() == set(second)
    assert only(reload(sim), ev.Notify) == [ev.Notify("reloading")]  # started: as usual


def test_no_ready_after_a_stop_during_the_start() -> None:
    sim = Sim()
    first = sim.spawn(sim.policy.start(sim.now))
    reload(sim)
    sim.feed(ev.StopRequested("SIGTERM", 0.2))
    assert not only(sim.ready(*first), ev.Notify)  # systemd heard STOPPING=1 already


def test_a_reload_during_a_reload_supersedes_it() -> None:
    sim = Sim()
    sim.start()
    first = sim.spawn(reload(sim))
    sim.ready(first[0])
    actions = reload(sim)
    assert {a.pid for a in only(actions, ev.Kill)} == set(first)
    second = sim.spawn(actions)
    assert sim.policy.incoming is not None and sim.policy.incoming.number == 3
    sim.ready(*second)
    assert sim.policy.active.number == 3 and sim.serving() == set(second)


def test_a_reload_while_stopping_is_ignored() -> None:
    sim = Sim()
    sim.start()
    sim.feed(ev.StopRequested("SIGTERM", 0.0))
    assert reload(sim) == []


def test_retired_workers_past_graceful_timeout_are_killed_as_overdue() -> None:
    sim = Sim()
    old = sim.start()
    sim.ready(*sim.spawn(reload(sim, graceful_timeout=10.0)))  # the new config's limit
    assert not only(sim.tick(9.9), ev.Kill)
    actions = sim.tick(10.0)
    assert {(k.pid, k.reason) for k in only(actions, ev.Kill)} == {
        (p, ExitReason.OVERDUE) for p in old
    }
    assert sorted(r.message for r in only(actions, ev.Record)) == sorted(
        f"worker {p} did not finish within graceful_timeout: killing it" for p in old
    )
    assert records(sim.exit(old[0]), Event.WORKER_EXITED)[0].fields["EXIT_REASON"] == "overdue"


# -- recycling ---------------------------------------------------------------------------------


def test_recycling_by_count_starts_the_replacement_first() -> None:
    sim = Sim(workers=1, max_requests=10, max_requests_jitter=0)
    [old] = sim.start()
    w = sim.policy.workers[old]
    w.served = 9
    assert sim.feed(ev.Completions(frozenset({old}), 1.0)) == []
    w.served = 10
    actions = sim.feed(ev.Completions(frozenset({old}), 1.0))
    assert (
        "served 10 connections or turns of one (max_requests)"
        in records(actions, Event.WORKER_RECYCLED)[0].message
    )
    [new] = sim.spawn(actions)
    assert sim.serving() == {old}  # until its replacement is ready
    actions = sim.ready(new)
    assert only(actions, ev.SendStop) == [ev.SendStop(old)] and sim.serving() == {new}
    actions = sim.exit(old)
    [record] = records(actions, Event.WORKER_EXITED)
    assert record.fields["EXIT_REASON"] == "recycled" and record.level == logging.INFO
    assert not only(actions, ev.Spawn)


def test_a_worker_that_asks_to_retire_is_recycled_once_replacement_first() -> None:
    sim = Sim(workers=2)
    old, other = sim.start()
    actions = sim.feed(ev.Retire(old, "a task of the application called sys.exit()", 1.0))
    [record] = records(actions, Event.WORKER_RECYCLED)
    assert record.message.endswith(": a task of the application called sys.exit()")
    [new] = sim.spawn(actions)
    assert sim.serving() == {old, other}  # until its replacement is ready
    assert not sim.feed(ev.Retire(old, "again", 1.1))  # asked twice: recycled once
    assert only(sim.ready(new), ev.SendStop) == [ev.SendStop(old)]
    assert sim.serving() == {new, other}
    assert not sim.feed(ev.Retire(12345, "a worker already gone", 1.2))


def test_max_requests_gets_jitter_a_tenth_by_default() -> None:
    sim = Sim(workers=20, max_requests=100)
    sim.start()
    limits = {w.max_served for w in sim.policy.workers.values()}
    assert min(limits) >= 100 and max(limits) <= 110 and len(limits) > 1


def test_recycling_by_memory() -> None:
    sim = Sim(max_memory=100)
    a, b = sim.start()
    [check] = only(sim.tick(1.0), ev.CheckMemory)
    assert set(check.pids) == {a, b}
    actions = sim.feed(ev.Memory({a: 150.0, b: 99.0}, 1.0))
    [record] = records(actions, Event.WORKER_RECYCLED)
    assert "150 MiB over max_memory=100" in record.message and record.fields["WORKER_PID"] == a
    assert len(only(actions, ev.Spawn)) == 1 and sim.state(a) is S.RECYCLING
    assert not only(sim.tick(1.5), ev.CheckMemory)  # once a second
    assert not only(sim.feed(ev.Memory({a: 150.0}, 2.0)), ev.Spawn)  # not recycled twice


def test_recycling_while_stopping_retires_without_a_replacement() -> None:
    sim = Sim(workers=1, max_requests=1, max_requests_jitter=0)
    [pid] = sim.start()
    sim.feed(ev.StopRequested("SIGTERM", 0.0))
    sim.policy.workers[pid].served = 1
    actions = sim.feed(ev.Completions(frozenset({pid}), 0.1))
    assert not only(actions, ev.Spawn) and only(actions, ev.SendStop) == [ev.SendStop(pid)]


def recycling_worker_that_hangs(sim: Sim) -> tuple[int, int]:
    """One worker over max_memory, holding a connection: recycled, then hung. (old, new)"""
    [old] = sim.start()
    sim.policy.workers[old].handed[1] = (0.0, "web", "peer")
    [new] = sim.spawn(sim.feed(ev.Memory({old: 500.0}, 0.0)))
    sim.tick(3.0)  # past timeout=2: hung while its replacement still starts
    assert sim.state(old) is S.HUNG
    return old, new


def test_a_recycling_worker_that_hangs_is_replaced_once_replacement_first() -> None:
    sim = Sim(workers=1, max_memory=100, timeout=2.0)
    old, new = recycling_worker_that_hangs(sim)
    actions = sim.ready(new)  # nothing to retire: the hung one is being killed
    assert not only(actions, ev.SendStop) and sim.serving() == {new}
    sim.tick(3.0 + DUMP_GRACE)
    assert not only(sim.exit(old, ExitReason.KILLED), ev.Spawn)  # its successor serves
    assert len(sim.policy.workers) == 1


def test_a_recycling_worker_that_hangs_is_replaced_once_exit_first() -> None:
    sim = Sim(workers=1, max_memory=100, timeout=2.0)
    old, new = recycling_worker_that_hangs(sim)
    sim.tick(3.0 + DUMP_GRACE)
    assert not only(sim.exit(old, ExitReason.KILLED), ev.Spawn)  # its successor is coming
    sim.ready(new)
    assert sim.serving() == {new} and len(sim.policy.workers) == 1


def test_a_worker_forked_for_a_dropped_reload_is_killed() -> None:
    sim = Sim()
    sim.start()
    sim.feed(ev.ReloadRequested(None, "bad", 0.0))
    actions = sim.feed(ev.Spawned(500, 2, 0.0))  # generation 2 was never made, or dropped
    assert only(actions, ev.Kill) == [ev.Kill(500, ExitReason.RETIRED)]
    assert 500 not in sim.serving()


# -- hangs -------------------------------------------------------------------------------------


def hold(sim: Sim, pid: int, conn_id: int, sent: float) -> None:
    sim.policy.workers[pid].handed[conn_id] = (sent, "web", "192.0.2.1:4000")


def test_a_hung_worker_is_asked_for_stacks_then_killed_and_replaced() -> None:
    sim = Sim(timeout=2.0)
    a, b = sim.start()
    hold(sim, a, 42, 0.0)
    assert only(sim.tick(2.0), ev.AskStacks) == []
    actions = sim.tick(2.1)
    assert only(actions, ev.AskStacks) == [ev.AskStacks(a)] and sim.serving() == {b}
    assert only(actions, ev.Wake)[0].at == pytest.approx(2.1 + DUMP_GRACE)
    assert not only(sim.tick(2.1 + DUMP_GRACE / 2), ev.Kill)
    [kill] = only(sim.tick(2.1 + DUMP_GRACE), ev.Kill)
    assert kill.pid == a and kill.reason is ExitReason.HUNG and kill.hang is not None
    assert kill.hang.event is Event.WORKER_HUNG and kill.hang.fields["CONN_ID"] == 42
    assert kill.hang.fields["PEER"] == "192.0.2.1:4000"
    assert "over timeout=2s; killing it" in kill.hang.message
    actions = sim.exit(a, ExitReason.KILLED, lost=1)
    assert records(actions, Event.WORKER_EXITED)[0].fields["EXIT_REASON"] == "hung"
    assert len(only(actions, ev.Spawn)) == 1


def test_a_worker_that_keeps_beating_is_not_hung_until_it_falls_silent() -> None:
    sim = Sim(timeout=2.0)
    a, _ = sim.start()
    hold(sim, a, 1, 0.0)
    sim.feed(ev.Beat(a, 1.5))
    assert not only(sim.tick(3.0), ev.AskStacks)
    assert only(sim.tick(3.6), ev.AskStacks) == [ev.AskStacks(a)]


def test_without_a_timeout_nothing_is_ever_hung() -> None:
    sim = Sim()
    a, _ = sim.start()
    hold(sim, a, 1, 0.0)
    assert not only(sim.tick(10_000.0), ev.AskStacks)


# -- stop --------------------------------------------------------------------------------------


def test_stop_drains_then_retires_once_everything_is_handed_over() -> None:
    sim = Sim(graceful_timeout=30.0)
    a, b = sim.start()
    hold(sim, a, 1, 0.0)
    actions = sim.feed(ev.StopRequested("SIGTERM", 0.0, busy=1))
    assert only(actions, ev.StopAccepting) and only(actions, ev.Notify) == [ev.Notify("stopping")]
    assert (
        "stopping on SIGTERM: draining 1 connections (up to 30s)"
        in records(actions, Event.STOPPING)[0].message
    )
    assert not only(sim.tick(0.1, undelivered=3), ev.SendStop)  # still handing over
    assert {s.pid for s in only(sim.tick(0.2), ev.SendStop)} == {a, b}
    for pid in (a, b):
        assert not only(sim.exit(pid), ev.Spawn)
    assert sim.policy.finished


def test_stop_tells_workers_still_starting_by_a_signal_too() -> None:
    """One still importing reads its channel only once the import ends, maybe never (a
    database it waits for): a stop would wait graceful_timeout for it. It gets a SIGTERM
    with its stop (the executor's), of which it dies while it imports and which from its
    lifespan's startup on it takes as a stop. A ready one is told by its channel alone."""
    sim = Sim(graceful_timeout=30.0)
    first = sim.spawn(sim.policy.start(sim.now))
    sim.ready(first[0])
    sim.feed(ev.StopRequested("SIGTERM", 0.0))
    assert not only(sim.tick(0.1, undelivered=1), ev.SendStop)  # still handing over
    actions = sim.tick(0.2)
    assert set(only(actions, ev.SendStop)) == {ev.SendStop(first[0]), ev.SendStop(first[1], True)}
    assert not only(actions, ev.Kill)
    sim.exit(first[0])
    sim.exit(first[1], ExitReason.KILLED)
    assert sim.policy.finished


def test_a_recycling_worker_past_a_stops_graceful_timeout_is_overdue_too() -> None:
    """Recycled, and still busy when the stop's time ran out: killed with its connections,
    which is no clean recycling (the record warns)."""
    sim = Sim(workers=1, max_requests=10, max_requests_jitter=0, graceful_timeout=5.0)
    [old] = sim.start()
    sim.policy.workers[old].served = 10
    sim.spawn(sim.feed(ev.Completions(frozenset({old}), 1.0)))  # its replacement starts
    sim.feed(ev.StopRequested("SIGTERM", 1.0))
    sim.tick(1.1)
    assert ev.Kill(old, ExitReason.OVERDUE) in only(sim.tick(6.5), ev.Kill)


def test_stop_past_graceful_timeout_kills_what_is_left() -> None:
    sim = Sim(graceful_timeout=5.0)
    a, b = sim.start()
    sim.feed(ev.StopRequested("SIGTERM", 0.0))
    sim.tick(0.1)
    actions = sim.tick(5.0)
    # Overdue, as at a reload: retired, they were still busy (the exit record warns).
    assert set(only(actions, ev.Kill)) == {
        ev.Kill(a, ExitReason.OVERDUE),
        ev.Kill(b, ExitReason.OVERDUE),
    }
    assert "graceful timeout: killing 2 workers" in only(actions, ev.Record)[0].message
    assert not sim.policy.finished
    sim.exit(a, ExitReason.KILLED)
    sim.exit(b, ExitReason.KILLED)
    assert sim.policy.finished


def test_a_second_sigint_stops_waiting_a_second_sigterm_does_not() -> None:
    sim = Sim(graceful_timeout=30.0)
    _a, _ = sim.start()
    sim.feed(ev.StopRequested("SIGINT", 0.0))
    assert sim.feed(ev.StopRequested("SIGTERM", 1.0)) == []
    assert only(sim.feed(ev.StopRequested("SIGINT", 2.0)), ev.Wake) == [ev.Wake(2.0)]
    assert {k.pid for k in only(sim.tick(2.0), ev.Kill)} == set(sim.policy.workers)


def test_stop_drops_a_reload_still_starting_and_nothing_respawns() -> None:
    sim = Sim()
    sim.start()
    incoming = sim.spawn(reload(sim))
    actions = sim.feed(ev.StopRequested("SIGTERM", 0.0))
    assert {k.pid for k in only(actions, ev.Kill)} == set(incoming)
    assert sim.policy.incoming is None
    assert not only(sim.exit(incoming[0]), ev.Spawn)


# -- the table ---------------------------------------------------------------------------------


def test_every_state_is_reachable_from_starting() -> None:
    seen, frontier = {S.STARTING}, [S.STARTING]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(WorkerState)


@pytest.mark.parametrize(
    ("state", "trigger"),
    [(S.GONE, Trigger.READY), (S.RETIRING, Trigger.HANG), (S.KILLED, Trigger.RETIRE)],
)
def test_a_move_the_table_does_not_list_is_refused(state, trigger) -> None:
    w = Worker(1, 1, state=state)
    with pytest.raises(TransitionError):
        advance(w, trigger)
    assert w.state is state


def test_exit_reasons_are_the_words_in_the_journal() -> None:
    assert [str(r) for r in ExitReason] == [
        "retired",
        "recycled",
        "hung",
        "overdue",
        "start-timeout",
        "oom",
        "crashed",
        "killed",
        "exited",
    ]
