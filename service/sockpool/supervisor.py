"""More than one core: N dispatcher processes under one main process (`dispatchers = N`).

    systemd --signals--> main process (this module) --signals, reloads--> N dispatchers
    each dispatcher --sd_notify-style lines over a socketpair--> main process --> systemd

A reload goes down the same socketpair (Child.ask): its number, and the configuration the
main process read. Each dispatcher names that number in what it says next, as no signal
says which reload a message answers; and none reads the file again, which may have changed.

Each dispatcher runs the ordinary Dispatcher with its share of the workers and of the
connection limits, and accepts from the same listening sockets. Not with EPOLLEXCLUSIVE:
the kernel gives an exclusive wake-up to the first dispatcher sleeping in epoll_wait, and a
dispatcher whose workers are all busy sleeps there without accepting (back-pressure), so it
would swallow the wake-ups while another one's workers idle (a test shows it). So every
dispatcher is woken and one with room accepts; the others' accept() finds nothing.

The main process stays systemd's MAINPID (NotifyAccess=main holds): it sends READY=1 once every
dispatcher is ready, sums their STATUS=, forwards reload and stop, feeds the watchdog only
while every dispatcher feeds its own, restarts a dispatcher that dies, and writes the
journal's lifecycle records once for the service. With one dispatcher none of this runs.

`Plan` decides, with no I/O (events in, actions out, as policy.py does for workers), so its
tests need no process; `Supervisor` carries the actions out: uvicorn's multiprocess
supervisor (one `Child` per process, owning its pipe) with gunicorn's arbiter's rule that a
signal handler only queues (eventloop.Loop delivers signals from the loop).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import mmap
import os
import pickle
import re
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

from . import channel, log, notify, records
from . import lifecycle as ev
from .config import Config, as_reloaded
from .errors import ExitCode, Fatal, digits
from .eventloop import SIGNALS, Loop
from .events import Event
from .lifecycle import Record
from .listeners import Listener
from .process import describe_status, reaped

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

MAX_BACKOFF = 10.0  # seconds between restarts of a dispatcher that keeps dying, at most
MAX_FAILURES = 5  # deaths in a row before it ever got ready: the main process gives up
# Records a dispatcher leaves to the main process, which writes them once for the service.
_MAIN_RECORDS = frozenset(
    e.value
    for e in (Event.STARTED, Event.READY, Event.RELOADING, Event.RELOAD_FAILED, Event.STOPPING)
)
RECORD = "X_SOCKPOOL_RECORD"  # a dispatcher's failed reload, for the main process to write
HURRY = b"HURRY=1"  # to a dispatcher, beside reloads: a second Ctrl-C (Hurry)


# -- pure parts ------------------------------------------------------------------------------


def split(total: int, parts: int) -> list[int]:
    """`total` over `parts` as evenly as whole numbers go: 5 over 2 is [3, 2]."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def share(config: Config, index: int, parts: int) -> Config:
    """Dispatcher `index`'s configuration: its share of the workers and of the connection
    limits, so that the totals still hold. A limit below `parts` still gives each one
    (0 would turn it off). max_connections_per_source is split too, but a source's
    connections do not all reach one dispatcher: one dispatcher may refuse a source at its
    share while another has room, so a source gets between limit/parts and limit."""

    def part(limit: int) -> int:
        return max(1, split(limit, parts)[index]) if limit else 0

    return dataclasses.replace(
        config,
        dispatchers=parts,  # one of these: its sync workers queue nothing ahead (spec.py)
        workers=part(config.workers),
        max_connections=part(config.max_connections),
        whole_max_connections=config.max_connections,  # what HAProxy's agent announces
        max_connections_per_source=part(config.max_connections_per_source),
    )


_FIGURE = re.compile(r"([a-z][a-z ]*?) (\d+)(?:/(\d+))?")


def parse_status(text: str) -> dict[str, tuple[int, ...]]:
    """A dispatcher's STATUS= text as its figures: "workers 2/3, busy 1, reloading" ->
    {"workers": (2, 3), "busy": (1,)}. Words without a figure are states, left out."""
    figures = {}
    for part in text.split(","):
        if match := _FIGURE.fullmatch(part.strip()):
            figures[match[1]] = tuple(int(n) for n in match.groups()[1:] if n is not None)
    return figures


def sum_status(texts: Iterable[str]) -> str:
    """The dispatchers' figures added up, in the order the first one gives them."""
    totals: dict[str, tuple[int, ...]] = {}
    for text in texts:
        for name, values in parse_status(text).items():
            have = totals.get(name, (0,) * len(values))
            if len(have) == len(values):
                totals[name] = tuple(a + b for a, b in zip(have, values, strict=True))
    return ", ".join(f"{name} {'/'.join(map(str, v))}" for name, v in totals.items())


def parse_message(data: bytes) -> list[tuple[str, str]]:
    """One message from a dispatcher: sd_notify's KEY=VALUE lines, of which a forwarded
    record is the last (its value runs to the end and may span lines)."""
    head, record, value = ("\n" + data.decode(errors="replace")).partition(f"\n{RECORD}=")
    lines = (ln.partition("=") for ln in head.split("\n"))
    return [(k, v) for k, sep, v in lines if sep] + [(RECORD, value)] * bool(record)


def exit_code(status: int) -> int:
    """A dispatcher's wait status as a shell would show it: 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


# -- the decisions ---------------------------------------------------------------------------


class Started(NamedTuple):
    index: int
    pid: int
    now: float


class ForkFailed(NamedTuple):
    index: int
    reason: str
    now: float


class Said(NamedTuple):
    """Assignments a dispatcher sent (READY=1, STATUS=..., WATCHDOG=1, ...)."""

    index: int
    assignments: list[tuple[str, str]]
    now: float
    dying: bool = False  # read once it had died: its Exited follows and decides what next


class Exited(NamedTuple):
    index: int
    how: str  # the wait status in words
    code: int  # as exit_code() gives it
    now: float


class Unreachable(NamedTuple):
    """A reload could not be sent to dispatcher `index`: it keeps what it serves."""

    index: int
    reason: str


class Fork(NamedTuple):
    index: int


class Reload(NamedTuple):
    """Ask dispatcher `index` to serve `config` (its share), as reload number `round`."""

    index: int
    round: int
    config: Config


class Signal(NamedTuple):
    index: int
    signum: int


class Hurry(NamedTuple):
    """A second Ctrl-C for dispatcher `index`: stop waiting for what is in flight. A
    message, not a signal: a second SIGTERM may be systemd's own (`systemctl kill`), and
    the terminal's SIGINT is the main process's to take."""

    index: int


class Notify(NamedTuple):
    assignments: tuple[str, ...]


class Wake(NamedTuple):
    at: float


class Exit(NamedTuple):
    code: int


class LogLevel(NamedTuple):
    """The main process's own, as a reload is adopted (a dispatcher's: executor.swap)."""

    level: str


Action = Fork | Reload | Signal | Hurry | Notify | Record | Wake | Exit | LogLevel
_RELOADING = Notify(("RELOADING=1", "STATUS=reloading"))  # what systemd hears, every time


@dataclasses.dataclass
class ChildState:
    """The main process's view of one dispatcher."""

    pid: int = 0  # 0: not running
    ready: bool = False  # said READY=1 since it was started, and is running
    proved: bool = False  # said READY=1 since it was started (kept once it died)
    owes: int = 0  # the reload it was asked for and has not answered with READY=1; 0: none
    reload_error: str = ""  # its record of that reload's failure
    serves: str = ""  # the digest of what it serves: as its READY=1 said, or was forked with
    asked_for: str = ""  # the digest of what it was last asked to reload to
    failed: str = ""  # ...if that failed: it is not asked for the same again
    unsent: bool = False  # ...because it could not be sent: any READY=1 of an older one
    # it still read (the socket was full) makes it worth asking again
    status: str = ""
    fed: float = 0.0  # when it last fed its watchdog (or was started)
    failures: int = 0  # deaths in a row before READY
    restart_at: float | None = None
    code: int = 0  # how it exited, once it has


class Plan:
    """What the main process does about each event: the lifecycle of N dispatchers."""

    def __init__(self, config: Config, parts: int, watchdog: float = 0.0) -> None:
        self.config = config  # what the dispatchers serve, and one started now gets
        self.asked: list[Config] = []  # reloads', oldest first, until one is adopted or fails
        self.started = config  # what the sockets, the journal's name and the count came from
        self.parts = parts
        self.watchdog = watchdog  # seconds between WATCHDOG=1; 0: systemd asked for none
        self.children = [ChildState() for _ in range(parts)]
        self.stopping = False
        self.announced = False  # READY=1 sent once every dispatcher was ready
        self.reloading = False  # RELOADING=1 sent, READY=1 not yet
        self.round = 0  # reloads asked of the dispatchers so far: each message names one
        self.catching_up = False  # asking those left behind: a SIGHUP's outcome was said
        self.code = 0  # the worst exit code so far

    def start(self, now: float) -> list[Action]:
        return [Fork(i) for i in range(self.parts)]

    def handle(self, event: object) -> list[Action]:
        """Event `Name` goes to `_on_name`, as in policy.Lifecycle."""
        return getattr(self, f"_on_{type(event).__name__.lower()}")(event)

    # -- dispatchers starting and speaking ---------------------------------------------------
    def _on_started(self, e: Started) -> list[Action]:
        c = self.children[e.index]
        c.pid, c.ready, c.owes, c.status, c.fed, c.restart_at = e.pid, False, 0, "", e.now, None
        c.reload_error = c.asked_for = c.failed = ""  # its predecessor's reload is over
        c.unsent = c.proved = False
        c.serves = self._digest(e.index, self.config)  # forked with it
        return []

    def _on_unreachable(self, e: Unreachable) -> list[Action]:
        c = self.children[e.index]
        c.owes, c.reload_error, c.failed, c.unsent = 0, e.reason, c.asked_for, True
        return self._reload_state()

    def _on_forkfailed(self, e: ForkFailed) -> list[Action]:
        record = records.problem(f"cannot start dispatcher {e.index}: {e.reason}", logging.ERROR)
        return [record, *self._failed(e.index, e.now)]

    def _on_said(self, e: Said) -> list[Action]:
        c, actions = self.children[e.index], []
        said = dict(e.assignments)  # the figures first: READY=1 comes with its STATUS=
        if parse_status(said.get("STATUS", "")):  # not a bare "reloading": the sum keeps
            c.status = said["STATUS"]  # its figures (the loop's next second brings new ones)
        if said.get("WATCHDOG") == "1":
            c.fed = e.now
        # Its answer to the reload asked of it, not to an older one (its RELOADING=1 tells
        # nothing new: the main process said so to systemd as it asked).
        answers = c.owes and said.get(notify.ROUND) == str(c.owes)
        if RECORD in said and answers:
            c.reload_error = said[RECORD]
        if said.get("READY") == "1":
            serves = said.get(notify.SERVES, c.serves)
            if not answers and (serves != c.serves or c.unsent):
                # It took a reload left in its socket when a newer one could not be sent:
                # what it failed (could not be sent) is worth asking for again.
                c.failed, c.unsent = "", False
            c.serves = serves
            if answers:
                c.owes = 0
                if c.reload_error or c.serves != c.asked_for:  # a record may have been lost
                    c.failed = c.asked_for
                    c.reload_error = c.reload_error or (
                        f"reload failed: dispatcher {e.index} still serves what it served before"
                    )
            c.ready = c.proved = True
            c.failures = 0
            if not e.dying:  # else its Exited, next, ends a reload or asks what it missed
                actions += self._ready()
        return actions

    def _ready(self) -> list[Action]:
        if not self.announced:
            if self.stopping or not all(c.ready for c in self.children):
                return []
            self.announced = True
            message = f"ready: {self.config.workers} workers in {self.parts} dispatchers"
            actions: list[Action] = [Record(Event.READY, message), self._notify("READY=1")]
            # A reload asked before this ends now if all have answered it; else, or if it
            # asks again those that missed it, systemd hears RELOADING=1 now (before the asks).
            rest = self._reload_state()
            if self.reloading and _RELOADING not in rest:
                rest.insert(0, _RELOADING)
            return actions + rest
        return self._reload_state()

    def _reload_state(self) -> list[Action]:
        """RELOADING=1 as the main process asks the dispatchers to reload; READY=1 and the
        record once none owes an answer (one that dies meanwhile owes none). Neither goes
        to systemd before the first READY=1: it would take the start as done."""
        if self.stopping:
            return []
        busy = any(c.owes and c.pid for c in self.children)
        if not busy and not self.reloading:
            return self._catch_up()
        if busy == self.reloading:
            return []
        self.reloading, tell = busy, self.announced
        if busy:
            return [_RELOADING] * tell
        asked, self.asked = self.asked, []
        adopted = self._adopt(asked)
        actions: list[Action] = [LogLevel(adopted.log_level)] if adopted else []
        newest = adopted is not None and adopted is asked[-1]
        if newest and (asks := self._ask_behind()):  # started meanwhile: wait for them
            return actions + asks
        failed = [c.reload_error for c in self.children if c.reload_error]
        for c in self.children:
            c.reload_error = ""
        if asked and not newest:  # the newest reload serves nowhere
            reason = (
                failed[0] if failed else "reload failed: no dispatcher serves the new configuration"
            )
            record = Record(Event.RELOAD_FAILED, reason, logging.ERROR)
        elif failed:
            note = f" ({len(failed)} of {self.parts} dispatchers)" * (len(failed) < self.parts)
            record = Record(Event.RELOAD_FAILED, failed[0] + note, logging.ERROR)
        elif self.catching_up:  # not the outcome of a SIGHUP: that one was said already
            serving = sum(
                c.serves == self._digest(i, self.config) for i, c in enumerate(self.children)
            )
            of = f" of {self.parts}" * (serving < self.parts)
            message = f"caught up: {serving}{of} dispatchers serve the service's configuration"
            record = Record(Event.READY, message)
        else:
            record = Record(Event.READY, f"reloaded: {self.parts} dispatchers serve")
        if asks := self._ask_behind():
            # Left behind, on what served before, by a reload that failed after the one
            # adopted (or while they were asked for it): asked for it; READY=1 once they
            # have answered.
            self.catching_up = True
            return [*actions, record, *asks]
        self.catching_up = False
        return [*actions, record] + [self._notify("READY=1")] * tell

    def _catch_up(self) -> list[Action]:
        """With no reload open: a dispatcher that serves another configuration than the
        service's (one it found left in its socket when a newer reload could not be sent)
        is asked for the service's, as a reload systemd hears of."""
        asks = self._ask_behind()
        if not asks:
            return []
        self.catching_up = True
        which = ", ".join(str(a.index) for a in asks if isinstance(a, Reload))
        message = f"reloading: dispatcher {which} serves another configuration than the service's"
        record = Record(Event.RELOADING, message, logging.WARNING)
        return [record, *[_RELOADING] * self.announced, *asks]

    def _serves(self, index: int, config: Config, newest: bool = True) -> bool:
        """Dispatcher `index` said READY=1 serving its share of `config` (before it died, if
        it did: it proved the configuration works); and for the newest reload, without an
        error: what it says it serves does not outweigh its record of failing. Its error is
        the newest reload's, not an older one's."""
        c = self.children[index]
        error = newest and c.reload_error
        return c.proved and not error and c.serves == self._digest(index, config)

    def _adopt(self, asked: list[Config]) -> Config | None:
        """The newest of the reloads `asked` that a dispatcher serves becomes the service's
        (by its digest: a dispatcher that answered may still serve the old one); an older
        one, when a newer SIGHUP came once it had taken effect and the newer one failed.
        A reload that failed everywhere, or whose dispatchers died before they served it,
        changes nothing: a dispatcher started later gets what the others serve, not a
        configuration that failed (its workers import the code on disk, whatever it is)."""
        for config in reversed(asked):
            if any(self._serves(i, config, config is asked[-1]) for i in range(self.parts)):
                self.config = config
                return config
        return None

    def _ask_behind(self) -> list[Action]:
        """Every running dispatcher serves the service's configuration, or is asked for it
        (a reload of its own number), unless it failed that very one: those started with
        what served before, during a reload adopted since, or left behind by a newer one
        that failed. Never the same twice: no loop."""
        behind = []
        for i, c in enumerate(self.children):
            if c.pid and self._digest(i, self.config) not in (c.serves, c.failed):
                behind.append(i)
        if behind:
            self.round += 1
            self.reloading = True
        return [self._ask(i, self.config) for i in behind]

    def _digest(self, index: int, config: Config) -> str:
        """What dispatcher `index` says it serves (notify.SERVES) once it serves `config`."""
        return share(config, index, self.parts).digest

    def _ask(self, index: int, config: Config) -> Reload:
        """Reload number `round` of dispatcher `index`, with its share of `config` as the
        main process read it: a dispatcher reading the file again might find it changed."""
        c, part = self.children[index], share(config, index, self.parts)
        c.owes, c.asked_for = self.round, part.digest
        return Reload(index, self.round, part)

    def _notify(self, state: str) -> Notify:
        return Notify((state, f"STATUS={self.status()}"))

    # -- dispatchers ending ------------------------------------------------------------------
    def _on_exited(self, e: Exited) -> list[Action]:
        c = self.children[e.index]
        was_ready = c.ready
        c.pid, c.ready, c.code, c.owes = 0, False, e.code, 0
        if self.stopping:
            self.code = max(self.code, e.code)
            return self._finish()
        if e.code == ExitCode.WORKERS_FAILING:  # it gave up, as one dispatcher gives up
            then = self._give_up(e.code, f"dispatcher {e.index} gave up")
        else:
            then = self._failed(e.index, e.now, at_once=was_ready) + self._reload_state()
        again = "; starting another" * any(isinstance(a, Fork | Wake) for a in then)
        return [records.problem(f"dispatcher {e.index} {e.how}{again}", logging.ERROR), *then]

    def _failed(self, index: int, now: float, at_once: bool = False) -> list[Action]:
        """Start it again: at once after it served, else backing off, as worker starts do."""
        if at_once:
            return [Fork(index)]
        c = self.children[index]
        c.failures += 1
        if c.failures >= MAX_FAILURES:
            return self._give_up(
                ExitCode.WORKERS_FAILING, f"dispatcher {index} failed {c.failures} times in a row"
            )
        c.restart_at = now + min(MAX_BACKOFF, 0.1 * 2 ** (c.failures - 1))
        return [Wake(c.restart_at)]

    def _give_up(self, code: int, why: str) -> list[Action]:
        self.code = max(self.code, code)
        record = records.problem(f"{why}: stopping the service", logging.CRITICAL)
        return [record, *self._stop("SIGTERM")]

    def _finish(self) -> list[Action]:
        if any(c.pid for c in self.children):
            return []
        message = f"stopped: {self.parts} dispatchers exited"
        return [records.problem(message, logging.INFO), Exit(self.code)]

    # -- the clock, reload and stop ----------------------------------------------------------
    def _on_tick(self, e: ev.Tick) -> list[Action]:
        actions: list[Action] = []
        for i, c in enumerate(self.children):
            if not self.stopping and c.restart_at is not None and c.restart_at <= e.now:
                c.restart_at = None
                actions.append(Fork(i))
        return actions

    def _on_reloadrequested(self, e: ev.ReloadRequested) -> list[Action]:
        if self.stopping:
            return []
        actions: list[Action] = [Record(Event.RELOADING, "reloading: re-reading the configuration")]
        if e.config is None:
            actions.append(records.reload_failed(e.error))
            return actions + self._reload_ends_at_once()
        config, kept = as_reloaded(self.started, e.config, self.parts)
        if kept:
            actions.append(records.problem(kept))
        if not any(c.pid for c in self.children):
            # None to try it (all waiting to start again): those started next get it, as
            # the fix for what keeps them dying may be in it.
            self.config, self.asked = config, []
            actions.append(LogLevel(config.log_level))
            return actions + self._reload_ends_at_once()
        self.asked.append(config)
        self.catching_up = False  # this SIGHUP's outcome is still to be said
        self.round += 1
        asks = []
        for i, c in enumerate(self.children):
            c.reload_error = ""  # a newer reload: only its outcome counts
            if c.pid:
                asks.append(self._ask(i, config))
        # RELOADING=1 before the asks: one that cannot be sent may end the reload at once.
        return actions + self._reload_state() + asks

    def _reload_ends_at_once(self) -> list[Action]:
        """RELOADING=1 and READY=1 for a reload with nothing to wait for, as one dispatcher
        says them; not before the first READY=1 (systemd would take the start as done)."""
        if self.reloading or not self.announced:
            return []
        return [_RELOADING, self._notify("READY=1")]

    def _on_stoprequested(self, e: ev.StopRequested) -> list[Action]:
        if self.stopping:  # a second Ctrl-C: the dispatchers stop waiting too
            if e.signal == "SIGINT":  # they leave the terminal's SIGINT to us: Hurry
                return [Hurry(i) for i, c in enumerate(self.children) if c.pid]
            return []
        busy = parse_status(self.status()).get("busy", (0,))[0]
        grace = self.config.graceful_timeout
        message = (  # their count as they last said it: a dispatcher says it every second
            f"stopping on {e.signal}: draining {busy} connections in {self.parts} "
            f"dispatchers, as they last reported (up to {grace:g}s)"
        )
        return [Record(Event.STOPPING, message), *self._stop(e.signal)]

    def _stop(self, why: str) -> list[Action]:
        """SIGTERM to every dispatcher (a first Ctrl-C too: a terminal has sent them SIGINT
        already, and a second SIGINT would cut their drain short)."""
        if self.stopping:
            return []
        self.stopping = True
        for c in self.children:
            c.restart_at = None
        actions: list[Action] = [self._notify("STOPPING=1")]
        actions += [Signal(i, signal.SIGTERM) for i, c in enumerate(self.children) if c.pid]
        return actions + self._finish()

    # -- what systemd is told ----------------------------------------------------------------
    def status(self) -> str:
        live = [c for c in self.children if c.pid]
        text = sum_status(c.status for c in live if c.status) or "starting"
        text += f", dispatchers {sum(c.ready for c in live)}/{self.parts}"
        return text + ", reloading" * self.reloading + ", stopping" * self.stopping

    def healthy(self, now: float) -> bool:
        """Every running dispatcher fed its watchdog within systemd's interval (twice ours);
        one being restarted is the main process's business, not a hang."""
        limit = 2 * self.watchdog
        return not limit or all(now - c.fed <= limit for c in self.children if c.pid)


# -- carrying it out -------------------------------------------------------------------------


class Child:
    """One dispatcher process as the main process holds it: its pid and its end of the pipe."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.sock: socket.socket | None = None

    def read(self) -> list[bytes]:
        """What it sent since the last read; b"" at the end of it (it is exiting)."""
        messages = []
        while self.sock is not None:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            messages.append(data)
            if not data:
                break
        return messages

    def hurry(self) -> None:
        """Hurry's message; a dispatcher that cannot take it is on its way out anyway."""
        with contextlib.suppress(OSError):
            if self.sock is not None:
                self.sock.send(HURRY)

    def ask(self, order: Reload) -> None:
        """Send the reload: its number, and the configuration in a memfd passed with it (no
        size limit, where a message has one), pickled: it goes to our own fork."""
        fd = os.memfd_create("sockpool-reload", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as file:
                pickle.dump(order.config, file)
            if self.sock is None:
                raise OSError(errno.EPIPE, os.strerror(errno.EPIPE))
            socket.send_fds(self.sock, [f"{notify.ROUND}={order.round}".encode()], [fd])
        finally:
            os.close(fd)

    def signal(self, signum: int) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Supervisor:
    def __init__(
        self,
        listeners: list[Listener],
        config: Config,
        reload_config: Callable[[], Config],
        parts: int,
        report: Callable[[Fatal], None],
        notifier: notify.Notifier | None = None,
    ) -> None:
        self.listeners = listeners
        self.reload_config = reload_config
        self.report = report  # cli._report: a dispatcher's fatal error as one line
        self.notifier = notifier or notify.Notifier()
        self.plan = Plan(config, parts, self.notifier.watchdog_interval)
        self.children = [Child(i) for i in range(parts)]
        self.loop = Loop()
        self.code: int | None = None
        self.loads = 0  # reloads read: each one is a configuration of its own (Config.loaded)
        # A word per dispatcher, set while its share of max_connections is full: one at its
        # share leaves new connections to one with room (admission.Admission.elsewhere()).
        self.full = memoryview(mmap.mmap(-1, mmap.PAGESIZE)).cast("q")[:parts]

    def run(self) -> int:
        self.loop.on_signals(SIGNALS, self._on_signal)
        if log.journal:
            log.journal.attach(self.loop.watch_writable, self.loop.unwatch)
        addresses = ", ".join(f"{lst.name} on {lst.address}" for lst in self.listeners)
        config, parts = self.plan.config, self.plan.parts
        log.event(
            Event.STARTED, "started: %s; %d workers in %d dispatchers", addresses,
            config.workers, parts,
        )  # fmt: skip
        self._periodic()
        try:
            self.do(self.plan.start(time.monotonic()))
            while self.code is None:  # the supervisor loop: wait, then what fell due
                self.loop.poll(max(0.0, self.loop.next_timer() - time.monotonic()))
                self.loop.run_timers(time.monotonic())
        finally:
            for child in self.children:
                child.close()
            self.loop.close()
        return self.code

    def do(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Fork):
                self._fork(action.index)
            elif isinstance(action, Reload):
                self._ask(action)
            elif isinstance(action, Signal):
                self.children[action.index].signal(action.signum)
            elif isinstance(action, Hurry):
                self.children[action.index].hurry()
            elif isinstance(action, Notify):
                self.notifier.send(*action.assignments)
            elif isinstance(action, Record):
                records.write(action)
            elif isinstance(action, Wake):
                self.loop.call_at(action.at, self._tick)
            elif isinstance(action, LogLevel):
                log.set_level(action.level)
            else:
                self.code = action.code

    def _tick(self) -> None:
        self.do(self.plan.handle(ev.Tick(time.monotonic())))

    def _ask(self, order: Reload) -> None:
        try:
            self.children[order.index].ask(order)
        except (OSError, pickle.PicklingError) as exc:
            # No memfd to be had, a dispatcher that took none of many reloads, or exiting.
            why = getattr(exc, "strerror", None) or str(exc)
            message = f"reload failed: cannot send the reload to dispatcher {order.index}: {why}"
            self.do(self.plan.handle(Unreachable(order.index, message)))

    def _periodic(self) -> None:
        now = time.monotonic()
        self.notifier.tick(now, self.plan.status, self.plan.healthy(now))
        self.loop.call_at(now + self.notifier.next_due(now), self._periodic)

    # -- the outside world, as events --------------------------------------------------------
    def _on_signal(self, signum: int) -> None:
        now = time.monotonic()
        if signum == signal.SIGCHLD:
            self._reap()
        elif signum == signal.SIGHUP:
            try:
                config, error = self._reloaded(), ""
            except Fatal as exc:
                config, error = None, exc.message
            self.do(self.plan.handle(ev.ReloadRequested(config, error, now)))
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self.do(self.plan.handle(ev.StopRequested(signal.Signals(signum).name, now)))
        else:
            records.write(records.unheeded(signum))

    def _reloaded(self) -> Config:
        """The new configuration, checked here first: a bad one never reaches a dispatcher.
        Numbered: a reload of the same file (new code) that a dispatcher dropped for a newer
        one must not look like what it serves."""
        config, parts = self.reload_config(), self.plan.parts
        if config.workers < parts:  # each needs one; as dispatchers, kept (as_reloaded())
            log.log.warning(
                "workers: %d is fewer than the %d dispatchers running: %d workers, one each, "
                "until a restart applies the count",
                config.workers, parts, parts,
            )  # fmt: skip
            config = dataclasses.replace(config, workers=parts)
        self.loads += 1
        return dataclasses.replace(config, loaded=self.loads)

    def _on_messages(self, child: Child, dying: bool = False) -> None:
        for data in child.read():
            if not data:  # it is exiting: SIGCHLD says how
                self.loop.unwatch(child.sock)  # type: ignore[arg-type]
                child.close()
                return
            said = Said(child.index, parse_message(data), time.monotonic(), dying)
            self.do(self.plan.handle(said))

    def _reap(self) -> None:
        for pid, status in reaped():
            for child in self.children:
                if child.pid == pid:
                    self._on_messages(child, dying=True)  # what it said before it died counts
                    if child.sock is not None:
                        self.loop.unwatch(child.sock)
                        child.close()
                    child.pid = 0
                    self.full[child.index] = 1  # no room there until one is started again
                    how = describe_status(status)
                    self.do(
                        self.plan.handle(
                            Exited(child.index, how, exit_code(status), time.monotonic())
                        )
                    )

    # -- a dispatcher process ----------------------------------------------------------------
    def _fork(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Blocked across fork(): in the child until its dispatcher's loop takes them, so a
        # SIGTERM sent meanwhile waits instead of being lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        main = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            self.do(self.plan.handle(ForkFailed(index, exc.strerror or str(exc), time.monotonic())))
            return
        if pid == 0:
            code = ExitCode.WORKERS_FAILING
            try:
                ours.close()
                code = self._dispatch(index, theirs, main)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        theirs.close()
        child = self.children[index]
        child.pid, child.sock = pid, ours
        ours.setblocking(False)
        self.loop.watch(ours, lambda: self._on_messages(child))
        self.do(self.plan.handle(Started(index, pid, time.monotonic())))

    def _dispatch(self, index: int, sock: socket.socket, main: int) -> int:
        """In the child: the ordinary dispatcher with its share, telling us, not systemd."""
        from .dispatcher import Dispatcher

        _die_with_parent(main)
        self.loop.close()
        for child in self.children:
            child.close()
        notify.forget_environment()
        os.register_at_fork(after_in_child=sock.close)  # its workers do not speak for it
        parts = self.plan.parts
        notifier = notify.Notifier(target=sock, watchdog_interval=self.plan.watchdog)
        sock.setblocking(False)
        log.log.addFilter(_LeaveToMain(notifier))
        log.set_process_fields(DISPATCHER=index)
        try:
            # No reload_config: a SIGHUP is the main process's, which asks over `sock`.
            dispatcher = Dispatcher(
                self.listeners, share(self.plan.config, index, parts), None, notifier
            )
            dispatcher.hot.admission.join(self.full, index)
            dispatcher.loop.watch(sock, lambda: _on_reload(sock, dispatcher))
            return dispatcher.run()
        except Fatal as exc:
            self.report(exc)
            return exc.code
        except BaseException:
            log.log.critical("dispatcher %d failed", index, exc_info=True)
            return ExitCode.WORKERS_FAILING
        finally:
            if log.journal:
                log.journal.drain(log.EXIT_DRAIN)
            logging.shutdown()


class Taken(NamedTuple):
    """A reload as a dispatcher received it: `config` None if it could not be read."""

    round: int
    config: Config | None
    error: str
    hurry: bool = False  # not a reload: a second Ctrl-C (HURRY)


def take_reload(sock: socket.socket) -> Taken | None:
    """In a dispatcher: the reload the main process sent (Child.ask); None if there is
    none to read. EOFError: the main process is gone."""
    try:
        data, fds, flags, _ = socket.recv_fds(sock, 64, 1)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as exc:
        if isinstance(exc, ConnectionError) or exc.errno in (errno.ENOTCONN, errno.EBADF):
            raise EOFError from exc
        return None  # short of memory for it, say: it is read again on the next turn
    if not data:
        channel.close_all(fds)
        raise EOFError
    if data == HURRY:
        channel.close_all(fds)
        return Taken(0, None, "", hurry=True)
    key, _, number = data.decode(errors="replace").partition("=")
    try:
        if key != notify.ROUND or not digits(number):
            return Taken(0, None, f"a bad reload message from the main process: {data[:60]!r}")
        if len(fds) != 1:
            why = "descriptors dropped" if flags & socket.MSG_CTRUNC else "no descriptor"
            return Taken(int(number), None, f"the configuration did not come ({why})")
        with open(fds[0], "rb", closefd=False) as file:
            file.seek(0)  # the main process's writing left the shared offset at the end
            return Taken(int(number), pickle.load(file), "")
    except Exception as exc:  # unpickling may raise anything; the reload fails, not this
        return Taken(int(number), None, f"cannot read the configuration: {exc}")
    finally:
        channel.close_all(fds)


def _on_reload(sock: socket.socket, dispatcher: Dispatcher) -> None:
    """Whatever the dispatcher says from now on names this reload, so the main process
    never takes an older answer for it."""
    try:
        taken = take_reload(sock)
    except EOFError:  # PR_SET_PDEATHSIG stops this one
        dispatcher.loop.unwatch(sock)
        return
    if taken is not None and taken.hurry:
        dispatcher.hurry()
    elif taken is not None:
        dispatcher.notifier.round = taken.round or dispatcher.notifier.round
        dispatcher.reload(taken.config, taken.error)


class _LeaveToMain(logging.Filter):
    """In a dispatcher: the service's lifecycle records are the main process's to write,
    once; the reason of a failed reload goes to it for that."""

    def __init__(self, notifier: notify.Notifier) -> None:
        super().__init__()
        self.notifier = notifier

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "MESSAGE_ID", None) not in _MAIN_RECORDS:
            return True
        if Event.RELOAD_FAILED.value == record.MESSAGE_ID:  # type: ignore[attr-defined]
            self.notifier.send(f"{RECORD}={record.getMessage()}")
        return False


def _die_with_parent(main: int) -> None:
    """A dispatcher gets SIGTERM when the main process dies (SIGKILL, say, outside systemd,
    which would otherwise leave it serving on its own)."""
    import ctypes  # here: only a dispatcher under a main process needs it

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != main:  # it died before that took effect
        os.kill(os.getpid(), signal.SIGTERM)
