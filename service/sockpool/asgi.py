"""An ASGI 3 application as an async sockpool handler: the `http` and `lifespan` scopes.

    handler = make_handler(app, HttpLimits(), access_log=False)
    lifespan = Lifespan(app)
    await lifespan.startup()    # before the worker reports READY; LifespanFailed: it cannot start
    ...
    await lifespan.shutdown()   # when the worker retires

HTTP itself is http11.py's, shared with the WSGI server. WebSocket is not served: a
request to upgrade reaches the application as a plain `http` request, and its answer goes
back as a plain response (the connection is never switched).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import log
from .connection import current_connection
from .errors import HANDLER_FAULTS, cancelled_from_outside
from .flushing import taken
from .giveback import began, client_speaks_first, read, read_within
from .http11 import (
    ClientDisconnected,
    HttpConnection,
    HttpError,
    HttpLimits,
    Request,
    asgi_path,
    client_gone,
    error_response,
    log_access,
    log_app_error,
    parse_peer,
)

CHUNK = 65536
ASGI = {"version": "3.0", "spec_version": "2.3"}
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Message = dict[str, Any]


class LifespanFailed(Exception):
    """The application's lifespan startup (or shutdown) failed: the message says why."""


class Lifespan:
    """The `lifespan` scope, run once per worker. An application that does not support it
    (it raises, or returns, before receiving the first message) is served without it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}  # copied into each request's scope["state"]
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._received = False
        self._error: BaseException | None = None
        self.supported = True

    async def startup(self) -> None:
        self._task = asyncio.create_task(self._main())
        await self._to_app.put({"type": "lifespan.startup"})
        await self._await("startup")

    async def shutdown(self) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        try:
            await self._await("shutdown")
        finally:
            if not self._task.done():
                self._task.cancel()

    async def _await(self, phase: str) -> None:
        message = await self._from_app.get()
        kind = message["type"]
        if kind == f"lifespan.{phase}.complete":
            return
        if kind == f"lifespan.{phase}.failed":
            raise LifespanFailed(message.get("message") or f"lifespan {phase} failed")
        if kind == "ended" and not self._received:
            self.supported = False
            log.log.info("the application does not support ASGI lifespan: %r", self._error)
            return
        if kind == "ended":
            error = self._error or "the application returned"
            raise LifespanFailed(f"lifespan {phase}: {error!r}")
        raise LifespanFailed(f"lifespan {phase}: unexpected message {kind!r}")

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.state}  # fmt: skip
        try:
            await self.app(scope, self._receive, self._send)
        except HANDLER_FAULTS as exc:  # SystemExit too: out of this task, it ends the loop
            self._error = exc
        finally:
            self._from_app.put_nowait({"type": "ended"})

    async def _receive(self) -> Message:
        self._received = True
        return await self._to_app.get()

    async def _send(self, message: Message) -> None:
        await self._from_app.put(message)


def make_handler(
    app: Any,
    limits: HttpLimits | None = None,
    access_log: bool = False,
    state: dict[str, Any] | None = None,
) -> Handler:
    """The async sockpool handler serving `app`, an ASGI 3 application, over HTTP/1.1.
    `state`: the lifespan's state (Lifespan.state), copied into every request's scope."""
    limits = limits or HttpLimits()

    @client_speaks_first
    async def asgi_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = current_connection()
        idle = info.idle_timeout if info else None
        base = _base_scope(writer, info.peer if info else "", state)
        http = HttpConnection(limits)  # the worker feeds info.carried to the reader
        while True:
            try:
                while (request := http.next_request()) is None:
                    if http.closed:
                        return
                    async with asyncio.timeout(idle):
                        http.feed(await read(reader, writer, http.carry()))  # may park
            except HttpError as exc:
                log.log.debug("refused a request: %s", exc)
                writer.write(error_response(exc.status))
                await writer.drain()
                return
            except ClientDisconnected:
                return
            exchange = _Exchange(http, reader, writer, idle)
            if not await exchange.run(app, _scope(base, request), request, access_log):
                return
            if http.carry():  # the next request's first bytes, read with this one's
                began(info)

    return asgi_handler


def _base_scope(writer: asyncio.StreamWriter, peer: str, state: dict[str, Any] | None) -> Message:
    host, port = parse_peer(peer)
    sockname = writer.get_extra_info("sockname")
    server = (str(sockname[0]), int(sockname[1])) if isinstance(sockname, tuple) else None
    scope: Message = {
        "type": "http",
        "asgi": ASGI,
        "scheme": "http",
        "root_path": "",
        "client": (host, port) if port is not None else None,
        "server": server,
    }
    if state is not None:
        scope["state"] = state
    return scope


def _scope(base: Message, request: Request) -> Message:
    scope = base.copy()
    scope["http_version"] = request.http_version.decode()
    scope["method"] = request.method.decode("latin-1")
    scope["path"] = asgi_path(request.path)
    scope["raw_path"] = request.path
    scope["query_string"] = request.query
    scope["headers"] = request.headers
    if "state" in base:
        scope["state"] = base["state"].copy()
    return scope


class _Exchange:
    """One request: the application's receive() and send(), and what came of them."""

    def __init__(
        self,
        http: HttpConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        idle: float | None,
    ) -> None:
        self.http = http
        self.reader = reader
        self.writer = writer
        self.idle = idle
        self.asked = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False
        self.gone = False  # the client went away
        self.finished = asyncio.Event()  # the response is complete, or the client is gone
        self.watch: asyncio.Task[None] | None = None  # _watch(), once receive() waits on it
        self.reading: asyncio.Lock | None = None  # held by the task reading the body
        self.fed = 0  # reads of the body so far
        self.left = http.limits.request_timeout or None  # _recv()'s budget; None: no limit
        self.sent = 0
        self.wrote = False  # something went to the client (see wsgi._Response.wrote)

    async def receive(self) -> Message:
        http = self.http
        if self.gone or self.done or http.body_done:  # after the response: a disconnect
            if self.watch is None and not self.finished.is_set():
                reader = self.reader
                if reader.at_eof() or reader.exception() is not None:
                    self._lost()  # known already: a poll (in a cancelled scope) hears it now
                else:
                    self.watch = asyncio.create_task(self._watch())
            if not self.finished.is_set():  # set: answered at once, as a poll needs
                await self.finished.wait()  # any number of tasks may wait here
            return {"type": "http.disconnect"}
        if not self.asked:
            self.asked = True
            if go_on := http.continue_bytes():
                self.writer.write(go_on)
        try:
            while (data := http.read_body()) is None:
                await self._read_body_bytes()
        except OSError as exc:  # gone, or silent too long (TimeoutError)
            if not client_gone(exc):
                raise
            self._lost()
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": data, "more_body": not http.body_done}

    async def _read_body_bytes(self) -> None:
        """Feed what the client sends next of the body (mid-request: no parking). Several
        tasks may wait in receive() at once, and a StreamReader takes one reader at a
        time: the others wait for its read, then look at what it fed before reading."""
        if self.reading is None:  # made on the first wait only: most bodies come whole
            self.reading = asyncio.Lock()
        fed = self.fed
        async with self.reading:
            if self.gone:  # the read this task waited for lost the client
                raise ClientDisconnected("the client went while the body was read")
            if fed == self.fed:
                self.http.feed(await self._recv())
                self.fed += 1

    async def _recv(self) -> bytes:
        """The client's next bytes of the request: each wait up to idle_timeout, and all
        of them together up to request_timeout, as WSGI's wsgi.input (the head had its
        own in the dispatcher): else a client trickling its body would hold its slot for
        ever. TimeoutError past either."""
        left = self.left
        start = time.monotonic()
        try:
            return await read_within(self.reader, self.idle, left)
        finally:
            if left is not None:
                self.left = left - (time.monotonic() - start)

    async def _watch(self) -> None:
        """Hear the client leave while the application waits in receive() for the response
        to finish (long-poll, streaming): else a client that left would hold its slot and
        descriptor as long as the application runs. An end of stream before the response
        is complete counts as leaving, as in uvicorn: a half-closed client is told it has
        gone. After it, the client has only finished sending (the application may still
        be at work, on a background task). Its next requests (pipelined) are kept for
        after the response, up to a head's worth; a client that sends more is plainly
        there, and is no longer watched. One task for the exchange, whoever waits: a
        receive() cancelled in its wait (Starlette's is_disconnected()) loses nothing."""
        kept = 0
        try:
            while kept <= self.http.limits.max_header_bytes:
                data = await self.reader.read(CHUNK)
                if not data:
                    if self.done:
                        self.http.feed(b"")
                        return
                    break
                self.http.feed(data)
                kept += len(data)
            else:
                return
        except OSError:  # client_gone's (a reset; ETIMEDOUT once keepalive gives up), or
            pass  # any other failure to read: the client can no longer be heard
        self._lost()

    def _lost(self) -> None:
        self.gone = True
        self.finished.set()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.status:
                raise RuntimeError("http.response.start sent twice")
            self.status = int(message["status"])
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.status:
            raise RuntimeError("http.response.body before http.response.start")
        if self.done:
            raise RuntimeError("http.response.body after the response ended")
        if self.gone:
            return  # the client went: the application learns it from receive()
        http = self.http
        body = message.get("body", b"")
        if not isinstance(body, bytes | bytearray | memoryview):  # bytes(5) is five NULs
            raise TypeError(f"http.response.body: body is {type(body).__name__}, not bytes")
        body = bytes(body)
        more = bool(message.get("more_body", False))
        out = []
        if not http.head_sent:
            if not more:
                http.add_length(self.headers, len(body))
            out.append(http.respond(self.status, self.headers))
        pieces = http.body(body)
        if pieces:
            out += pieces
            self.sent += len(body)
        if not more:
            out.append(http.end())
            self.done = True
        writer = self.writer
        self.wrote = True
        writer.write(b"".join(out))
        try:
            transport = writer.transport
            if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
                await writer.drain()  # not paused: at once (a timer costs 4 us a response)
            elif not await taken(writer.drain(), transport, self.idle):
                # A client that reads nothing would hold the connection, its slot and the
                # response's bytes for ever: idle_timeout, as a sync worker's socket has.
                transport.abort()  # a close would wait to flush, for ever too
                self._lost()
        except OSError as exc:
            if not client_gone(exc):
                raise
            self._lost()
        if self.done:
            self.finished.set()

    async def _read_whole(self) -> Any:
        """A chunked body's framing and size are known only once read: read it whole (at
        most max_body) before the application, so a malformed or oversized body is refused
        unseen (HttpError). The application's receive() then replays it."""
        pieces = []
        while (message := await self.receive())["type"] == "http.request":
            pieces.append(message["body"])
            if not message["more_body"]:
                break
        replay = [{"type": "http.request", "body": b"".join(pieces), "more_body": False}]
        if message["type"] != "http.request":
            replay = [message]  # the client went: say so

        async def receive() -> Message:
            return replay.pop() if replay else await self.receive()

        return receive

    async def run(self, app: Any, scope: Message, request: Request, access_log: bool) -> bool:
        """Run the application for one request; whether the connection can serve another."""
        started = time.monotonic_ns() if access_log else 0
        status = 0
        receive = self.receive
        try:
            if request.chunked:
                receive = await self._read_whole()
            await app(scope, receive, self.send)
            if not self.done and not self.gone:
                raise RuntimeError("the application returned without completing its response")
            status = self.status
        except HttpError as exc:  # the body broke a limit, or its framing, while being read
            if not self.wrote:
                self.writer.write(error_response(exc.status))
                status = exc.status
            return False
        except (*HANDLER_FAULTS, asyncio.CancelledError) as exc:
            if cancelled_from_outside(exc):
                raise
            log_app_error(request)
            if not self.wrote and not self.gone:
                self.writer.write(error_response(500))
                status = 500
            return False
        finally:
            self.finished.set()
            if self.watch is not None:  # before anything reads the next request
                self.watch.cancel()
                try:
                    await self.watch
                except asyncio.CancelledError as exc:
                    if cancelled_from_outside(exc):
                        raise
            if access_log:
                status = status or (self.status if self.wrote else 0)
                log_access(request.method, request.target, status, self.sent, started)
        if self.gone:
            return False
        http = self.http
        while (drained := http.drain()) is None:
            http.feed(await self._recv())  # what the application left unread: as bounded
        return drained and http.finish()
