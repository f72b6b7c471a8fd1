"""The main process of `dispatchers = N`: its pure parts, and its decisions as data."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from harness import only, records
from sockpool import config
from sockpool import lifecycle as ev
from sockpool.events import Event
from sockpool.lifecycle import Record
from sockpool.notify import ROUND, SERVES
from sockpool.spec import WorkerSpec
from sockpool.supervisor import (
    RECORD,
    Child,
    Exit,
    Exited,
    Fork,
    Hurry,
    LogLevel,
    Notify,
    Plan,
    Reload,
    Said,
    Signal,
    Started,
    Supervisor,
    Taken,
    Unreachable,
    Wake,
    parse_message,
    parse_status,
    share,
    split,
    sum_status,
    take_reload,
)


def test_split_is_as_even_as_whole_numbers_go() -> None:
    assert split(5, 2) == [3, 2]
    assert split(4, 2) == [2, 2]
    assert split(7, 3) == [3, 2, 2]
    assert sum(split(1001, 7)) == 1001


def test_share_keeps_the_totals() -> None:
    cfg = config.build(
        {"workers": 5, "max_connections": 101, "max_connections_per_source": 10}, {}, None
    )
    shares = [share(cfg, i, 2) for i in range(2)]
    assert [s.workers for s in shares] == [3, 2]
    assert [s.max_connections for s in shares] == [51, 50]
    assert [s.max_connections_per_source for s in shares] == [5, 5]
    assert {s.dispatchers for s in shares} == {2}  # each knows it is one of two
    # ...so its sync workers queue nothing ahead: a busy dispatcher would take connections
    # another one's idle worker could serve.
    assert {WorkerSpec.of(1, s, ["main"]).queue_ahead for s in shares} == {0}
    assert WorkerSpec.of(1, cfg, ["main"]).queue_ahead == 1  # on by default with one
    asked = config.build({"workers": 5, "queue_ahead": 0}, {}, None)
    assert WorkerSpec.of(1, asked, ["main"]).queue_ahead == 0
    off = config.build({"workers": 2}, {}, None)
    assert share(off, 1, 2).max_connections == 0  # off stays off
    tiny = config.build({"workers": 3, "max_connections": 2}, {}, None)
    assert [share(tiny, i, 3).max_connections for i in range(3)] == [1, 1, 1]  # never 0: off


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "expected a positive integer or 'auto', got 0"),
        ("many", "expected a positive integer or 'auto', got 'many'"),
        (True, "expected a positive integer or 'auto', got True"),
        (3, "3 is more than workers (2)"),
    ],
)
def test_bad_dispatchers(value: object, message: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.build({"workers": 2, "dispatchers": value}, {}, "f.toml")
    assert err.value.message.startswith("config f.toml: dispatchers: ")
    assert message in err.value.message


def test_dispatchers_flag() -> None:
    assert config.build({"workers": 4}, {"dispatchers": "2"}, None).dispatchers == 2
    assert config.build({}, {"dispatchers": "auto"}, None).dispatchers == "auto"
    with pytest.raises(config.ConfigError, match=r"^--dispatchers: expected a positive"):
        config.build({}, {"dispatchers": "many"}, None)


def test_status_is_parsed_and_summed() -> None:
    a = "workers 3/3, busy 1, parked 0, served 10, refused 2"
    b = "workers 1/2, busy 0, parked 4, served 5, refused 0, reloading"
    assert parse_status(b) == {
        "workers": (1, 2),
        "busy": (0,),
        "parked": (4,),
        "served": (5,),
        "refused": (0,),
    }
    assert sum_status([a, b]) == "workers 4/5, busy 1, parked 4, served 15, refused 2"
    assert sum_status([]) == ""
    assert sum_status(["a figure 3", "a figure 4, new 1"]) == "a figure 7, new 1"


def test_messages_are_parsed() -> None:
    assert parse_message(b"READY=1\nSTATUS=workers 1/1, busy 0") == [
        ("READY", "1"),
        ("STATUS", "workers 1/1, busy 0"),
    ]
    assert parse_message(b"WATCHDOG=1") == [("WATCHDOG", "1")]
    text = f"{RECORD}=reload failed: first line\nsecond=line"
    assert parse_message(text.encode()) == [(RECORD, "reload failed: first line\nsecond=line")]
    text = f"{ROUND}=3\n{RECORD}=failed: a {RECORD}=b\nc=d"  # a record comes last, whole
    assert parse_message(text.encode()) == [(ROUND, "3"), (RECORD, f"failed: a {RECORD}=b\nc=d")]
    assert parse_message(b"garbage\n\xff") == []


# -- the main process's decisions ------------------------------------------------------------


def plan(parts: int = 2, watchdog: float = 0.0, **values: object) -> Plan:
    cfg = config.build({"workers": 4, "dispatchers": parts, **values}, {}, None)
    p = Plan(cfg, parts, watchdog)
    assert p.start(0.0) == [Fork(i) for i in range(parts)]
    for i in range(parts):
        assert p.handle(Started(i, 100 + i, 0.0)) == []
    return p


def say(p: Plan, index: int, *lines: str, now: float = 1.0) -> list:
    return p.handle(Said(index, parse_message("\n".join(lines).encode()), now))


def answer(p: Plan, index: int, *lines: str, now: float = 1.0) -> list:
    """What a dispatcher says once it took the reload last asked of it: every state change
    it sends names that reload (notify.Notifier.round)."""
    return say(p, index, f"{ROUND}={p.round}", *lines, now=now)


def events(actions: list) -> list:
    """The records' events and the other actions, for comparison."""
    return [a.event if isinstance(a, Record) else a for a in actions]


def notified(actions: list) -> list[str]:
    return [a.assignments[0] for a in actions if isinstance(a, Notify)]


def test_a_status_with_no_figures_keeps_the_last_ones() -> None:
    """A dispatcher's RELOADING=1 comes with a bare STATUS=reloading: the service's status
    keeps its figures, not "starting", until the next one with figures."""
    p = plan()
    say(p, 0, "READY=1", "STATUS=workers 2/2, busy 1, served 3")
    say(p, 1, "READY=1", "STATUS=workers 2/2, busy 0, served 4")
    say(p, 0, "RELOADING=1", "STATUS=reloading")
    assert p.status() == "workers 4/4, busy 1, served 7, dispatchers 2/2"
    say(p, 0, "STATUS=workers 1/2, busy 0, served 3, reloading")
    assert p.status().startswith("workers 3/4, busy 0, served 7")


def test_ready_once_every_dispatcher_is() -> None:
    p = plan()
    assert say(p, 0, "READY=1", "STATUS=workers 2/2, busy 0, served 0") == []
    actions = say(p, 1, "READY=1", "STATUS=workers 2/2, busy 1, served 3")
    assert events(actions)[0] is Event.READY and notified(actions) == ["READY=1"]
    assert actions[-1].assignments[1] == "STATUS=workers 4/4, busy 1, served 3, dispatchers 2/2"
    assert say(p, 0, "READY=1") == []  # said again: nothing new


def serving(cfg: config.Config, index: int, parts: int = 2) -> str:
    """What a dispatcher's READY=1 says it serves: the digest of its share of `cfg`."""
    return f"{SERVES}={share(cfg, index, parts).digest}"


def ready(parts: int = 2, **values: object) -> Plan:
    p = plan(parts, **values)
    for i in range(parts):
        say(p, i, "READY=1", "STATUS=workers 2/2, busy 0, served 0")
    return p


def test_reload_is_forwarded_and_ready_again_once_all_reloaded() -> None:
    p = ready()
    settings = {"workers": 4, "dispatchers": 2, "graceful_timeout": 5, "log_level": "debug"}
    new = config.build(settings, {}, None)
    actions = p.handle(ev.ReloadRequested(new, "", 2.0))
    assert events(actions) == [
        Event.RELOADING,
        Notify(("RELOADING=1", "STATUS=reloading")),  # first: an ask may fail at once
        Reload(0, 1, share(new, 0, 2)),  # the configuration as the main process read it
        Reload(1, 1, share(new, 1, 2)),
    ]
    assert p.asked == [new] and new != p.config  # the service's once a dispatcher serves it
    assert say(p, 0, f"{ROUND}=0", "READY=1") == []  # from before it took the reload
    assert answer(p, 0, "RELOADING=1") == answer(p, 0, "READY=1", serving(new, 0)) == []
    assert answer(p, 1, "RELOADING=1") == []
    actions = answer(p, 1, "READY=1", serving(new, 1))
    # Its own log level once all have reloaded (a reload that fails changes none).
    assert events(actions)[:2] == [LogLevel("debug"), Event.READY]
    assert "reloaded" in actions[1].message and notified(actions) == ["READY=1"]
    assert p.config == new and p.asked == []  # a dispatcher started now gets it


def test_a_dispatcher_reload_that_failed_is_recorded_once_and_changes_nothing() -> None:
    p = ready()
    before = p.config
    broken = config.build({"workers": 4, "dispatchers": 2, "handler": "no:module"}, {}, None)
    p.handle(ev.ReloadRequested(broken, "", 2.0))
    for i in (0, 1):
        answer(p, i, "RELOADING=1")
        answer(p, i, f"{RECORD}=reload failed, still serving the old generation: no module")
    answer(p, 0, "READY=1")
    actions = answer(p, 1, "READY=1")
    assert events(actions)[0] is Event.RELOAD_FAILED and not only(actions, LogLevel)
    assert actions[0].message == "reload failed, still serving the old generation: no module"
    assert actions[0].level == logging.ERROR and notified(actions) == ["READY=1"]
    # A dispatcher restarted now gets what they all serve, not the reload that failed.
    assert p.config is before and p.asked == []


def test_a_bad_configuration_never_reaches_the_dispatchers() -> None:
    p = ready()
    actions = p.handle(ev.ReloadRequested(None, "workers: expected a positive integer", 2.0))
    assert events(actions) == [
        Event.RELOADING,
        Event.RELOAD_FAILED,
        Notify(("RELOADING=1", "STATUS=reloading")),
        Notify(("READY=1", "STATUS=workers 4/4, busy 0, served 0, dispatchers 2/2")),
    ]


def test_a_reload_asking_for_another_count_says_so_and_keeps_it() -> None:
    p = ready()
    new = config.build({"workers": 4, "dispatchers": 4, "listen": ["127.0.0.1:1"]}, {}, None)
    actions = p.handle(ev.ReloadRequested(new, "", 2.0))
    said = [r.message for r in records(actions, None)]
    assert said == [
        "listen, dispatchers (4 asked, 2 serving): a reload keeps what runs; "
        "a restart applies the change"
    ]
    assert p.parts == 2 and len(only(actions, Reload)) == 2
    # Measured against what started, not the last reload: the second one says it again.
    actions = p.handle(ev.ReloadRequested(new, "", 3.0))
    assert records(actions, None)


def test_stop_is_forwarded_and_the_worst_exit_code_wins() -> None:
    p = ready()
    say(p, 0, "STATUS=workers 2/2, busy 3, served 0")
    actions = p.handle(ev.StopRequested("SIGINT", 3.0))
    assert events(actions)[0] is Event.STOPPING
    assert actions[0].message == (
        "stopping on SIGINT: draining 3 connections in 2 dispatchers, as they last reported "
        "(up to 30s)"
    )
    assert notified(actions) == ["STOPPING=1"]
    assert only(actions, Signal) == [
        Signal(0, signal.SIGTERM),  # not SIGINT: a second one cuts the drain short
        Signal(1, signal.SIGTERM),
    ]
    assert p.handle(ev.StopRequested("SIGTERM", 3.1)) == []
    assert p.handle(ev.StopRequested("SIGINT", 3.2)) == [Hurry(0), Hurry(1)]  # a message
    assert p.handle(Exited(0, "exited with status 0", 0, 4.0)) == []  # not a restart
    actions = p.handle(Exited(1, "killed by signal SIGKILL", 137, 4.0))
    assert actions[-1] == Exit(137)


def test_a_dispatcher_that_dies_is_started_again() -> None:
    p = ready()
    actions = p.handle(Exited(1, "killed by signal SIGKILL", 137, 5.0))
    assert actions[0].message == "dispatcher 1 killed by signal SIGKILL; starting another"
    assert actions[1:] == [Fork(1)]  # it had served: at once
    assert p.status().endswith("dispatchers 1/2")
    p.handle(Started(1, 200, 5.0))
    # One that dies before it is ready again waits, longer each time, then the main
    # process gives up.
    waits = []
    for n in range(4):
        actions = p.handle(Exited(1, "exited with status 1", 1, 6.0 + n))
        waits += [a.at - (6.0 + n) for a in actions if isinstance(a, Wake)]
        assert p.handle(ev.Tick(7.0 + n + 20)) == [Fork(1)]
        p.handle(Started(1, 300 + n, 7.0 + n))
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8])
    actions = p.handle(Exited(1, "exited with status 1", 1, 20.0))
    assert actions[0].message == "dispatcher 1 exited with status 1"  # none started now
    assert [a.level for a in actions if isinstance(a, Record)][-1] == logging.CRITICAL
    assert Signal(0, signal.SIGTERM) in actions and p.stopping
    assert p.handle(Exited(0, "exited with status 0", 0, 21.0))[-1] == Exit(70)


def test_a_dispatcher_that_gave_up_stops_the_service_and_none_starts() -> None:
    p = ready()
    actions = p.handle(Exited(1, "exited with status 70", 70, 5.0))
    assert [a.message for a in actions if isinstance(a, Record)] == [
        "dispatcher 1 exited with status 70",
        "dispatcher 1 gave up: stopping the service",
    ]
    assert not [a for a in actions if isinstance(a, Fork | Wake)] and p.stopping


def test_workers_failing_in_a_dispatcher_stops_the_service() -> None:
    p = plan()
    actions = p.handle(Exited(0, "exited with status 70", 70, 1.0))
    assert Fork(0) not in actions and Signal(1, signal.SIGTERM) in actions
    assert p.handle(Exited(1, "exited with status 0", 0, 2.0))[-1] == Exit(70)


def test_no_restart_while_stopping() -> None:
    p = ready()
    p.handle(Exited(0, "killed by signal SIGKILL", 137, 1.0))  # Fork(0) is on its way
    p.handle(ev.StopRequested("SIGTERM", 1.0))
    assert p.handle(ev.Tick(100.0)) == []


def test_watchdog_fed_only_while_every_dispatcher_feeds_its_own() -> None:
    p = plan(watchdog=1.0)  # systemd's interval is 2 s
    assert p.healthy(1.9)  # started at 0: they have until 2
    say(p, 0, "WATCHDOG=1", now=1.5)
    assert not p.healthy(2.1)  # dispatcher 1 never fed
    say(p, 1, "WATCHDOG=1", now=2.2)
    assert p.healthy(2.3) and not p.healthy(3.6)
    p.handle(Exited(0, "killed by signal SIGKILL", 137, 3.7))
    assert p.healthy(3.8)  # being restarted is not hanging
    assert plan().healthy(1000.0)  # no watchdog asked for


def test_a_reload_with_no_dispatcher_running_is_what_the_next_ones_start_with() -> None:
    p = ready()
    for i in (0, 1):  # both died: each waits to start again
        p.handle(Exited(i, "killed by signal SIGKILL", 137, 1.0))
    new = config.build({"workers": 4, "dispatchers": 2, "log_level": "warning"}, {}, None)
    actions = p.handle(ev.ReloadRequested(new, "", 1.0))
    assert LogLevel("warning") in actions and not only(actions, Reload)
    assert notified(actions) == ["RELOADING=1", "READY=1"]  # systemd's reload ends too
    assert p.config == new


BROKEN = {"workers": 4, "dispatchers": 2, "handler": "no:module", "log_level": "warning"}


def test_a_reload_whose_other_dispatcher_died_before_saying_is_not_adopted() -> None:
    """A death is no success: the restart must get what serves, not a handler that failed
    (its workers would never start, it would exit 70, and the service with it)."""
    p = ready()
    before = p.config
    p.handle(ev.ReloadRequested(config.build(BROKEN, {}, None), "", 2.0))
    answer(p, 0, "RELOADING=1")
    answer(p, 0, f"{RECORD}=reload failed, still serving the old generation: no module")
    answer(p, 0, "READY=1")
    actions = p.handle(Exited(1, "killed by signal SIGKILL", 137, 3.0))
    assert Fork(1) in actions and not only(actions, LogLevel)
    assert events(actions)[-2] is Event.RELOAD_FAILED and notified(actions) == ["READY=1"]
    assert p.config is before


def test_a_dispatcher_started_during_a_reload_that_works_is_asked_to_reload_too() -> None:
    p = ready()
    new = config.build({"workers": 4, "dispatchers": 2, "log_level": "warning"}, {}, None)
    p.handle(ev.ReloadRequested(new, "", 2.0))
    assert p.handle(Exited(1, "killed by signal SIGKILL", 137, 2.5))[-1] == Fork(1)
    p.handle(Started(1, 201, 2.5))  # started with what served before: not yet proven
    say(p, 1, f"{ROUND}=0", "READY=1", serving(p.config, 1))
    answer(p, 0, "RELOADING=1")
    actions = answer(p, 0, "READY=1", serving(new, 0))  # it serves the reload: adopted
    # Asked as a reload of its own number: no READY=1 yet.
    assert actions == [LogLevel("warning"), Reload(1, 2, share(new, 1, 2))]
    assert p.config == new
    answer(p, 1, "RELOADING=1")
    actions = answer(p, 1, "READY=1", serving(new, 1))
    assert events(actions)[0] is Event.READY and notified(actions) == ["READY=1"]


def test_a_newer_reload_forgets_the_failure_of_the_one_before() -> None:
    p = ready()
    p.handle(ev.ReloadRequested(config.build(BROKEN, {}, None), "", 2.0))
    answer(p, 0, "RELOADING=1", f"{RECORD}=reload failed: no module")
    good = config.build({"workers": 4, "dispatchers": 2, "graceful_timeout": 9}, {}, None)
    p.handle(ev.ReloadRequested(good, "", 3.0))  # before either said READY=1
    for i in (0, 1):
        answer(p, i, "RELOADING=1")
    answer(p, 0, "READY=1", serving(good, 0))
    actions = answer(p, 1, "READY=1", serving(good, 1))
    assert events(actions)[1] is Event.READY and p.config == good


def test_a_reload_no_dispatcher_lived_to_serve_is_no_success() -> None:
    p = ready()
    before = p.config
    p.handle(ev.ReloadRequested(config.build(BROKEN, {}, None), "", 2.0))
    p.handle(Exited(0, "killed by signal SIGKILL", 137, 2.5))
    p.handle(Started(0, 200, 2.5))
    say(p, 0, f"{ROUND}=0", "READY=1", serving(before, 0))  # started with what served
    actions = p.handle(Exited(1, "killed by signal SIGKILL", 137, 3.0))
    [failed] = records(actions, Event.RELOAD_FAILED)
    assert failed.message == "reload failed: no dispatcher serves the new configuration"
    assert p.config is before and notified(actions) == ["READY=1"]


def test_an_older_reloads_answers_decide_nothing() -> None:
    """Read after a newer SIGHUP, an older reload's error, RELOADING=1 and READY=1 neither
    end the newer reload early nor fail it: each names the reload it answers."""
    p = ready()
    first = config.build({"workers": 4, "dispatchers": 2, "graceful_timeout": 7}, {}, None)
    p.handle(ev.ReloadRequested(first, "", 2.0))
    second = config.build({"workers": 4, "dispatchers": 2, "graceful_timeout": 8}, {}, None)
    p.handle(ev.ReloadRequested(second, "", 2.1))
    for i in (0, 1):
        assert say(p, i, f"{ROUND}=1", f"{RECORD}=reload failed: the first one's") == []
        assert say(p, i, f"{ROUND}=1", "RELOADING=1") == []
        assert say(p, i, f"{ROUND}=1", "READY=1", serving(first, i)) == []
    assert p.reloading and p.asked == [first, second]
    answer(p, 0, "RELOADING=1")
    answer(p, 0, "READY=1", serving(second, 0))
    actions = answer(p, 1, "READY=1", serving(second, 1))  # its RELOADING=1 lost: no matter
    assert [r.message for r in records(actions, Event.READY)] == ["reloaded: 2 dispatchers serve"]
    assert p.config == second and not p.reloading


def test_what_a_dispatcher_serves_decides_not_only_that_it_answered() -> None:
    """An answer that still serves the old configuration is no success, even when no record
    of the failure reached the main process."""
    p = ready()
    before = p.config
    broken = config.build(BROKEN, {}, None)
    p.handle(ev.ReloadRequested(broken, "", 2.0))
    answer(p, 0, "READY=1", serving(before, 0))  # its reload failed: the old one serves
    actions = answer(p, 1, "READY=1", serving(before, 1))
    [failed] = records(actions, Event.RELOAD_FAILED)
    assert failed.message == "reload failed: dispatcher 0 still serves what it served before"
    assert not only(actions, Reload)  # it failed that one: not asked again
    assert p.config is before


def test_a_sighup_before_the_first_ready_ends_with_it() -> None:
    p = plan()
    new = config.build({"workers": 4, "dispatchers": 2, "log_level": "debug"}, {}, None)
    p.handle(ev.ReloadRequested(new, "", 0.5))
    for i in (0, 1):
        answer(p, i, "RELOADING=1")
    answer(p, 0, "READY=1", serving(new, 0))
    actions = answer(p, 1, "READY=1", serving(new, 1))
    assert [e for e in events(actions) if isinstance(e, Event)] == [Event.READY, Event.READY]
    assert notified(actions) == ["READY=1", "READY=1"] and not p.reloading
    assert p.config == new


def test_a_reload_of_the_same_file_whose_new_code_fails_everywhere_says_so() -> None:
    """The usual deploy: the file is the same, the handler's code is new and broken. Each
    dispatcher fails it: no success, no '0 of 2', even with the digest it served before
    (the main process numbers each read, Config.loaded: the error alone must say it)."""
    p = ready()
    p.handle(ev.ReloadRequested(p.config, "", 2.0))
    for i in (0, 1):
        answer(p, i, "RELOADING=1")
        answer(p, i, f"{RECORD}=reload failed, still serving the old generation: x")
        actions = answer(p, i, "READY=1", serving(p.config, i))
    [failed] = records(actions, Event.RELOAD_FAILED)
    assert failed.message == "reload failed, still serving the old generation: x"
    assert not only(actions, LogLevel)


def test_a_dispatcher_that_dropped_a_reload_of_the_same_file_is_asked_for_it_again() -> None:
    """Two reloads of the same file in quick succession, new code and then broken code.
    Dispatcher 0 served the first before the second failed; dispatcher 1 dropped the first
    for the second, failed it, and serves the code from before both. Each read is a
    configuration of its own, so it is asked for the first, and its failure is said."""
    p = ready()
    before = p.config
    first, second = (dataclasses.replace(before, loaded=n) for n in (1, 2))
    p.handle(ev.ReloadRequested(first, "", 2.0))
    answer(p, 0, "READY=1", serving(first, 0))
    p.handle(ev.ReloadRequested(second, "", 2.1))
    failing = f"{RECORD}=reload failed, still serving the old generation: SyntaxError"
    for i, serves in ((0, first), (1, before)):
        answer(p, i, failing)  # a record comes last in its message: one of its own
        actions = answer(p, i, "READY=1", serving(serves, i))
    assert p.config == first  # served by dispatcher 0 until the second failed
    assert events(actions)[1] is Event.RELOAD_FAILED and not notified(actions)
    assert only(actions, Reload) == [Reload(1, p.round, share(first, 1, 2))]
    answer(p, 1, failing)  # the code on disk is still broken
    actions = answer(p, 1, "READY=1", serving(before, 1))
    [failed] = records(actions, Event.RELOAD_FAILED)
    assert failed.message.endswith("(1 of 2 dispatchers)") and notified(actions) == ["READY=1"]
    assert not only(actions, Reload)  # never asked for what it failed: no loop


def test_each_reload_read_is_a_configuration_of_its_own() -> None:
    cfg = config.build({"workers": 4, "dispatchers": 2}, {}, None)
    supervisor = Supervisor([], cfg, lambda: cfg, 2, lambda exc: None)
    try:
        reads = [supervisor._reloaded() for _ in range(2)]
    finally:
        supervisor.loop.close()
    assert [r.loaded for r in reads] == [1, 2]
    assert len({cfg.digest, *(r.digest for r in reads)}) == 3
    assert dataclasses.replace(reads[0], loaded=0) == cfg  # nothing else changed


def test_a_configurations_digest_is_the_same_in_another_process() -> None:
    """What a dispatcher says it serves must match what the main process computes: a field
    whose repr held an address would fail every reload of N dispatchers, silently."""
    values = {"workers": 5, "dispatchers": 2, "max_connections": 7, "listeners": {"a": {}}}
    values["listeners"] = {"a": {"handler": "m:h", "proxy_protocol": "v2"}}
    script = (
        "from sockpool import config, supervisor\n"
        f"c = config.build({values!r}, {{}}, None)\n"
        "print(supervisor.share(c, 1, 2).digest)\n"
    )
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == share(config.build(values, {}, None), 1, 2).digest


def test_a_dispatcher_the_reload_cannot_reach_keeps_what_it_serves() -> None:
    p = ready()
    new = config.build({"workers": 4, "dispatchers": 2, "graceful_timeout": 9}, {}, None)
    p.handle(ev.ReloadRequested(new, "", 2.0))
    reason = "reload failed: cannot reach dispatcher 1: Resource temporarily unavailable"
    assert p.handle(Unreachable(1, reason)) == []  # dispatcher 0 still reloads
    actions = answer(p, 0, "READY=1", serving(new, 0))
    [failed] = records(actions, Event.RELOAD_FAILED)
    assert failed.message == reason + " (1 of 2 dispatchers)"
    assert p.config == new and not only(actions, Reload)  # not asked again: it would loop


def test_a_reload_reaches_the_dispatcher_whole_and_named() -> None:
    """The configuration the main process read goes with the reload's number, however
    large (here beyond what one message can carry), and bad messages fail that reload
    without leaking a descriptor."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    child = Child(1)
    child.sock = ours
    tables = {f"l{i}": {"handler": f"m{i}{'x' * 250}:h"} for i in range(1024)}
    big = config.build({"workers": 4, "dispatchers": 2, "listeners": tables}, {}, None)
    fds = len(os.listdir("/proc/self/fd"))
    try:
        assert take_reload(theirs) is None  # nothing sent yet
        child.ask(Reload(1, 7, big))
        taken = take_reload(theirs)
        assert taken == Taken(7, big, "") and taken.config.digest == big.digest
        ours.send(b"hello")
        assert take_reload(theirs) == Taken(
            0, None, "a bad reload message from the main process: b'hello'"
        )
        ours.send(f"{ROUND}=8".encode())
        assert take_reload(theirs) == Taken(
            8, None, "the configuration did not come (no descriptor)"
        )
        junk = os.memfd_create("junk")
        os.write(junk, b"not a pickle")
        socket.send_fds(ours, [f"{ROUND}=9".encode()], [junk])
        os.close(junk)
        taken = take_reload(theirs)
        assert taken.round == 9 and taken.config is None
        assert taken.error.startswith("cannot read the configuration: ")
        assert len(os.listdir("/proc/self/fd")) == fds
        ours.close()
        with pytest.raises(EOFError):  # the main process is gone
            take_reload(theirs)
    finally:
        ours.close()
        theirs.close()


def test_a_reload_that_took_effect_before_a_newer_one_failed_is_the_services() -> None:
    """Two SIGHUPs: the first reload is served everywhere before the second, broken, comes.
    The dispatchers serve the first: a dispatcher started later gets it, not what served
    before both."""
    p = ready()
    first = config.build({"workers": 4, "dispatchers": 2, "log_level": "warning"}, {}, None)
    p.handle(ev.ReloadRequested(first, "", 2.0))
    p.handle(ev.ReloadRequested(config.build(BROKEN, {}, None), "", 2.1))
    for i in (0, 1):
        say(p, i, f"{ROUND}=1", "READY=1", serving(first, i))
        answer(p, i, f"{RECORD}=reload failed, still serving the old generation: no module")
    answer(p, 0, "READY=1", serving(first, 0))
    actions = answer(p, 1, "READY=1", serving(first, 1))
    [failed] = records(actions, Event.RELOAD_FAILED)
    assert failed.message == "reload failed, still serving the old generation: no module"
    assert LogLevel("warning") in actions and p.config == first and p.asked == []


def test_a_reload_asked_before_the_first_ready_tells_systemd_nothing_early() -> None:
    """READY=1 to systemd while no dispatcher is ready would end the start too soon."""
    p = plan()
    new = config.build({"workers": 4, "dispatchers": 2, "graceful_timeout": 9}, {}, None)
    actions = p.handle(ev.ReloadRequested(new, "", 0.5))
    assert not only(actions, Notify) and len(only(actions, Reload)) == 2
    p.handle(Unreachable(0, "reload failed: cannot send the reload to dispatcher 0: x"))
    actions = p.handle(Unreachable(1, "reload failed: cannot send the reload to dispatcher 1: x"))
    assert records(actions, Event.RELOAD_FAILED) and not only(actions, Notify)
    say(p, 0, "READY=1", serving(p.config, 0))
    actions = say(p, 1, "READY=1", serving(p.config, 1))
    assert notified(actions) == ["READY=1"] and p.config != new


def test_a_reload_still_open_at_the_first_ready_is_told_to_systemd_then() -> None:
    """One dispatcher was ready (its READY=1 was on its way) before it took the reload:
    the start ends, and systemd hears RELOADING=1 after it, so the reload is not lost."""
    p = plan()
    new = config.build({"workers": 4, "dispatchers": 2, "graceful_timeout": 9}, {}, None)
    p.handle(ev.ReloadRequested(new, "", 0.5))
    answer(p, 0, "READY=1", serving(new, 0))
    actions = say(p, 1, f"{ROUND}=0", "READY=1", serving(p.config, 1))  # sent before it
    assert notified(actions) == ["READY=1", "RELOADING=1"] and p.reloading
    actions = answer(p, 1, "READY=1", serving(new, 1))
    assert notified(actions) == ["READY=1"] and records(actions, Event.READY)
    assert p.config == new and not p.reloading


def test_a_reload_asked_again_at_the_first_ready_is_told_to_systemd_before_the_ask() -> None:
    """A dispatcher restarted during the start got what served before: the reload adopted
    as the start ends asks it again, and systemd hears RELOADING=1 first."""
    p = plan()
    new = config.build({"workers": 4, "dispatchers": 2, "graceful_timeout": 9}, {}, None)
    p.handle(ev.ReloadRequested(new, "", 0.5))
    p.handle(Exited(1, "exited with status 1", 1, 0.6))  # before it was ever ready
    answer(p, 0, "READY=1", serving(new, 0))
    p.handle(ev.Tick(5.0))
    p.handle(Started(1, 201, 5.0))
    actions = say(p, 1, f"{ROUND}=0", "READY=1", serving(p.config, 1))
    assert notified(actions) == ["READY=1", "RELOADING=1"]
    assert actions.index(Reload(1, 2, share(new, 1, 2))) > 2 and p.reloading
    actions = answer(p, 1, "READY=1", serving(new, 1))
    assert notified(actions) == ["READY=1"] and not p.reloading


def failing(p: Plan, serves: dict[int, config.Config], why: str) -> list:
    """Each dispatcher's answer to the reload last asked: failed, still serving its
    `serves`. What the last answer did."""
    for i, cfg in serves.items():
        answer(p, i, f"{RECORD}=reload failed, still serving the old generation: {why}")
        actions = answer(p, i, "READY=1", serving(cfg, i, p.parts))
    return actions


def a_then_broken_b() -> tuple[Plan, config.Config, config.Config, list]:
    """Reload A, then B, broken: dispatcher 0 had swapped to A when B came, while on
    dispatcher 1 B replaced A's generation, still starting, and failed."""
    p = ready()
    before = p.config
    first = config.build({"workers": 4, "dispatchers": 2, "graceful_timeout": 7}, {}, None)
    p.handle(ev.ReloadRequested(first, "", 2.0))
    p.handle(ev.ReloadRequested(config.build(BROKEN, {}, None), "", 2.1))
    say(p, 0, f"{ROUND}=1", "READY=1", serving(first, 0))
    return p, before, first, failing(p, {0: first, 1: before}, "no module")


def test_a_dispatcher_a_failed_reload_left_behind_is_asked_for_what_the_others_serve() -> None:
    """A is the service's, and dispatcher 1 is asked for it, not left on what served
    before both."""
    p, _, first, actions = a_then_broken_b()
    [failed] = records(actions, Event.RELOAD_FAILED)  # B's, said at once
    assert failed.message == "reload failed, still serving the old generation: no module"
    assert only(actions, Reload) == [Reload(1, 3, share(first, 1, 2))]
    assert not only(actions, Notify) and p.reloading and p.config == first
    actions = answer(p, 1, "READY=1", serving(first, 1))
    assert [r.message for r in records(actions, Event.READY)] == [
        "caught up: 2 dispatchers serve the service's configuration"  # not B's "reloaded"
    ]
    assert notified(actions) == ["READY=1"] and not p.reloading


def test_a_dispatcher_asked_again_is_not_forgotten_when_a_newer_reload_fails() -> None:
    """Then reload C, broken, before dispatcher 1 answered: C dropped A's generation there,
    still starting. A is still the service's: asked again."""
    p, before, first, _ = a_then_broken_b()
    other = dict(BROKEN, handler="other:module")
    p.handle(ev.ReloadRequested(config.build(other, {}, None), "", 2.5))
    actions = failing(p, {0: first, 1: before}, "other")
    assert only(actions, Reload) == [Reload(1, 5, share(first, 1, 2))]
    assert not only(actions, Notify) and p.reloading
    actions = answer(p, 1, "READY=1", serving(first, 1))
    assert notified(actions) == ["READY=1"] and not p.reloading


def test_a_reload_found_left_in_a_socket_after_a_newer_one_could_not_be_sent_is_undone() -> None:
    """Reload A reached both; B could not be sent to dispatcher 1, which had not read A
    yet. It serves A later, with no reload open: it is asked for B, as a reload."""
    p = ready()
    first = config.build({"workers": 4, "dispatchers": 2, "graceful_timeout": 7}, {}, None)
    second = config.build({"workers": 4, "dispatchers": 2, "graceful_timeout": 8}, {}, None)
    p.handle(ev.ReloadRequested(first, "", 2.0))
    answer(p, 0, "READY=1", serving(first, 0))
    p.handle(ev.ReloadRequested(second, "", 2.1))
    p.handle(Unreachable(1, "reload failed: cannot send the reload to dispatcher 1: EAGAIN"))
    answer(p, 0, "READY=1", serving(second, 0))
    assert p.config == second and not p.reloading
    actions = say(p, 1, f"{ROUND}=1", "READY=1", serving(first, 1))  # it reads A only now
    assert [r.message for r in records(actions, Event.RELOADING)] == [
        "reloading: dispatcher 1 serves another configuration than the service's"
    ]
    assert notified(actions) == ["RELOADING=1"]
    assert only(actions, Reload) == [Reload(1, 3, share(second, 1, 2))]
    actions = answer(p, 1, "READY=1", serving(second, 1))
    assert notified(actions) == ["READY=1"] and records(actions, Event.READY)


def test_a_catch_up_counts_who_serves_and_never_asks_the_dying() -> None:
    """Dispatcher 1 could not be sent B; the reload A left in its socket fails there, so
    what it serves does not change: it is still asked for B (not only when it changes)."""
    p = ready(3)
    before = p.config
    first = config.build({"workers": 4, "dispatchers": 3, "graceful_timeout": 7}, {}, None)
    second = config.build({"workers": 4, "dispatchers": 3, "graceful_timeout": 8}, {}, None)
    p.handle(ev.ReloadRequested(first, "", 2.0))
    for i in (0, 2):
        answer(p, i, "READY=1", serving(first, i, 3))
    p.handle(ev.ReloadRequested(second, "", 2.1))
    p.handle(Unreachable(1, "reload failed: cannot send the reload to dispatcher 1: EAGAIN"))
    answer(p, 0, "READY=1", serving(second, 0, 3))
    failing(p, {2: first}, "no module")  # dispatcher 2 failed B: it stays on A
    # A dying dispatcher's last words start nothing: its Exited decides.
    said = parse_message(f"{ROUND}=1\nREADY=1\n{serving(before, 1, 3)}".encode())
    assert p.handle(Said(1, said, 3.0, dying=True)) == []
    actions = say(p, 1, f"{ROUND}=1", "READY=1", serving(before, 1, 3))  # alive after all
    assert only(actions, Reload) == [Reload(1, 3, share(second, 1, 3))]
    actions = answer(p, 1, "READY=1", serving(second, 1, 3))
    assert [r.message for r in records(actions, Event.READY)] == [
        "caught up: 2 of 3 dispatchers serve the service's configuration"  # 2 is on A
    ]


def test_a_reload_served_by_a_dispatcher_that_died_since_is_adopted() -> None:
    """Its READY=1, read only once it had died, proved the configuration works: the one
    started in its place gets it, whichever the main process read first."""
    p = ready()
    new = config.build({"workers": 4, "dispatchers": 2, "graceful_timeout": 9}, {}, None)
    p.handle(ev.ReloadRequested(new, "", 2.0))
    failing(p, {0: p.config}, "x")
    said = parse_message(f"{ROUND}=1\nREADY=1\n{serving(new, 1)}".encode())
    assert p.handle(Said(1, said, 3.0, dying=True)) == []
    actions = p.handle(Exited(1, "killed by signal SIGKILL", 137, 3.0))
    assert Fork(1) in actions and p.config == new
    [failed] = records(actions, Event.RELOAD_FAILED)
    assert failed.message.endswith("(1 of 2 dispatchers)")
