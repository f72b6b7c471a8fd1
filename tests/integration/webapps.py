"""Web applications the web tests serve (imported by the workers through PYTHONPATH).

Each appends what happened to it to the file named by $WEBAPPS_MARKS, one line an event
("call METHOD PATH", "body METHOD PATH" once it has the whole body, "close NAME",
"startup PID", ...): the tests read it to learn whether an
application was called, its iterable closed, its lifespan run, by which worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import time
import wsgiref.validate
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from flask import Flask, Response, request, send_file, stream_with_context
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
STREAMED = [b"first\n", b"second\n", b"third\n"]  # what /stream sends, piece by piece


def mark(event: str) -> None:
    """One line to the marks file (O_APPEND: lines from several workers stay whole)."""
    if path := os.environ.get("WEBAPPS_MARKS"):
        with open(path, "a") as f:
            f.write(event + "\n")


# -- echo apps: what the server made of a request, as JSON ------------------------------------


def _wsgi_body(environ: Environ) -> bytes:
    """The whole body, read as wsgiref.validate allows (read() takes a size)."""
    stream = environ["wsgi.input"]
    return b"".join(iter(lambda: stream.read(65536), b""))


def echo_wsgi(environ: Environ, start_response: StartResponse) -> list[bytes]:
    mark(f"call {environ['REQUEST_METHOD']} {environ['PATH_INFO']}")
    headers = [
        [key[5:].lower().replace("_", "-"), value]
        for key, value in environ.items()
        if key.startswith("HTTP_")
    ]
    headers += [
        [key.lower().replace("_", "-"), environ[key]]
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH")
        if key in environ
    ]
    out = json.dumps(
        {
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "query": environ["QUERY_STRING"],
            "headers": headers,
            "body": _wsgi_body(environ).decode("latin-1"),
        }
    ).encode()
    mark(f"body {environ['REQUEST_METHOD']} {environ['PATH_INFO']}")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [out]


async def echo_asgi(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
    if scope["type"] == "lifespan":
        return  # not supported: served without it
    mark(f"call {scope['method']} {scope['path']}")
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if message["type"] != "http.request":
        return  # the client is gone
    mark(f"body {scope['method']} {scope['path']}")
    out = json.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body": body.decode("latin-1"),
        }
    ).encode()
    await send(
        {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"application/json")]}
    )  # fmt: skip
    await send({"type": "http.response.body", "body": out})


# -- Flask -------------------------------------------------------------------------------------

flask_app = Flask("webapps")


@flask_app.route("/hello", methods=["GET", "HEAD"])
def hello() -> str:
    return "hello\n"


@flask_app.route("/say", methods=["POST"])
def say() -> bytes:
    """The body back: the load clients' check."""
    return request.get_data()


@flask_app.route("/echo", methods=["GET", "POST", "PUT"])
def flask_echo() -> Any:
    mark(f"call {request.method} /echo")
    return {
        "method": request.method,
        "body": request.get_data().decode("latin-1"),
        "headers": [[k.lower(), v] for k, v in request.headers.items()],
    }


@flask_app.route("/environ")
def environ_view() -> Any:
    env = request.environ
    keys = [
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "REQUEST_METHOD",
        "wsgi.url_scheme",
        "wsgi.multithread",
        "wsgi.multiprocess",
        "wsgi.run_once",
    ]
    seen = {key: env.get(key) for key in keys}
    seen["wsgi.version"] = list(env["wsgi.version"])
    seen["url"] = request.url
    seen["pid"] = os.getpid()
    return seen


@flask_app.route("/stream", methods=["GET", "HEAD"])
def stream() -> Response:
    def pieces() -> Iterator[bytes]:
        yield from STREAMED

    return Response(stream_with_context(pieces()), mimetype="text/plain")


@flask_app.route("/file", methods=["GET", "HEAD"])
def file() -> Response:
    """Werkzeug's send_file hands the open file to the server's wsgi.file_wrapper."""
    return send_file(os.environ["WEBAPPS_FILE"], mimetype="application/octet-stream")


@flask_app.route("/big/<int:size>")
def big(size: int) -> bytes:
    """`size` bytes of a pattern (bigger(size)), as one body."""
    return bigger(size)


@flask_app.route("/memory/<int:size>")
def memory(size: int) -> Response:
    """The same bytes made in memory and sent as a file (an export, an image): send_file()
    of an io.BytesIO, which werkzeug hands to the server's wsgi.file_wrapper."""
    return send_file(io.BytesIO(bigger(size)), mimetype="application/octet-stream")


@flask_app.route("/gated/<int:size>")
def gated(size: int) -> Response:
    """A stream: `size` bytes at once, then three events, each once the test opens its gate
    (a file beside the marks file, gate0...): an application that waits for something
    other than its client between the pieces it sends (a long poll, server-sent events)."""

    def pieces() -> Iterator[bytes]:
        yield bigger(size)
        for k in range(3):
            wait_for_gate(f"gate{k}")
            yield b"event %d\n" % k

    return Response(pieces(), mimetype="text/plain")


def bigger(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


@flask_app.route("/boom")
def flask_boom() -> str:
    raise RuntimeError("boom in a Flask view")


# -- raw WSGI apps, mounted under /raw/ --------------------------------------------------------


class Closing:
    """An iterable recording its close(); `fail_after` pieces, then it raises."""

    def __init__(self, name: str, fail_after: int | None = None) -> None:
        self.name, self.fail_after = name, fail_after

    def __iter__(self) -> Iterator[bytes]:
        for n, piece in enumerate(STREAMED):
            if n == self.fail_after:
                raise RuntimeError("the iterable failed midway")
            yield piece

    def close(self) -> None:
        mark(f"close {self.name}")


class GatedClose:
    """`size` bytes (bigger()) whose close() waits for the gate file `gate` beside the marks
    file, 30 s at most: an application's teardown, after its answer."""

    def __init__(self, size: int, gate: str) -> None:
        self.size, self.gate = size, gate

    def __iter__(self) -> Iterator[bytes]:
        yield bigger(self.size)

    def close(self) -> None:
        wait_for_gate(self.gate)
        mark("closed")


def wait_for_gate(name: str) -> None:
    """Until the test opens the gate (touches the file `name` beside the marks file), 30 s
    at most: longer than a test client waits."""
    gate = os.path.join(os.path.dirname(os.environ["WEBAPPS_MARKS"]), name)
    for _ in range(3000):
        if os.path.exists(gate):
            return
        time.sleep(0.01)


def raw(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    name = environ["PATH_INFO"].removeprefix("/raw/")
    plain = [("Content-Type", "text/plain")]
    if name.startswith("gated-close/"):
        size = int(name.removeprefix("gated-close/"))
        start_response("200 OK", [*plain, ("Content-Length", str(size))])
        return GatedClose(size, "close-gate")
    if name == "closing":
        start_response("200 OK", plain)
        return Closing(name)
    if name == "closing-fails":
        start_response("200 OK", plain)
        return Closing(name, fail_after=1)
    if name == "raise":
        raise RuntimeError("boom in a WSGI app")
    if name == "exc-info-before":  # fails before any body: a new status replaces the first
        start_response("200 OK", plain)
        try:
            raise ValueError("found out before the body")
        except ValueError:
            start_response("503 Service Unavailable", plain, sys.exc_info())
        return [b"sorry\n"]
    if name == "exc-info-after":  # the head is out: start_response re-raises
        write = start_response("200 OK", plain)
        write(b"partial\n")
        try:
            raise ValueError("found out after the head")
        except ValueError:
            start_response("500 Internal Server Error", plain, sys.exc_info())
        return [b"never sent\n"]
    start_response("404 Not Found", plain)
    return [b"no such raw app\n"]


def site(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Flask, with the raw apps under /raw/."""
    if environ["PATH_INFO"].startswith("/raw/"):
        return raw(environ, start_response)
    return flask_app(environ, start_response)


validated_flask = wsgiref.validate.validator(flask_app)
not_callable = 42


# -- Starlette ---------------------------------------------------------------------------------


async def _exits() -> None:
    sys.exit(3)


_kept: list[asyncio.Future[None]] = []


async def _exits_when_cancelled() -> None:
    """As the worker's loop closes (asyncio cancels what is left), sys.exit() again."""
    try:
        await asyncio.sleep(3600)
    finally:
        sys.exit(4)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    mark(f"startup {os.getpid()}")
    if slow := os.environ.get("WEBAPPS_SLOW_STARTUP"):  # a pool or migrations to set up
        await asyncio.sleep(float(slow))
    if os.environ.get("WEBAPPS_FAIL_STARTUP"):
        raise RuntimeError("the database is unreachable")
    if os.environ.get("WEBAPPS_EXIT_IN_A_STARTUP_TASK") in ("once", "and once cancelled"):
        task = asyncio.ensure_future(_exits())
        await asyncio.sleep(0.05)  # it runs while the startup does
        assert task.done()
        if os.environ["WEBAPPS_EXIT_IN_A_STARTUP_TASK"] == "and once cancelled":
            _kept.append(asyncio.ensure_future(_exits_when_cancelled()))
    elif os.environ.get("WEBAPPS_EXIT_IN_A_STARTUP_TASK") == "every turn":
        readable, writable = os.pipe()
        os.write(writable, b"x")  # never read: the callback runs on every loop turn
        asyncio.get_running_loop().add_reader(readable, sys.exit, 3)
        await asyncio.sleep(0.05)
    yield {"started_by": os.getpid()}
    mark(f"shutdown {os.getpid()}")


async def s_hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello\n")


async def s_echo(request: Request) -> JSONResponse:
    mark(f"call {request.method} /echo")
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "body": body.decode("latin-1"),
            "headers": [[k, v] for k, v in request.headers.items()],
        }
    )


async def s_scope(request: Request) -> JSONResponse:
    scope = request.scope
    keys = ("type", "http_version", "method", "scheme", "path", "query_string", "root_path")
    seen: dict[str, Any] = {key: scope.get(key) for key in keys}
    seen["raw_path"] = scope["raw_path"].decode("latin-1")
    seen["query_string"] = scope["query_string"].decode("latin-1")
    seen["asgi"] = scope["asgi"]
    seen["client"] = list(scope["client"] or [])
    seen["server"] = list(scope["server"] or [])
    seen["pid"] = os.getpid()
    return JSONResponse(seen)


async def s_stream(request: Request) -> StreamingResponse:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in STREAMED:
            yield piece

    return StreamingResponse(pieces(), media_type="text/plain")


async def s_state(request: Request) -> PlainTextResponse:
    """What the lifespan yielded reaches each request (ASGI lifespan state)."""
    return PlainTextResponse(f"{request.state.started_by}\n")


async def s_poll(request: Request) -> PlainTextResponse:
    """A long-poll: waits for news (none comes) while its client is there."""
    mark("call GET /poll")
    for _ in range(3000):
        if await request.is_disconnected():
            mark("gone GET /poll")
            break
        await asyncio.sleep(0.01)
    return PlainTextResponse("no news\n")


async def s_stream_exit(request: Request) -> StreamingResponse:
    """sys.exit() in a StreamingResponse's body, which Starlette runs in a task of its own."""

    async def pieces() -> AsyncIterator[bytes]:
        yield b"first\n"
        sys.exit(3)

    return StreamingResponse(pieces(), media_type="text/plain")


async def s_boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom in a Starlette endpoint")


starlette_app = Starlette(
    routes=[
        Route("/hello", s_hello, methods=["GET", "HEAD"]),
        Route("/echo", s_echo, methods=["GET", "POST", "PUT"]),
        Route("/scope", s_scope),
        Route("/stream", s_stream, methods=["GET", "HEAD"]),
        Route("/state", s_state),
        Route("/boom", s_boom),
        Route("/poll", s_poll),
        Route("/stream-exit", s_stream_exit),
    ],
    lifespan=lifespan,
)
