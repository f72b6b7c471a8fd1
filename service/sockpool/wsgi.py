"""A WSGI (PEP 3333) application as a sync sockpool handler.

    handler = make_handler(app, HttpLimits(), access_log=False)

HTTP itself is http11.py's; this module moves bytes between it, the socket and the
application. Between requests, and while a request head is incomplete, the connection goes
back to the dispatcher (giveback.receive): a keep-alive client holds no worker while it
thinks, and the next request, whole or in part, comes back in `info.carried`.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import __version__, log, unsent
from .connection import ConnectionInfo, current_connection
from .errors import HANDLER_FAULTS, digits
from .giveback import (
    began,
    client_speaks_first,
    leave_rest,
    reads_first_with_receive,
    receive,
    recv_within,
)
from .http11 import (
    ClientDisconnected,
    HttpConnection,
    HttpError,
    HttpLimits,
    Request,
    client_gone,
    error_response,
    header,
    log_access,
    log_app_error,
    parse_peer,
    wsgi_path,
)

CHUNK = 65536
Handler = Callable[[socket.socket, ConnectionInfo], None]
_NOT_HTTP = (b"content-type", b"content-length")


class FileWrapper:
    """wsgi.file_wrapper: a file the server sends with os.sendfile() when it is a regular
    file with a descriptor, and reads block by block otherwise. Seekable when its file is,
    as werkzeug's own: a `Range` answer (_RangeWrapper) then seeks to its start, where it
    would otherwise read and drop every byte before it."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        if block := self.filelike.read(self.blksize):
            return block
        raise StopIteration

    def seekable(self) -> bool:
        seekable = getattr(self.filelike, "seekable", None)
        return bool(seekable and seekable())

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.filelike.seek(offset, whence)

    def tell(self) -> int:
        return self.filelike.tell()


def _file_span(result: Any) -> tuple[FileWrapper, int | None, int | None] | None:
    """(wrapper, start, length) when the answer is a span of a FileWrapper's file: the
    wrapper itself (from where its file stands, to its end), or werkzeug's `Range` answer
    over one (Flask's send_file() asked for a range), not yet begun, which would seek to
    `start` and read `length` bytes. None for any other iterable: it is iterated."""
    if isinstance(result, FileWrapper):
        return result, None, None
    wrapper = getattr(result, "iterable", None)
    if not (
        isinstance(wrapper, FileWrapper)
        and type(result).__module__.startswith("werkzeug.")
        and getattr(result, "seekable", False) is True  # then start is the file's offset
        and getattr(result, "read_length", None) == 0
        and getattr(result, "end_reached", None) is False
    ):
        return None
    start, length = getattr(result, "start_byte", None), getattr(result, "byte_range", None)
    if type(start) is not int or start < 0 or not (length is None or type(length) is int):
        return None
    return wrapper, start, length


class _Input(io.RawIOBase):
    """wsgi.input: reads the request body as the application asks for it, sending
    `100 Continue` first when the client waits for it."""

    def __init__(self, conn: socket.socket, http: HttpConnection) -> None:
        self._conn = conn
        self._http = http
        self._buf = bytearray()
        self._asked = False
        # Time spent waiting for the client, not the application's: its head already had
        # request_timeout, in the dispatcher, and an application that reads slowly is not
        # a slow client.
        self._left = http.limits.request_timeout or None  # None: no limit

    def readable(self) -> bool:
        return True

    def _more(self) -> bool:
        """One more piece of the body into the buffer; False at its end."""
        http = self._http
        if not self._asked:
            self._asked = True
            if go_on := http.continue_bytes():
                _send(self._conn, go_on, last=False)  # the body, then the answer, follow
        while (data := http.read_body()) is None:
            http.feed(self.recv())  # mid-request: wait for it, do not park
        self._buf += data
        return bool(data)

    def recv(self) -> bytes:
        """The next bytes of the body, the waits for them adding up to no more than
        request_timeout: the socket's own timeout starts again with every byte, so a client
        trickling its body would otherwise hold the worker for ever. A failure, or a wait
        past the limit, is ClientDisconnected: the connection closes unanswered."""
        conn, left = self._conn, self._left
        try:
            unsent.flush(conn)  # an answer before this request's, not taken yet, goes first
            if left is None:
                return conn.recv(CHUNK)
            start = time.monotonic()
            try:
                return recv_within(conn, left)
            finally:
                self._left = left - (time.monotonic() - start)
        except OSError as exc:
            if not client_gone(exc):
                raise
            raise ClientDisconnected(f"reading the body: {exc}") from exc

    def read(self, size: int | None = -1) -> bytes:
        buf = self._buf
        if size is None or size < 0:
            while self._more():
                pass
        else:
            while len(buf) < size and self._more():
                pass
            size = min(size, len(buf))
        data = bytes(buf[:size] if size is not None and size >= 0 else buf)
        del buf[: len(data)]
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def readline(self, size: int | None = -1) -> bytes:
        buf = self._buf
        limit = size if size is not None and size >= 0 else None
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                end += 1
                break
            if (limit is not None and len(buf) >= limit) or not self._more():
                end = len(buf)
                break
        if limit is not None:
            end = min(end, limit)
        data = bytes(buf[:end])
        del buf[:end]
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:  # type: ignore[override]
        while line := self.readline():
            yield line


class _Response:
    """start_response(), write() and sending the iterable, for one request."""

    __slots__ = ("conn", "headers", "http", "reason", "sent", "status", "wrote")

    def __init__(self, conn: socket.socket, http: HttpConnection) -> None:
        self.conn = conn
        self.http = http
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.sent = 0  # body bytes sent, for the access log
        # Something went to the client. Not http.head_sent: a body that breaks its
        # Content-Length is found after the head is built, before it is sent, and is a 500.
        self.wrote = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.http.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status:
            raise AssertionError("start_response() called again without exc_info")
        code, _, reason = status.partition(" ")
        if len(code) != 3 or not digits(code):
            raise ValueError(f"bad status {status!r}")
        self.status, self.reason = int(code), reason.encode("latin-1")
        self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return self.write

    def _head(self) -> bytes:
        if not self.status:
            raise AssertionError("the application sent a body before start_response()")
        return (
            b""
            if self.http.head_sent
            else self.http.respond(self.status, self.headers, self.reason)
        )

    def write(self, data: bytes) -> None:
        """Send one block now (the write() callable, and each block of a streamed body)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            # Before the head is built: the client gets a 500 rather than an empty close.
            raise TypeError(f"a WSGI body block must be bytes, got {type(data).__name__}")
        if not data:
            return
        pieces = [self._head(), *self.http.body(data)]
        # A block that completes the body ends the answer: what the client does not take
        # of it may wait in the dispatcher. Any other, more follows, perhaps much later (a
        # stream): it goes out whole now, as sendall() sends it.
        self._send(b"".join(pieces), last=self.http.body_complete)
        self.sent += len(data) if len(pieces) > 1 else 0

    def _send(self, data: bytes, last: bool = True) -> None:
        self.wrote = True
        _send(self.conn, data, last)

    def send(self, result: Iterable[bytes]) -> None:
        """Send the application's iterable, then the end of the response."""
        span = _file_span(result)
        if span is not None and (self._sendfile(*span) or self._send_memory(*span)):
            return
        if isinstance(result, list | tuple):
            self._send_whole(b"".join(result))
            return
        for block in result:
            self.write(block)
        self.http.add_length(self.headers, 0)  # when nothing was sent
        self._send(self._head() + self.http.end())

    def _send_whole(self, body: bytes | memoryview) -> None:
        """Everything is here: one send, with a Content-Length when none was given (and
        what a slow client does not take goes to the dispatcher: unsent.send()). A long
        body goes after its head, not joined to it: the copy would double what the answer
        takes in memory, for a write saved. Both are `last`: the body follows at once, and
        behind an answer its client has yet to take, each may join that (unsent.py)."""
        self.http.add_length(self.headers, len(body))
        head, pieces, end = self._head(), self.http.body(body), self.http.end()
        if len(body) > CHUNK and len(pieces) == 1 and pieces[0] is body and not end:
            self._send(head)
            self._send(body)
        else:
            self._send(b"".join([head, *pieces, end]))
        self.sent += len(body) if not self.http.is_head else 0

    def _length(self, size: int, offset: int, length: int | None) -> int:
        """The body's length: what there is of `size` bytes from `offset`, at most `length`,
        and the Content-Length the application gave, if it gave one. More than there is (a
        file cut short since its size was read) is the application's error, raised before
        the head (ValueError: a 500), where the answer would end short of what its head
        says."""
        count = max(0, size - offset)
        if length is not None:
            count = min(count, length)
        given = header(self.headers, b"content-length")
        if given is None or not given.isdigit():
            return count
        if int(given) > count:
            raise ValueError(f"Content-Length is {int(given)}, but {count} bytes are there")
        return int(given)

    def _send_memory(
        self, wrapper: FileWrapper, start: int | None = None, length: int | None = None
    ) -> bool:
        """An io.BytesIO's bytes (send_file() of what the application made in memory: an
        export, an image), like _sendfile()'s span, are all here: sent as one answer, as a
        list's, not as a stream, whose slow client would hold the worker to its end. False
        for anything else (a subclass of BytesIO too, whose read() may do more), and once
        the head has gone (the application wrote a first part): the rest is iterated."""
        buffer = wrapper.filelike
        if type(buffer) is not io.BytesIO or self.http.head_sent:
            return False
        offset = buffer.tell() if start is None else start
        # getvalue(), not getbuffer(): CPython hands over the buffer's own bytes, where a
        # view would copy bytes the buffer shares (io.BytesIO(data)), and would keep its
        # close() from succeeding (BufferError) while any view of it is alive, as one in a
        # failed send's traceback is. A view of the bytes is no copy either.
        data = buffer.getvalue()
        count = self._length(len(data), offset, length)
        self._send_whole(memoryview(data)[offset : offset + count])
        return True

    def _sendfile(
        self, wrapper: FileWrapper, start: int | None = None, length: int | None = None
    ) -> bool:
        """Send a regular file with os.sendfile(), from `start` (else where the file
        stands) for at most `length` bytes (else to its end); False when it is not one."""
        try:
            fd = wrapper.filelike.fileno()
            st = os.fstat(fd)
            offset = start
            if offset is None:
                tell = getattr(wrapper.filelike, "tell", None)  # a buffered file's own position
                offset = tell() if tell else os.lseek(fd, 0, os.SEEK_CUR)
        except (AttributeError, OSError, io.UnsupportedOperation):
            return False
        if not stat.S_ISREG(st.st_mode) or self.http.head_sent:
            return False
        count = self._length(st.st_size, offset, length)
        if header(self.headers, b"content-length") is None:
            self.headers.append((b"Content-Length", b"%d" % count))
        head = self._head()
        pieces = self.http.body(_FileRange(count)) if count else []
        before = b"".join(p for p in pieces[:1] if not isinstance(p, _FileRange))
        self._send(head + before, last=not pieces)
        if pieces:
            after = b"".join(p for p in pieces[1:] if not isinstance(p, _FileRange))
            _send_file(self.conn, fd, offset, count, last=not after)
            self.sent += count
        else:
            after = b""
        self._send(after + self.http.end())
        return True


class _FileRange:
    """A stand-in for a file's bytes in the framing h11 writes: only its length counts."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _send(conn: socket.socket, data: bytes, last: bool = True) -> None:
    """unsent.send() to the client (what a slow client does not take of an answer's last
    part, the dispatcher sends), whose failure is ClientDisconnected."""
    try:
        unsent.send(conn, data, last)
    except OSError as exc:
        if not client_gone(exc):
            raise
        raise ClientDisconnected(f"sending: {exc}") from exc


def _send_file(conn: socket.socket, fd: int, offset: int, count: int, last: bool) -> None:
    """A file's bytes with os.sendfile(); a file that ends early is the application's
    error (ValueError), as the file's own I/O errors are."""
    try:
        unsent.send_file(conn, fd, offset, count, last)
    except OSError as exc:
        if not client_gone(exc):
            raise
        raise ClientDisconnected(f"sendfile: {exc}") from exc


def _base_environ(conn: socket.socket, info: ConnectionInfo) -> dict[str, Any]:
    """What every request on this connection shares."""
    host, port = parse_peer(info.peer)
    try:
        name = conn.getsockname()
    except OSError:
        name = None
    if isinstance(name, tuple):
        server_name, server_port = str(name[0]), str(name[1])
    else:
        server_name, server_port = "localhost", ""
    environ: dict[str, Any] = {
        "SCRIPT_NAME": "",
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SERVER_SOFTWARE": f"sockpool/{__version__}",
        "REMOTE_ADDR": host,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
    }
    if port is not None:
        environ["REMOTE_PORT"] = str(port)
    return environ


def _environ(base: dict[str, Any], request: Request) -> dict[str, Any]:
    environ = base.copy()
    environ["REQUEST_METHOD"] = request.method.decode("latin-1")
    environ["PATH_INFO"] = wsgi_path(request.path) if request.path[:1] == b"/" else ""  # "*"
    environ["QUERY_STRING"] = request.query.decode("latin-1")
    environ["RAW_URI"] = request.target.decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/" + request.http_version.decode()
    for name, value in request.headers:
        if name in _NOT_HTTP:
            key = name.decode().upper().replace("-", "_")
        elif b"_" in name:
            continue  # would read as the dash-spelled header's HTTP_ key: a spoofing path
        else:
            key = "HTTP_" + name.decode().upper().replace("-", "_")
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ and key[0] == "H" else text
    if request.chunked:
        environ["wsgi.input_terminated"] = True  # no CONTENT_LENGTH: read to the end
    return environ


def make_handler(app: Any, limits: HttpLimits | None = None, access_log: bool = False) -> Handler:
    """The sockpool handler serving `app`, a WSGI application, over HTTP/1.1."""
    limits = limits or HttpLimits()

    @client_speaks_first
    @reads_first_with_receive
    def wsgi_handler(conn: socket.socket, info: ConnectionInfo) -> None:
        if conn.family != socket.AF_UNIX:
            # As asyncio does for its transports: a streamed response's second write must
            # not wait for the client's delayed ACK (40 ms, Nagle's algorithm).
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        http = HttpConnection(limits, info.carried)
        base = _base_environ(conn, info)
        while True:
            try:
                while (request := http.next_request()) is None:
                    if http.closed:
                        return
                    # Parks when nothing comes; a body to come, until it is all here.
                    http.feed(receive(conn, http.carry(), want=http.owed))
            except HttpError as exc:
                _refuse(conn, exc)
                return
            except ClientDisconnected:
                return
            if not _serve(app, conn, http, request, base, access_log):
                return
            if http.carry():  # the next request's first bytes, read with this one's
                began(info)

    return wsgi_handler


def _refuse(conn: socket.socket, exc: HttpError) -> None:
    log.log.debug("refused a request: %s", exc)
    unsent.send(conn, error_response(exc.status))  # behind any answer not yet taken


def _serve(
    app: Any,
    conn: socket.socket,
    http: HttpConnection,
    request: Request,
    base: dict[str, Any],
    access_log: bool,
) -> bool:
    """Run the application for one request; whether the connection can serve another."""
    started = time.monotonic_ns() if access_log else 0
    environ = _environ(base, request)
    reader = _Input(conn, http)
    body: Any = reader
    if request.chunked:
        # Its framing and size are known only once read: read it whole (at most max_body)
        # before the application, so a malformed or oversized body is refused unseen.
        try:
            body = io.BytesIO(body.read())
        except HttpError as exc:
            _refuse(conn, exc)
            if access_log:
                log_access(request.method, request.target, exc.status, 0, started)
            return False
    environ["wsgi.input"] = body
    response = _Response(conn, http)
    status = 0
    result: Any = None
    try:
        result = app(environ, response.start_response)
        try:
            response.send(result)
        except BaseException:
            if hasattr(result, "close"):
                result.close()
            raise
        status = response.status
    except HttpError as exc:  # the body broke a limit, or its framing, while being read
        if not response.wrote:
            _refuse(conn, exc)
            status = exc.status
        return False
    except ClientDisconnected:
        raise  # nothing to answer (the worker logs it at debug)
    except HANDLER_FAULTS:
        log_app_error(request)
        if not response.wrote:
            unsent.send(conn, error_response(500))
            status = 500
        return False
    finally:
        if access_log:
            status = status or (response.status if response.wrote else 0)
            log_access(request.method, request.target, status, response.sent, started)
    # What the client has not taken of the answer goes to the dispatcher before the
    # application's close() runs (a Flask teardown, code after a generator's last yield),
    # which the client need not wait for.
    try:
        while (drained := http.drain()) is None:
            http.feed(reader.recv())  # what the application left unread: as slow, as bounded
        keep = drained and http.finish()
        handed = _hand_over(conn, http, keep)
    except BaseException:
        if hasattr(result, "close"):
            result.close()
        raise
    return _closed(result, request) and keep and not handed


def _hand_over(conn: socket.socket, http: HttpConnection, keep: bool) -> bool:
    """The answer's rest its client has not taken, to the dispatcher with the connection:
    closed once it is sent, or (`keep`) held for the next request, what came of it already
    handed to a worker then. False when there is none, or it cannot go (the worker goes on
    with the connection: receive() or the handler's end try again)."""
    info = current_connection()
    if info is None or info.unsent is None:
        return False
    return leave_rest(conn, info, http.carry() if keep else b"", close=not keep)


def _closed(result: Any, request: Request) -> bool:
    """The application's close(), if it has one; False when it raised (logged)."""
    try:
        if hasattr(result, "close"):
            result.close()
    except HANDLER_FAULTS:
        log_app_error(request)
        return False
    return True
