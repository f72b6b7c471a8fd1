"""HTTP/1.1 for the WSGI and ASGI servers: h11 underneath, without I/O.

`HttpConnection` is fed the bytes a connection receives and answers with requests, body
chunks and the bytes to send; wsgi.py (sync) and asgi.py (async) only move bytes. Every
decision (limits, framing, keep-alive, 100-continue, HEAD) is made here, once, for both.

h11 is the parser because Debian 12 ships it (python3-h11 0.14), it is kept, and it is
strict where it matters. Where it is lenient we are not, before it sees a byte:

- a head is only taken whole, ending in CRLF CRLF, with no bare LF or CR (h11 takes LF
  alone as a line end: a front end that does not could read a different request) and no
  obs-fold (RFC 9112 5.2: a server may reject it; we do);
- the request line, the head and the header count have limits of their own (414, 431);
- a head is refused as soon as one of these faults shows, before it is whole, and of
  several the first in its bytes is named (h11's own come after, once the head is whole):
  the status does not depend on how TCP cut the head;
- Content-Length with Transfer-Encoding is refused, not resolved (RFC 9112 6.3: the
  classic smuggling shape), and the body has a limit (413);
- h11 0.14 from PyPI skips the two bytes after a chunk's data without looking at them
  (CVE-2025-43859; Debian's 0.14 and h11 0.16 check them): there we check them.

Every refusal is an `HttpError` with its status; the connection is then closed.

h11 parses; responses are framed here (h11's writer cost more than its parser). Measured
on the development machine, one keep-alive GET in and a 5-byte response out costs about
29 us here, 21 us of it h11's parse; httptools parses the same request in about 1.3 us,
but Debian 12's python3-httptools (0.1.1) is too old to depend on.
"""

from __future__ import annotations

import errno
import logging
import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

import h11
from h11._readers import ChunkedReader

from . import log
from .errors import digits
from .events import Event

SERVER = b"sockpool"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_END = b"\r\n\r\n"
_REASONS = {
    400: "Bad Request",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}
_ABSOLUTE = re.compile(rb"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What a request may be before it is refused without calling the application."""

    max_request_line: int = 8190  # bytes, without its CRLF (414)
    max_header_bytes: int = 16384  # the whole head, request line and CRLF CRLF included (431)
    max_headers: int = 100  # header fields (431)
    max_body: int = 16 * 1024 * 1024  # bytes of a request body, 0: no limit (413)
    max_drain: int = 65536  # unread body bytes read and dropped to keep a connection open
    # request_timeout, 0: none. The dispatcher keeps it while a request is parked; a body
    # the application reads is read in the worker, its waits bounded by it (wsgi._Input).
    request_timeout: float = 0.0
    # A request whose head and body fit in this many bytes (max_carry) counts as ready only
    # once its body is here: until then it can be parked whole, so a client that trickles a
    # small body holds no worker. A longer body is read in the worker. 0: never held.
    hold_body: int = 0
    # ...and so does one with a longer body (Content-Length) of which at most this many
    # bytes are still to come (max_buffered_body), while what came of it fits hold_body:
    # the dispatcher waits for the rest (`owed`; giveback.receive()'s `want`). The WSGI
    # server's only: an async worker is not held by a slow client. 0: not waited for.
    buffer_body: int = 0


class HttpError(Exception):
    """A request refused with `status`; the connection is closed after the answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail


class ClientDisconnected(ConnectionError):
    """The client closed its side before the request body ended, or the connection to it
    failed or stalled past a limit: nothing can be answered. Told apart from the same
    exceptions (ConnectionError, TimeoutError) raised by an application's own I/O, to a
    database or an upstream, which are its errors: a 500 and a record."""


# A call on the client's socket failed because the client is out of reach: beside
# ConnectionError's and TimeoutError's errnos, a route or network gone (ICMP, or ARP
# unanswered).
_UNREACHABLE = frozenset((errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN))


def client_gone(exc: OSError) -> bool:
    """Whether an error of a call on the client's socket means the client is out of reach
    (reset, closed, timed out, unreachable): nothing to answer, nothing to log above
    debug. Any other is a fault to log: a bad descriptor, a file's I/O error in sendfile."""
    return isinstance(exc, ConnectionError | TimeoutError) or exc.errno in _UNREACHABLE


@dataclass(slots=True)
class Request:
    method: bytes
    target: bytes  # as sent
    path: bytes  # percent-encoded, without the query; absolute-form targets reduced to it
    query: bytes
    http_version: bytes  # b"1.1" or b"1.0"
    headers: list[tuple[bytes, bytes]]  # names lower-cased, in order
    content_length: int | None
    chunked: bool
    keep_alive: bool  # what the client asks for: HTTP/1.1 unless "close", 1.0 if "keep-alive"


class _LineCheckingChunkedReader(ChunkedReader):  # type: ignore[misc]
    """h11's chunked reader, refusing a size line or a trailer line that ends in a bare LF:
    h11 takes a bare LF at the end of a trailer, where a front end may not (a request
    smuggled past it), and waits for ever for a size line's CRLF. A bare LF is refused in
    a request head too (check_head). Looked at before h11 reads, and again when it waits
    for more: a chunk's end and the next size line may be read in one call."""

    def __call__(self, buf: Any) -> Any:
        self._check(buf)
        event = super().__call__(buf)
        if event is None:
            self._check(buf)
        return event

    def _check(self, buf: Any) -> None:
        # A chunk's CRLF to discard is an int in h11 0.14 and bytes once fixed: both false
        # when there is none.
        if not self._bytes_to_discard and (self._reading_trailer or not self._bytes_in_chunk):
            _check_line_ends(buf._data, trailer=self._reading_trailer)


class _StrictChunkedReader(_LineCheckingChunkedReader):
    """h11 0.14's chunked reader before its fix, checking that a chunk's data ends in CRLF."""

    def __call__(self, buf: Any) -> Any:
        while self._bytes_to_discard > 0:
            data = buf.maybe_extract_at_most(self._bytes_to_discard)
            if data is None:
                return None
            want = b"\r\n"[2 - self._bytes_to_discard :][: len(data)]
            if data != want:
                raise h11.RemoteProtocolError("chunk data not followed by CRLF")
            self._bytes_to_discard -= len(data)
        return super().__call__(buf)


def _check_line_ends(data: bytearray, trailer: bool) -> None:
    """The lines at the start of `data` end in CRLF: the next line, or (trailer) each line
    up to the empty one that ends the trailer."""
    start = 0
    while (lf := data.find(b"\n", start)) >= 0:
        if lf == 0 or data[lf - 1] != 13:  # 13: CR
            raise h11.RemoteProtocolError("a chunked body's line ends in a bare LF")
        if not trailer or lf == start + 1:
            return
        start = lf + 1


def _checks_chunk_ends() -> bool:
    """Whether this h11 refuses chunk data not followed by CRLF by itself."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXX0\r\n\r\n"
    )
    try:
        while conn.next_event() not in (h11.NEED_DATA, h11.PAUSED):
            pass
    except h11.RemoteProtocolError:
        return True
    return False


# Chunked bodies get _StrictChunkedReader where h11 does not check chunk ends itself.
_CHUNKED_READER = _LineCheckingChunkedReader if _checks_chunk_ends() else _StrictChunkedReader


HELD_CHUNKS = 16  # a chunked body held in the dispatcher: more chunks, read in the worker


def _chunks_owed(data: bytes) -> bool:
    """A chunked request in `data` whose last chunk has not come, in at most HELD_CHUNKS
    chunks so far: held until it has. Parsed apart (and again on every read and every
    handback), so the request's own parse reads it as before: the bound keeps that
    re-parse from growing with a body trickled in a thousand small chunks. A malformed
    one is not held: its own parse refuses it."""
    probe = h11.Connection(h11.SERVER)
    probe.receive_data(data)
    try:
        probe.next_event()  # the head, parsed already: the body's reader is now set
        if type(probe._reader) is ChunkedReader:
            probe._reader = _CHUNKED_READER()  # as next_request() reads it
        for _ in range(HELD_CHUNKS + 1):  # a Data event a chunk, then NEED_DATA
            event = probe.next_event()
            if event is h11.NEED_DATA:
                return True
            if type(event) is h11.EndOfMessage:
                return False
    except (h11.RemoteProtocolError, ValueError):
        return False
    return False  # past HELD_CHUNKS


_date_second = 0
_date_value = b""


def http_date() -> bytes:
    """The Date header's value, formatted once a second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second, _date_value = now, formatdate(now, usegmt=True).encode()
    return _date_value


def error_response(status: int) -> bytes:
    """A complete answer to a refused request; the connection closes after it."""
    body = f"{status} {_REASONS[status]}\n".encode()
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status].encode()),
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            b"Connection: close\r\nDate: %s\r\nServer: %s\r\n\r\n" % (http_date(), SERVER),
            body,
        )
    )


def check_head(head: bytes | bytearray, limits: HttpLimits, whole: bool = True) -> None:
    """Refuse a request head h11 would take but we do not: a whole one (request line to
    CRLF CRLF), or one not whole yet as soon as it cannot be taken. Of several faults the
    first in the bytes is named, so the status does not depend on how TCP cut the head."""
    line_end = head.find(b"\r\n")
    crlf = head.count(b"\r\n")
    cr_last = not whole and head.endswith(b"\r")  # not bare yet: its LF may come next
    cr = head.count(b"\r") - cr_last
    fields = crlf - 2 if whole else crlf - 1
    too_long = line_end > limits.max_request_line or (
        line_end < 0 and len(head) - cr_last > limits.max_request_line
    )
    if (
        too_long
        or len(head) > limits.max_header_bytes
        or head.count(b"\n") != crlf
        or cr != crlf
        or b"\n " in head
        or b"\n\t" in head
        or fields > limits.max_headers
    ):  # the usual head passes on these counts alone; the rest finds which fault is first
        raise min(_faults(head, limits, too_long, fields), key=lambda f: f[0])[1]


def _faults(
    head: bytes | bytearray, limits: HttpLimits, too_long: bool, fields: int
) -> list[tuple[int, HttpError]]:
    """Each fault in `head` with the length of the shortest prefix that shows it."""
    faults = []
    if too_long:  # a CR just at the limit shows it only with the byte after it
        limit = limits.max_request_line
        shows = limit + 1 + (head[limit : limit + 1] == b"\r")
        faults.append((shows, HttpError(414, "request line too long")))
    if len(head) > limits.max_header_bytes:
        faults.append((limits.max_header_bytes + 1, HttpError(431, "request head too large")))
    for pattern, shows, detail in _HEAD_FAULTS:
        if match := pattern.search(head):
            faults.append((match.start() + shows, HttpError(400, detail)))
    if fields > limits.max_headers:  # the CRLF that ends one field too many
        at = -2
        for _ in range(limits.max_headers + 2):
            at = head.find(b"\r\n", at + 2)
        faults.append((at + 2, HttpError(431, "too many header fields")))
    return faults


# (a fault, the bytes from its start that show it, what it is)
_HEAD_FAULTS = [
    (re.compile(rb"(?<!\r)\n"), 1, "bare LF in the request head"),
    (re.compile(rb"\r[^\n]"), 2, "bare CR in the request head"),
    (re.compile(rb"\n[ \t]"), 2, "obsolete line folding in the request head"),
]


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """(path, query) of a request target; an absolute-form target is reduced to its path.
    A fragment (no part of a request target, RFC 9112 3.2, but sent by some clients) is
    dropped, as gunicorn and uvicorn do."""
    target = target.partition(b"#")[0]
    if target[:1] != b"/" and (match := _ABSOLUTE.match(target)):
        target = b"/" + target[match.end() :].removeprefix(b"/")
    path, _, query = target.partition(b"?")
    return path, query


def _request(event: h11.Request, limits: HttpLimits) -> Request:
    if event.http_version not in (b"1.1", b"1.0"):
        raise HttpError(505, f"HTTP/{event.http_version.decode()}")
    items = getattr(event.headers, "_full_items", None)  # iterating Headers costs 1 us a field
    headers = [(n, v) for _, n, v in items] if items is not None else list(event.headers)
    length: int | None = None
    chunked = False
    hosts = 0
    keep_alive = event.http_version == b"1.1"
    for name, value in headers:
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
    if chunked and length is not None:
        raise HttpError(400, "both Content-Length and Transfer-Encoding")
    if chunked and event.http_version == b"1.0":  # RFC 9112 6.1: its framing is faulty
        raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if hosts > 1:  # RFC 9112 3.2
        raise HttpError(400, "more than one Host")
    if length is not None and limits.max_body and length > limits.max_body:
        raise HttpError(413, f"body of {length} bytes")
    path, query = split_target(event.target)
    return Request(
        event.method, event.target, path, query, event.http_version, headers, length, chunked,
        keep_alive,
    )  # fmt: skip


class HttpConnection:
    """One client connection's HTTP/1.1, one request at a time, without I/O.

    The loop, for both servers:

        http = HttpConnection(limits, carried)
        while (request := http.next_request()) is None and not http.closed:
            http.feed(recv())                  # b"" at end of stream
        ... http.read_body() (None: feed more), http.continue_bytes() before the first read
        ... send(http.respond(...)), send(http.body(...)), send(http.end())
        if http.finish(): next request, else close

    Between requests `carry()` is what was read of the next one (parking's carry).
    """

    __slots__ = (
        "_body_done", "_body_seen", "_buf", "_close", "_continue_owed", "_drain_limit", "_eof",
        "_framing", "_h11", "_head", "_keep_alive", "_left", "_length", "_method", "_version",
        "limits", "owed",
    )  # fmt: skip

    def __init__(self, limits: HttpLimits, carried: bytes = b"") -> None:
        self.limits = limits
        self._buf = bytearray(carried)  # bytes not yet given to h11: the next head
        self._eof = False
        self._h11: h11.Connection | None = None  # the current request's, once its head is whole
        self._head = False  # the response head went out
        self._body_seen = 0
        self._body_done = False
        self._drain_limit = 0  # drain() reads the body up to this many bytes seen
        self._continue_owed = False  # the client waits for 100 Continue, not sent yet
        self._length: int | None = None  # the request's Content-Length
        self._method = b""
        self._version = b"1.1"
        self._keep_alive = False  # what the request asks for
        self._close = False  # the connection closes after this response
        self._framing = _NONE
        self._left = 0  # body bytes still owed under Content-Length framing
        # Bytes the request still needs before it is whole, when next_request() waits for
        # its body (known length); 0 otherwise.
        self.owed = 0

    # -- receiving -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The client closed its side and nothing more can be read from it."""
        return self._eof and self._h11 is None

    def feed(self, data: bytes) -> None:
        """Bytes received; b"" for the end of the stream."""
        if self._h11 is not None:
            self._h11.receive_data(data)
            if not data:
                self._eof = True
        elif data:
            self._buf += data
        else:
            self._eof = True

    def carry(self) -> bytes:
        """What was read of the next request (between requests, or while its head is
        incomplete): carried across parking."""
        return bytes(self._buf)

    def next_request(self) -> Request | None:
        """The next request once its head is whole, else None (feed more, or `closed`).
        Raises HttpError for a head to refuse."""
        buf = self._buf
        self.owed = 0
        while buf[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request line
            del buf[:2]
        end = buf.find(_END)
        if end < 0:
            check_head(buf, self.limits, whole=False)
            if self._eof and buf:
                raise ClientDisconnected("the client closed in the middle of a request head")
            return None
        end += 4
        head = bytes(buf[:end])
        check_head(head, self.limits)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        conn.receive_data(head)
        if len(buf) > end:
            conn.receive_data(bytes(buf[end:]))
        if self._eof:
            conn.receive_data(b"")
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(400, str(exc)) from None
        except ValueError:  # h11's int() of a Content-Length past Python's 4,300 digits
            raise HttpError(413, "a Content-Length thousands of digits long") from None
        assert type(event) is h11.Request, event
        request = _request(event, self.limits)
        if self.limits.hold_body and self._body_owed(request, conn, end):
            return None  # the whole request stays in the buffer: carry() parks it
        buf.clear()
        if type(conn._reader) is ChunkedReader:  # fresh: nothing read yet
            conn._reader = _CHUNKED_READER()
        self._h11, self._head, self._body_seen, self._body_done = conn, False, 0, False
        self._continue_owed = conn.they_are_waiting_for_100_continue
        # None: chunked, its length unknown; a request with neither framing has no body
        self._length = (
            0 if request.content_length is None and not request.chunked else request.content_length
        )
        self._method, self._version = request.method, request.http_version
        self._keep_alive, self._close = request.keep_alive, False
        return request

    def _body_owed(self, request: Request, conn: h11.Connection, end: int) -> bool:
        """A request with a body that has not all come, that fits in hold_body with its
        head, or whose rest fits buffer_body: not ready yet (`owed`: how much is to come,
        for a known length). Not one whose client waits for 100 Continue, nor once the
        client has closed its side (the body will not come: the application is told)."""
        length = request.content_length
        if not (length or request.chunked) or self._eof:
            return False  # (a GET: the usual request costs one check)
        if conn.they_are_waiting_for_100_continue:
            return False
        have, limits = len(self._buf), self.limits
        if length is None:  # chunked
            return have <= limits.hold_body and _chunks_owed(bytes(self._buf))
        owed = end + length - have
        if owed <= 0 or have > limits.hold_body:
            return False
        if end + length <= limits.hold_body or owed <= limits.buffer_body:
            self.owed = owed
            return True
        return False

    def expects_continue(self) -> bool:
        """The client waits for `100 Continue` before it sends the body."""
        return self._continue_owed and not self._body_done

    def continue_bytes(self) -> bytes:
        """`100 Continue` to send before reading the body, when the client waits for it;
        never once the response head is out (a 1xx after it would land in the body)."""
        if not self.expects_continue() or self._head:
            return b""
        self._continue_owed = False
        return CONTINUE

    def read_body(self) -> bytes | None:
        """The next piece of the request body; b"" at its end; None: feed more first.
        Raises HttpError (413, or 400 for a malformed chunked body) and ClientDisconnected."""
        if self._body_done:
            return b""
        conn = self._h11
        assert conn is not None
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if self._eof:
                raise ClientDisconnected(str(exc)) from None
            raise HttpError(400, str(exc)) from None
        if event is h11.NEED_DATA:
            return None
        if type(event) is h11.Data:
            self._body_seen += len(event.data)
            if self.limits.max_body and self._body_seen > self.limits.max_body:
                raise HttpError(413, f"body over {self.limits.max_body} bytes")
            if self._body_seen == self._length:  # the end is known: say so with the data
                self._body_done = conn.next_event() is not h11.NEED_DATA  # EndOfMessage
            return bytes(event.data)
        self._body_done = True  # EndOfMessage (PAUSED: an Upgrade request's end)
        return b""

    @property
    def body_done(self) -> bool:
        return self._body_done

    # -- sending ---------------------------------------------------------------------------
    # Written here, not by h11: framing a response is a few lines, and h11's writer costs
    # more than parsing the request does (about 18 us of a 40 us exchange).

    def respond(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b""
    ) -> bytes:
        """The response head. The body is framed by the application's Content-Length, else
        chunked for HTTP/1.1 and by closing the connection for 1.0. HEAD, 204 and 304 send
        no body (HEAD keeps the framing headers a GET would have). Raises ValueError for
        headers that cannot be sent (no response splitting), and for a status that is not a
        final one (1xx would leave the client waiting for the response after it)."""
        if not 200 <= status <= 599 or _bad_value(reason):
            raise ValueError(f"a status that cannot be sent: {status} {reason!r}")
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _reason(status))]
        length: bytes | None = None
        # Closed after it when the rest of the body may not come (100 Continue never sent)
        # or is more than drain() reads: said here, or a client would send its next
        # request on a connection about to close.
        close = not self._keep_alive or (
            not self._body_done
            and (
                self._continue_owed
                or self._length is None
                or self._length - self._body_seen > self.limits.max_drain
            )
        )
        self._drain_limit = self._body_seen + self.limits.max_drain
        date = server = True  # ours, unless the application sends its own
        for name, value in headers:
            if not _token(name) or _bad_value(value):
                raise ValueError(f"a response header that cannot be sent: {name!r}: {value!r}")
            low = name.lower()
            if low in _SERVER_HEADERS:
                if low == b"content-length":
                    if not value.isdigit() or (length is not None and value != length):
                        raise ValueError(f"bad Content-Length {value!r}")
                    length = value
                    continue
                if low == b"connection":
                    close = close or b"close" in value.lower()
                    continue
                if low == b"date":
                    date = False
                elif low == b"server":
                    server = False
                else:
                    continue  # hop-by-hop (PEP 3333): the framing and the connection are ours
            out += (name, b": ", value, b"\r\n")
        # RFC 9110 8.6: never with a 204, and with a 304 only the 200's length, which a
        # Content-Length made from the empty body (WSGI's list, ASGI's) is not.
        if length is not None and status not in (204, 304):
            out += (b"Content-Length: ", length, b"\r\n")
            self._framing, self._left = _LENGTH, int(length)
        elif status in (204, 304):
            self._framing = _NONE
        elif self._version == b"1.1":
            out.append(b"Transfer-Encoding: chunked\r\n")
            self._framing = _CHUNKED
        elif self._method != b"HEAD":  # (an answer to HEAD has no body to end)
            self._framing, close = _CLOSE, True
        if self._method == b"HEAD" or status in (204, 304):
            self._framing = _NONE
        if close:
            out.append(b"Connection: close\r\n")
        elif self._version == b"1.0":
            out.append(b"Connection: keep-alive\r\n")
        self._close = close
        if date:
            out += (b"Date: ", http_date(), b"\r\n")
        if server:
            out.append(b"Server: sockpool\r\n")
        out.append(b"\r\n")
        self._head = True
        return b"".join(out)

    def add_length(self, headers: list[tuple[bytes, bytes]], size: int) -> None:
        """Before the head: give a response whose whole body is known (`size` bytes) its
        Content-Length where the application gave none. Not an empty answer to HEAD: it
        says nothing of GET's length (Flask answers a streamed view's HEAD with ()), and no
        Content-Length is better than a wrong one."""
        wanted = (size or self._method != b"HEAD") and not self._head
        if wanted and header(headers, b"content-length") is None:
            headers.append((b"Content-Length", b"%d" % size))

    @property
    def head_sent(self) -> bool:
        return self._head

    @property
    def is_head(self) -> bool:
        """The request is HEAD: body() drops what it is given."""
        return self._method == b"HEAD"

    @property
    def body_complete(self) -> bool:
        """Nothing more of the response body can follow: its Content-Length is all given,
        or it has no body. (Chunked and close-delimited bodies end only with end().)"""
        return self._framing is _NONE or (self._framing is _LENGTH and not self._left)

    def body(self, data: Any) -> list[Any]:
        """The pieces to send for some response body: bytes, or an object with len() for
        sendfile, which comes back as itself among them. [] when no body is sent.
        Raises ValueError past the Content-Length."""
        framing = self._framing
        if not data or framing is _NONE:
            return []
        if framing is _LENGTH:
            self._left -= len(data)
            if self._left < 0:
                self._close = True
                raise ValueError("more body than its Content-Length")
            return [data]
        if framing is _CHUNKED:
            return [b"%x\r\n" % len(data), data, b"\r\n"]
        return [data]

    def end(self) -> bytes:
        """The end of the response body (the last chunk, for chunked). Raises ValueError
        short of the Content-Length."""
        if self._framing is _CHUNKED:
            return b"0\r\n\r\n"
        if self._framing is _LENGTH and self._left:
            self._close = True
            raise ValueError("less body than its Content-Length")
        return b""

    def drain(self) -> bool | None:
        """Drop the unread rest of the request body, so the next request can be read:
        True when it is gone, None to feed more, False to give up and close."""
        while not self._body_done:
            try:
                data = self.read_body()
            except (HttpError, ClientDisconnected):
                return False
            if data is None:
                if self._continue_owed:
                    return False  # not asked for with 100 Continue: it may never come
                return None if self._body_seen <= self._drain_limit else False
        return True

    def finish(self) -> bool:
        """After the response: whether the connection stays open for another request.
        The bytes already read of the next one stay for next_request() and carry()."""
        conn = self._h11
        assert conn is not None
        self._h11 = None
        if not self._body_done or self._close or not self._head:
            return False
        data, closed = conn.trailing_data
        self._buf[:0] = data
        self._eof = self._eof or closed
        return True


_NONE, _LENGTH, _CHUNKED, _CLOSE = "none", "length", "chunked", "close"
_token = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+").fullmatch
# RFC 9110 5.5: a field value is visible characters, obs-text, spaces and tabs
_bad_value = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
# Response headers the server handles itself: the framing, the connection (hop-by-hop
# fields, dropped; not Upgrade, which a 426 must carry), and its own Date and Server, which
# the application's replace
_SERVER_HEADERS = frozenset((
    b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"proxy-connection",
    b"te", b"trailer", b"date", b"server",
))  # fmt: skip


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the response header `name` (lowercase) the application gave, if any."""
    for k, v in headers:
        if k.lower() == name:
            return v.strip()
    return None


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


_access = logging.getLogger("sockpool.access")


def log_access(method: bytes, target: bytes, status: int, sent: int, started_ns: int) -> None:
    """One access log record; CONN_ID and the connection's other fields come from log.py."""
    duration = (time.monotonic_ns() - started_ns) // 1000
    m, p = method.decode("latin-1"), target.decode("latin-1")
    _access.info(
        '"%s %s" %d %d %dus', m, p, status, sent, duration,
        extra={"METHOD": m, "PATH": p, "STATUS": str(status), "BYTES": str(sent),
               "DURATION_US": str(duration)},
    )  # fmt: skip


def log_app_error(request: Request) -> None:
    """The application raised on `request`: a HANDLER_ERROR record with its traceback (the
    connection's fields come from log.py). Call it from inside the `except`."""
    log.event(
        Event.HANDLER_ERROR,
        "application raised on %s %s",
        request.method.decode("latin-1"),
        request.target.decode("latin-1"),
        level=logging.ERROR,
        exc_info=True,
    )


def _join(pieces: list[bytes] | None) -> bytes:
    return b"".join(pieces) if pieces else b""


def wsgi_path(path: bytes) -> str:
    """PATH_INFO: percent-decoded, as latin-1 (PEP 3333's "bytes as str")."""
    return unquote_to_bytes(path).decode("latin-1") if b"%" in path else path.decode("latin-1")


def asgi_path(path: bytes) -> str:
    """The ASGI scope's path: percent-decoded, as UTF-8; bytes that are not UTF-8 become
    U+FFFD, as in uvicorn (raw_path has them): a lone surrogate would fail the first
    encode() an application makes of it."""
    return (
        unquote_to_bytes(path).decode("utf-8", "replace")
        if b"%" in path
        else path.decode("utf-8", "replace")
    )


def parse_peer(peer: str) -> tuple[str, int | None]:
    """(host, port) of sockpool's peer text: "host:port", "[v6]:port", or a unix path."""
    if peer.startswith("["):
        host, _, port = peer[1:].rpartition("]:")
        if digits(port):
            return host, int(port)
    host, sep, port = peer.rpartition(":")
    if sep and digits(port) and "/" not in peer:
        return host, int(port)
    return peer, None
