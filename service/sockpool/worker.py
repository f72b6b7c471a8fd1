"""A worker process: takes connections from its channel and runs the handler on them.

Forked by the dispatcher (process.py); imports the handlers only after the fork, so a new
generation runs new code. Reading a handoff off the channel is the acknowledgement: until
then the dispatcher can read it back if we die. Each finished connection goes on the shared
done pipe, so the dispatcher knows our free capacity.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import resource
import select
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from . import channel, giveback, health, log, notify, unsent, wire
from .completions import Ledger, report_now
from .connection import ConnectionInfo, describe, set_current
from .direct import Acceptor, Seat, close_all
from .errors import HANDLER_FAULTS, cancelled_from_outside, cut
from .events import Event
from .flushing import taken
from .importing import HandlerError, is_async
from .pull import LoopWord, WaitingSelector
from .spec import WorkerSpec
from .targets import Served

if TYPE_CHECKING:  # AsyncWorker.run imports them: a sync worker never loads either
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

EXIT_HANDLER_FAILED = 3
EXITED_IN_A_TASK = "a task of the application called sys.exit()"
Handler = Callable[..., Any]


class _Stop(Exception):
    """Raised out of a blocking receive when SIGTERM arrives while idle."""


def run(
    chan: socket.socket,
    spec: WorkerSpec,
    stacks: int,
    done: int,
    word: LoopWord | None = None,
    ledger: Ledger | None = None,
    seat: Seat | None = None,
) -> NoReturn:
    """The forked child's whole life; never returns into the dispatcher's stack."""
    code = 0
    dispatcher = os.getppid()
    try:
        # Stacks go to a memfd the dispatcher reads: on a crash by themselves, on a hang
        # when the dispatcher sends DUMP_SIGNAL (health.py).
        faulthandler.enable(file=stacks, all_threads=True)
        faulthandler.register(health.DUMP_SIGNAL, file=stacks, all_threads=True)
        notify.forget_environment()
        log.set_process_fields(WORKER_PID=os.getpid(), GENERATION=spec.generation)
        log.set_level(spec.log_level)  # forked at the dispatcher's, maybe the last generation's
        # Ctrl-C and a reload are the dispatcher's to handle. Caught, not SIG_IGN: an ignored
        # signal stays ignored across exec(), in every program a handler starts.
        signal.signal(signal.SIGINT, _unheeded)
        signal.signal(signal.SIGHUP, _unheeded)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # Until the worker takes it (run(), _main()): a stop while it imports ends it, as it
        # holds nothing (the dispatcher's own handler, inherited, would ignore it).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        forked = os.getpid()
        try:
            served = Served(spec)
            _only_the_forked_one(forked)
            handlers = served.table
            worker_type = AsyncWorker if any(map(is_async, handlers.values())) else SyncWorker
            worker = worker_type(chan, handlers, spec, done)
            worker.lifespans = served.lifespans
            worker.word = word
            if worker_type is SyncWorker:
                worker.ledger = ledger
                if seat is not None:  # accept = workers (direct.py)
                    worker.acceptor = Acceptor(chan, spec.accepts, seat)
            else:  # an async worker's connections all come from the dispatcher
                close_all(spec.accepts)
            worker.run()
        except HandlerError as exc:  # could not import, or an app's startup failed
            _only_the_forked_one(forked)
            # One line, as everywhere a start fails; the journal keeps the traceback.
            log.log.error("%s", exc, extra={"EXCEPTION_TEXT": exc.detail} if exc.detail else {})
            channel.send(chan, wire.encode_failed(str(exc)))
            code = EXIT_HANDLER_FAILED
    except BaseException as exc:
        if isinstance(exc, ConnectionError) and os.getppid() != dispatcher:
            # Its dispatcher died (killed while this one imported, say): nobody to tell.
            log.log.debug("worker exits: its dispatcher is gone (%s)", exc)
        else:
            log.log.exception("worker failed")
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _only_the_forked_one(pid: int) -> None:
    """A copy the handler's module forked at import goes quietly: only the process the
    dispatcher forked may take work or speak on its channel."""
    if os.getpid() != pid:
        os._exit(0)


class _Base:
    def __init__(
        self, chan: socket.socket, handlers: dict[str | None, Handler], spec: WorkerSpec, done: int
    ):
        self.chan = chan
        self.done_pipe = done
        self.pid = os.getpid()
        self.handlers = handlers
        self.spec = spec
        self.stopping = False
        self.lifespans: list[Any] = []  # ASGI apps' (asgi.Lifespan): startup before READY
        self.word: LoopWord | None = None  # `pull`: an async loop's waits (pull.py)
        self.ledger: Ledger | None = None  # a sync worker's unreported completions
        self.acceptor: Acceptor | None = None  # a sync worker's own accepts (direct.py)
        self.accepted: wire.Handoff | None = None  # the one in hand it accepted itself
        self.taken = 0  # handoffs taken: against the ledger's count of those sent
        self.waits: set[str] = set()  # listeners whose new connections it looks at (ready())
        giveback._send, giveback._park_after = self.give_back, spec.park_after
        giveback._request_timeout, giveback._max_carry = spec.request_timeout, spec.max_carry
        unsent._limit, unsent._total = spec.max_unsent, spec.max_unsent_total
        giveback._max_buffered = spec.max_buffered_body
        giveback._buffered_total = spec.max_buffered_body_total

    def ready(self, capacity: int, solo: bool = False) -> None:
        """READY, naming the listeners whose handler waits for the client to speak first:
        the dispatcher holds their new connections until they have data."""
        first = {
            name for name in self.spec.handlers if giveback.speaks_first(self.handler_for(name))
        }
        self.waits = {  # the dispatcher's rule (giveback.waits_for_data), for every listener
            name
            for name, handoff in self.spec.handoff.items()
            if giveback.waits_for_data(handoff, giveback.speaks_first(self.handler_for(name)))
        }
        if solo:  # it calls the handler itself, whose first read may do what the look does
            handler_for = self.handler_for
            unlooked = {n for n in self.waits if giveback.first_read_is_receive(handler_for(n))}
            self.waits -= unlooked
            giveback._unlooked = frozenset(unlooked)
        channel.send(self.chan, wire.encode_ready(capacity, first, solo))

    def give_back(
        self,
        fd: int,
        conn_id: int,
        started: int,
        carry: bytes,
        ready: bool = False,
        silent: bool = False,
        rest: unsent.Unsent | None = None,
        close: bool = False,
        want: int = 0,
    ) -> None:
        """PARK: the connection goes back to the dispatcher (giveback.py), with an
        answer's `rest` its client has not taken (unsent.py): a memfd, or a file."""
        span, file = ((0, 0), False) if rest is None else ((rest.sent, rest.size), rest.file)
        mine = self.accepted if self.accepted and conn_id == self.accepted.conn_id else None
        accepted = None if mine is None else (mine.listener, mine.peer)  # news to it
        message = wire.encode_park(
            conn_id, started, carry, ready, silent, rest is not None, close, want, span, file,
            accepted,
        )  # fmt: skip
        if mine is not None:  # the PARK counts it, so the seat no longer does
            assert self.acceptor is not None
            self.acceptor.seat.done(served=False)
        try:
            channel.send(self.chan, message, [fd] if rest is None else [fd, rest.fd])
        except (OSError, ValueError):  # not sent: still its own (giveback.park() says False)
            if mine is not None:
                self.acceptor.seat.undo(conn_id)  # type: ignore[union-attr]
            raise
        if mine is not None:
            self.accepted = None

    def may_be_silent(self, handoff: wire.Handoff) -> bool:
        """A new connection on a listener whose clients speak first, which the dispatcher
        sent unchecked (it had room: hotpath.accept); one that stays silent goes back."""
        return (
            handoff.may_park
            and not handoff.carry
            and not handoff.started
            and handoff.listener in self.waits
        )

    def return_silent(self, handoff: wire.Handoff, sock: socket.socket) -> None:
        """Give back a new connection that has sent nothing: it waits in the dispatcher for
        its first byte (first_byte_timeout) and pins no worker. Not done: it was served."""
        self.give_back(sock.fileno(), handoff.conn_id, 0, b"", silent=True)
        sock.close()  # only our copy: the dispatcher holds it now

    def end_silent(
        self, handoff: wire.Handoff, sock: socket.socket, done: Callable[[int], None] | None = None
    ) -> None:
        """While the service stops, a new connection is not given back (the stop may have
        retired every other worker once this one held it): it had STOP_FIRST_BYTE here to
        speak, as in the dispatcher, and is closed as the dispatcher would close it."""
        finish(sock, ConnectionInfo(handoff.conn_id, handoff.listener, handoff.peer))
        (done or self.report_one)(handoff.conn_id)

    def describe(self, sock: socket.socket, handoff: wire.Handoff) -> ConnectionInfo:
        h = handoff
        return describe(
            sock, h.conn_id, h.listener, h.peer, self.spec.idle_timeout, h.carry, h.started,
            h.may_park,
        )  # fmt: skip

    def handler_for(self, listener: str) -> Handler:
        return self.handlers.get(listener) or self.handlers[None]

    def report_done(self, ids: list[int]) -> None:
        for record in wire.encode_done(self.pid, ids):
            os.write(self.done_pipe, record)

    def report_one(self, conn_id: int) -> None:
        """report_done() of a sync worker's one connection, without the lists."""
        os.write(self.done_pipe, wire.DONE.pack(self.pid, conn_id))

    def receive(self, flags: int = 0) -> list[tuple[wire.Handoff, socket.socket]] | None:
        """The next handoff as (metadata, socket) pairs; None when told to stop."""
        while True:
            try:
                message = channel.receive(self.chan, flags)
            except wire.WireError as exc:
                log.log.error("dropped a bad message from the dispatcher: %s", exc)
                continue
            if message is None:
                return None  # the dispatcher is gone: finish up
            data, fds = message
            try:
                decoded = wire.decode_to_worker(data, len(fds))
            except wire.WireError as exc:
                channel.close_all(fds)
                log.log.error("dropped a bad message from the dispatcher: %s", exc)
                continue
            if isinstance(decoded, wire.Stop):
                return None
            if isinstance(decoded, wire.Accept):
                if self.acceptor is not None:
                    self.acceptor.turn(decoded.on)
                continue
            kinds = self.spec.sockets  # known: socket() need not ask the kernel
            return [
                (h, socket.socket(*kinds.get(h.listener, _ASK), fileno=fd))
                for h, fd in zip(decoded, fds, strict=True)
            ]

    def serve_sync(
        self,
        handler: Handler,
        sock: socket.socket,
        info: ConnectionInfo,
        done: Callable[[int], None] | None = None,
    ) -> None:
        """Run a sync handler on one connection; then close the connection, or only our
        copy of it when the handler parked it. `done` reports it finished (not a parked
        one, which its PARK reported) before the close: the dispatcher can send the next
        one while the TCP teardown runs, and that one is then waiting when we ask for it,
        instead of our sleeping until it comes."""
        set_current(info)  # for the handler, and the fields of every record it logs
        try:
            sock.settimeout(self.spec.idle_timeout)  # a silent peer cannot pin the worker
            handler(sock, info)
        except giveback.Parked:
            pass
        except (ConnectionError, TimeoutError) as exc:
            log.log.debug("connection ended: %s", exc)
        except HANDLER_FAULTS:
            log.event(Event.HANDLER_ERROR, "handler raised", level=logging.ERROR, exc_info=True)
        finally:
            if info.unsent is not None and not info.parked:
                _leave_rest(sock, info)
            if done and not info.parked:
                done(info.conn_id)
            finish(sock, info)


def _leave_rest(sock: socket.socket, info: ConnectionInfo) -> None:
    """The handler is done, and its client has not taken all of the answer: the
    dispatcher sends the rest; where it cannot, this worker does, as sendall() would."""
    if sock.fileno() < 0:  # the handler closed it: what waited is lost
        rest = info.unsent
        info.unsent = None
        rest.close()
        log.log.warning(
            "the handler closed its connection with %d bytes of its answer not sent: "
            "call sockpool.flush(conn) before closing it",
            rest.size - rest.sent,
        )
        return
    try:
        if not giveback.leave_rest(sock, info):
            giveback.send_unsent(sock, info)
    except (OSError, ValueError) as exc:
        log.log.debug("connection ended: %s", exc)


def finish(sock: socket.socket, info: ConnectionInfo) -> None:
    """shutdown() before close(): the dispatcher closes its copy just after the handoff,
    but if we were scheduled first and got done before it did, its close() would be the
    last and would run the TCP teardown (FIN, and on loopback the peer's receive path) in
    the one dispatcher. shutdown() does that here, in the worker, whoever closes last.
    Not for a parked connection, which lives on in the dispatcher: close only our copy."""
    if not info.parked:
        try:  # noqa: SIM105 - once per connection, and a try costs less than suppress()
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    sock.close()


class SyncWorker(_Base):
    """One connection at a time, handler called in the main thread."""

    def run(self) -> None:
        idle = False  # until READY is out: a stop then only sets `stopping`

        def on_term(signum: int, frame: Any) -> None:
            self.stopping = True
            if idle:
                raise _Stop

        signal.signal(signal.SIGTERM, on_term)
        self.ready(1 + self.spec.queue_ahead, solo=True)
        idle = True
        completed = self.report_one if self.ledger is None else self._completed
        try:
            while not self.stopping:
                try:
                    batch = self._next()
                except _Stop:
                    return
                if batch is None:
                    return
                idle = False
                self._serve(batch, completed)
                idle = True
        finally:
            if self.ledger is not None and self.ledger.waiting():
                self._report()

    def _serve(
        self, batch: list[tuple[wire.Handoff, socket.socket]], completed: Callable[[int], None]
    ) -> None:
        for handoff, sock in batch:
            done = completed if handoff is not self.accepted else self._served_direct
            if self.may_be_silent(handoff) and not _readable(sock, self.spec.park_after):
                if not giveback.stopping():
                    self.return_silent(handoff, sock)
                    continue
                if not _readable(sock, giveback.STOP_FIRST_BYTE):
                    self.end_silent(handoff, sock, done)
                    continue
            info = self.describe(sock, handoff)
            self.serve_sync(self.handler_for(handoff.listener), sock, info, done)

    def _served_direct(self, conn_id: int) -> None:
        """serve_sync()'s `done` for a connection it accepted itself: counted in its seat
        (direct.py), with no report: the dispatcher never handed it over."""
        assert self.acceptor is not None
        self.acceptor.seat.done(served=True)
        self.accepted = None

    def _next_direct(self, acceptor: Acceptor) -> list[tuple[wire.Handoff, socket.socket]] | None:
        """_next() with `accept = workers`: what the dispatcher sent first (a connection
        coming back once it spoke), else a new one from a listener, else it waits for
        either; what it finished and has not reported goes out before it waits."""
        ledger = self.ledger
        while True:
            try:
                batch = self.receive(channel.DONTWAIT)
            except BlockingIOError:
                pass
            else:
                if batch is None:
                    return None
                self.taken += len(batch)
                if acceptor.woken:
                    return self._pass_on(acceptor, batch)
                return batch
            taken = acceptor.take()
            if taken is not None:
                self.accepted = taken[0]
                return [taken]
            if ledger is not None and ledger.waiting():
                self._report()
            acceptor.wait()

    def _pass_on(
        self, acceptor: Acceptor, batch: list[tuple[wire.Handoff, socket.socket]]
    ) -> list[tuple[wire.Handoff, socket.socket]]:
        """It was woken for a new connection, and takes `batch` from its channel first.
        The kernel woke no other idle worker for that connection, so it goes to the
        dispatcher now (unserved, to hand on at once) rather than wait behind `batch`;
        if it cannot, it is served after it."""
        acceptor.woken = False
        taken = acceptor.take()
        if taken is None:
            return batch
        handoff, sock = taken
        self.accepted = handoff
        try:
            self.give_back(sock.fileno(), handoff.conn_id, 0, b"", ready=True, silent=True)
        except (OSError, wire.WireError):
            return [*batch, taken]
        sock.close()  # only our copy: the dispatcher holds it now
        return batch

    def _next(self) -> list[tuple[wire.Handoff, socket.socket]] | None:
        """The next handoff. With completions not yet reported, one already queued is taken
        without a word (completions.py: _completed() reported before the last one); an
        empty channel means this worker is about to be idle, so first they go out, and
        then it waits."""
        if self.acceptor is not None:
            return self._next_direct(self.acceptor)
        ledger = self.ledger
        if ledger is not None and ledger.waiting():
            try:
                batch = self.receive(channel.DONTWAIT)
            except BlockingIOError:
                self._report()
                batch = self.receive()
        else:
            batch = self.receive()
        self.taken += len(batch or ())
        return batch

    def _completed(self, conn_id: int) -> None:
        """serve_sync()'s `done` with a ledger: noted, and reported with the others when it
        is time (completions.report_now). Before the close, as report_one()."""
        ledger = self.ledger
        assert ledger is not None
        queued = ledger.queued(self.taken)
        if queued <= 0 and not ledger.waiting():
            self.report_one(conn_id)  # below saturation, the usual: as without a ledger
        elif report_now(ledger.add(conn_id), self.spec.queue_ahead, queued):
            self._report()

    def _report(self) -> None:
        ledger = self.ledger
        assert ledger is not None
        self.report_done(ledger.pending())
        ledger.clear()


_ASK = (-1, -1, -1)  # socket.socket()'s defaults: ask the kernel what the descriptor is
_poller = select.poll()


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer has sent something within `timeout` seconds. A peer that closed
    without sending anything has not: like a silent one it goes back to the dispatcher,
    which closes it (peer-closed), and it is not counted as served. The request is usually
    there already, and one peek tells, also when the client has half-closed (a poll would
    need FIONREAD as well to tell its end from its data)."""
    ready = _peek(sock)
    if ready is not None or not timeout:
        return bool(ready)
    fd = sock.fileno()
    _poller.register(fd, select.POLLIN)
    try:
        events = _poller.poll(timeout * 1000)
    finally:
        _poller.unregister(fd)
    return bool(events) and bool(_peek(sock))


def _peek(sock: socket.socket) -> bool | None:
    """True: bytes to read; False: its end, or an error, with none; None: nothing yet.
    (A new connection's socket has no timeout yet, so recv() does not poll first.)"""
    try:
        return bool(sock.recv(1, channel.PEEK))
    except BlockingIOError:
        return None
    except OSError:
        return False


async def _readable_async(sock: socket.socket, timeout: float) -> bool:
    """_readable() without blocking the loop: at once when it is, else by the loop."""
    if _readable(sock, 0):
        return True
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(True))
    try:
        await asyncio.wait_for(ready, timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(sock.fileno())
    return _readable(sock, 0)


def _unheeded(signum: int, frame: object) -> None:
    pass


async def _closed(writer: asyncio.StreamWriter, idle: float | None) -> None:
    """Wait for a closed connection's last bytes to go out while the client takes them: one
    that reads nothing would otherwise hold the task, its slot and descriptor for ever
    (ASGI's send() bounds the waits above the buffer's limit; this, what is below it). It
    is dropped once it has taken nothing for idle_timeout."""
    transport = writer.transport
    with contextlib.suppress(Exception):
        if not transport.get_write_buffer_size():  # the usual end: nothing to time
            await writer.wait_closed()
        elif not await taken(writer.wait_closed(), transport, idle):
            transport.abort()  # its connection_lost, next loop turn, closes the socket


def _last_line(exc: Exception) -> str:
    """An app's failure in one line: frameworks report a whole traceback as the message,
    whose last line is the exception itself."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return cut(lines[-1].strip()) if lines else type(exc).__name__


def _capacity(wanted: int) -> int:
    """No more connections than descriptors: past RLIMIT_NOFILE the kernel would drop
    handed-over descriptors in transit (MSG_CTRUNC), and those connections with them."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, min(wanted, soft - 64))


class AsyncWorker(_Base):
    """Many connections at once on an asyncio loop; sync handlers of mixed configurations
    run one at a time in a thread, so they never block the loop."""

    def run(self) -> None:
        # Here, not at the top: only an async worker needs them (asyncio alone is ~20 ms and
        # a few hundred KiB a worker); bound as module globals for the methods below.
        global asyncio, ThreadPoolExecutor
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        self.capacity = 0  # until READY: it takes nothing (pull: may_take())
        self.sync_running = 0  # sync handlers in the executor's thread
        self.exit_seen = False  # _exited_in_a_task()
        self.overran = False  # _overran()
        # asyncio.run()'s own Runner; with `pull`, on a loop whose waits say so.
        factory = self._waiting_loop if self.word is not None else None
        main = None
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                loop = runner.get_loop()
                main = loop.create_task(self._main())
                while not main.done():
                    try:
                        loop.run_until_complete(main)
                    except SystemExit as exc:
                        if not main.done() or main.exception() is not exc:
                            self._exited_in_a_task()
                main.result()  # how it ended: a start that failed (HandlerError), or its own
        except SystemExit as again:
            if not self.exit_seen or main is None or not main.done():
                raise
            # The application's again, as the Runner closed the loop (a task it cancelled
            # exits in its `finally`): said already. It must not hide how main ended: a
            # start that failed (HandlerError), which the dispatcher must hear of.
            if not main.cancelled() and (ended := main.exception()) not in (None, again):
                raise ended from None

    def _exited_in_a_task(self) -> None:
        """asyncio lets a task's SystemExit out of its loop: a task the application started
        called sys.exit(). Ending here would cut every connection this worker holds, and
        going on as if nothing happened could leave it broken (a lifespan's task group
        cancelled under it): it asks to be recycled, as max_requests does, and serves on
        until its replacement is ready; then it drains. Whoever awaits that task gets the
        error. Said once: a SystemExit on every loop turn would flood the journal."""
        if self.exit_seen:
            return
        self.exit_seen = True
        log.log.error("%s", EXITED_IN_A_TASK, exc_info=True)
        if self.capacity:  # before READY, the start fails instead (_main)
            channel.send(self.chan, wire.encode_retire(EXITED_IN_A_TASK))

    def _serve_in_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        late: list[asyncio.TimerHandle],
        handler: Handler,
        sock: socket.socket,
        info: ConnectionInfo,
    ) -> None:
        """serve_sync() in the executor's thread, `timeout` counted from here: not from when
        it queued behind other sync connections, which is no hang of its."""
        if limit := self.spec.timeout:

            def arm() -> None:  # on the loop, posted before the result: armed before it
                late.append(loop.call_later(limit, self._overran, info.conn_id))

            loop.call_soon_threadsafe(arm)
        self.serve_sync(handler, sock, info)

    def _overran(self, conn_id: int) -> None:
        """A sync handler has held its connection past `timeout` in the executor's thread,
        which nothing can cancel, and the sync connections handed here wait behind it. The
        loop is not blocked, so the dispatcher hears it and would never call it hung: it
        asks to be recycled instead. Its replacement serves; it drains what it holds, the
        stuck handler until graceful_timeout. Said once."""
        if self.overran:
            return
        self.overran = True
        reason = f"a sync handler held connection {conn_id} past timeout={self.spec.timeout:g}s"
        log.log.warning("%s: recycling this worker", reason)
        channel.send(self.chan, wire.encode_retire(reason))

    def _waiting_loop(self) -> asyncio.AbstractEventLoop:
        """`pull`: a loop whose waits say so (pull.py); the current one, as asyncio.run's."""
        loop = asyncio.SelectorEventLoop(
            WaitingSelector(self.word, self.done_pipe, self.pid, self.may_take)
        )
        asyncio.set_event_loop(loop)
        return loop

    def may_take(self) -> bool:
        """`pull`: whether a connection sent now could start: not while full, stopping,
        or computing a sync handler in the executor's one thread (the loop waits on it)."""
        return len(self.tasks) < self.capacity and not self.stopping and not self.sync_running

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.done: list[int] = []
        self.flush_scheduled = False
        self.stopped = loop.create_future()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-handler")
        loop.add_signal_handler(signal.SIGTERM, self._stop)
        await self._startup()
        loop.add_reader(self.chan, self._on_channel)
        if self.exit_seen:  # while its lifespan started: a start that failed (backoff)
            raise HandlerError(f"{EXITED_IN_A_TASK} while the worker started")
        self.capacity = _capacity(self.spec.capacity)
        self.ready(self.capacity)
        if self.spec.timeout:
            self._beat(min(1.0, self.spec.timeout / 4))
        await self.stopped
        loop.remove_reader(self.chan)
        while self.tasks:
            await asyncio.wait(set(self.tasks))
        self._flush()
        for lifespan in reversed(self.lifespans):  # retiring: the apps clean up
            try:
                await lifespan.shutdown()
            except Exception:
                log.log.exception("ASGI lifespan shutdown failed")
        self.executor.shutdown()

    async def _startup(self) -> None:
        """Each ASGI app's lifespan startup, once per worker, before it takes work: one that
        fails is a worker that cannot start (the dispatcher's backoff and give-up apply)."""
        for lifespan in self.lifespans:
            try:
                await lifespan.startup()
            except Exception as exc:
                raise HandlerError(f"ASGI lifespan startup failed: {_last_line(exc)}") from None

    def _beat(self, interval: float) -> None:
        """Tell the dispatcher this loop still turns; a blocked loop falls silent, and
        after `timeout` of silence with connections in hand the dispatcher calls it hung."""
        channel.send(self.chan, wire.encode_beat())
        asyncio.get_running_loop().call_later(interval, self._beat, interval)

    def _stop(self) -> None:
        self.stopping = True
        if not self.stopped.done():
            self.stopped.set_result(None)

    def _on_channel(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            try:
                batch = self.receive(channel.DONTWAIT)
            except BlockingIOError:
                break
            if batch is None:
                self._stop()
                break
            for handoff, sock in batch:
                task = loop.create_task(self._serve(handoff, sock))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _serve(self, handoff: wire.Handoff, sock: socket.socket) -> None:
        if self.may_be_silent(handoff) and not await _readable_async(sock, self.spec.park_after):
            if not giveback.stopping():
                self.return_silent(handoff, sock)
                return
            if not await _readable_async(sock, giveback.STOP_FIRST_BYTE):
                self.end_silent(handoff, sock)
                return
        info = self.describe(sock, handoff)
        handler = self.handler_for(handoff.listener)
        try:
            if is_async(handler):
                await self._serve_async(handler, sock, info)
            else:
                loop = asyncio.get_running_loop()
                self.sync_running += 1
                late: list[asyncio.TimerHandle] = []
                try:
                    await loop.run_in_executor(
                        self.executor, self._serve_in_thread, loop, late, handler, sock, info
                    )
                finally:
                    self.sync_running -= 1
                    for timer in late:
                        timer.cancel()
        finally:
            if not info.parked:  # a parked one was reported by its PARK
                self.done.append(handoff.conn_id)
            if not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def _serve_async(self, handler: Handler, sock: socket.socket, info: ConnectionInfo):
        set_current(info)  # this task's own context: the handler and its logging see it
        writer = None
        limit = asyncio.timeout(self.spec.timeout or None)
        try:
            async with limit:
                reader, writer = await asyncio.open_connection(sock=sock)
                if info.carried:  # what was read before it parked comes first
                    reader.feed_data(info.carried)
                await handler(reader, writer)
        except giveback.Parked:
            pass
        except (ConnectionError, TimeoutError) as exc:
            if limit.expired():
                log.log.warning("connection cancelled at its time limit of %gs", self.spec.timeout)
            else:
                log.log.debug("connection ended: %s", exc)
        except (*HANDLER_FAULTS, asyncio.CancelledError) as exc:
            if cancelled_from_outside(exc):
                raise
            log.event(Event.HANDLER_ERROR, "handler raised", level=logging.ERROR, exc_info=True)
        finally:
            if writer is None:
                finish(sock, info)
            elif info.parked:
                writer.close()
            else:  # the same, asyncio's way: FIN once the buffered data is out
                with contextlib.suppress(Exception):
                    if not writer.is_closing() and writer.can_write_eof():
                        writer.write_eof()
                writer.close()
                await _closed(writer, self.spec.idle_timeout)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.done:  # every connection finished this loop turn, in one message
            self.report_done(self.done)
            self.done = []
