"""HTTP/1.1 (http11.py) and the WSGI and ASGI handlers over real socketpairs.

The corpus is written from RFC 9112: every valid request must come out with its method,
target, headers and body; every invalid one must get its status and never reach the
application. The same corpus drives the sans-IO core, the WSGI handler (the application
wrapped in wsgiref.validate) and the ASGI handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import errno
import io
import logging
import os
import select
import socket
import sys
import tempfile
import threading
import time
import wsgiref.validate
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sockpool import Parked, asgi, giveback, log, wsgi
from sockpool.connection import ConnectionInfo, set_current
from sockpool.http11 import (
    HELD_CHUNKS,
    ClientDisconnected,
    HttpConnection,
    HttpError,
    HttpLimits,
    asgi_path,
    client_gone,
    parse_peer,
    split_target,
)

LIMITS = HttpLimits()
SMALL = HttpLimits(max_body=100)


@dataclass
class Valid:
    raw: bytes
    # (method, target, body) of each request in `raw`, and some headers the first must have
    want: list[tuple[bytes, bytes, bytes]]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


VALID = {
    "get": Valid(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [(b"GET", b"/", b"")]),
    "query": Valid(
        b"GET /p?a=1&b=%20 HTTP/1.1\r\nHost: a\r\n\r\n", [(b"GET", b"/p?a=1&b=%20", b"")]
    ),
    "percent": Valid(b"GET /a%2Fb%20c HTTP/1.1\r\nHost: a\r\n\r\n", [(b"GET", b"/a%2Fb%20c", b"")]),
    "methods": Valid(
        b"PUT /r HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
        b"DELETE /r HTTP/1.1\r\nHost: a\r\n\r\n"
        b"PATCH /r HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        [
            (b"PUT", b"/r", b"hi"),
            (b"DELETE", b"/r", b""),
            (b"PATCH", b"/r", b"x"),
            (b"OPTIONS", b"*", b""),
        ],
    ),
    "absolute form": Valid(
        b"GET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n",
        [(b"GET", b"http://example.com/x?y", b"")],
    ),
    "content-length": Valid(
        b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
        [(b"POST", b"/f", b"hello world")],
    ),
    "same content-length twice": Valid(
        b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        [(b"POST", b"/f", b"abc")],
    ),
    "chunked": Valid(
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\nhello\r\nA;name=val\r\n0123456789\r\n1;a;b="q"\r\n!\r\n0\r\n'
        b"Trailer-Field: t\r\n\r\n",
        [(b"POST", b"/c", b"hello0123456789!")],
    ),
    "chunked, upper case coding": Valid(
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        [(b"POST", b"/c", b"ok")],
    ),
    "pipelined": Valid(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n"
        b"xGET /3 HTTP/1.1\r\nHost: a\r\n\r\n",
        [(b"GET", b"/1", b""), (b"POST", b"/2", b"x"), (b"GET", b"/3", b"")],
    ),
    "http/1.0 without host": Valid(b"GET /old HTTP/1.0\r\n\r\n", [(b"GET", b"/old", b"")]),
    "empty line before": Valid(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", [(b"GET", b"/", b"")]),
    "header forms": Valid(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Tab:\tin\tside \r\nX-Obs: caf\xe9\r\n\r\n",
        [(b"GET", b"/", b"")],
        [(b"x-empty", b""), (b"x-tab", b"in\tside"), (b"x-obs", b"caf\xe9")],
    ),
    "head": Valid(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n", [(b"HEAD", b"/h", b"")]),
    "expect 100": Valid(
        b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        [(b"POST", b"/e", b"ok")],
    ),
    "upgrade websocket (served as plain http)": Valid(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        [(b"GET", b"/ws", b"")],
    ),
}

HEAD_OF = b"GET / HTTP/1.1\r\nHost: a\r\n"
POST = b"POST / HTTP/1.1\r\nHost: a\r\n"
POST_CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"

INVALID: dict[str, tuple[bytes, int, HttpLimits]] = {
    # limits
    "request line too long": (b"GET /" + b"a" * 8190 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
                              414, LIMITS),
    "request line too long, unfinished": (b"GET /" + b"a" * 9000, 414, LIMITS),
    "head too large": (HEAD_OF + b"X: " + b"v" * 16400 + b"\r\n\r\n", 431, LIMITS),
    "head too large, unfinished": (HEAD_OF + b"X: " + b"v" * 16400, 431, LIMITS),
    "too many headers": (HEAD_OF + b"X: v\r\n" * 100 + b"\r\n", 431, LIMITS),
    "body too large": (POST + b"Content-Length: 16777217\r\n\r\n", 413, LIMITS),
    "content-length past int()'s digits": (POST + b"Content-Length: " + b"1" * 5000
                                           + b"\r\n\r\n", 413, LIMITS),
    "chunked body too large": (POST_CHUNKED + b"65\r\n" + b"x" * 101 + b"\r\n0\r\n\r\n",
                               413, SMALL),
    # smuggling
    "content-length and transfer-encoding": (
        POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n", 400, LIMITS),
    "transfer-encoding and content-length": (
        POST + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        b"0\r\n\r\n", 400, LIMITS),
    "content-lengths differ": (
        POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400, LIMITS),
    "content-length list differs": (
        POST + b"Content-Length: 3, 4\r\n\r\nabcd", 400, LIMITS),
    "content-length negative": (POST + b"Content-Length: -1\r\n\r\n", 400, LIMITS),
    "content-length signed": (POST + b"Content-Length: +3\r\n\r\nabc", 400, LIMITS),
    "content-length hex": (POST + b"Content-Length: 0x3\r\n\r\nabc", 400, LIMITS),
    "transfer-encoding chunked, identity": (
        POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400, LIMITS),
    "transfer-encoding not chunked last": (
        POST + b"Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 400, LIMITS),
    "transfer-encoding xchunked": (
        POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400, LIMITS),
    "transfer-encoding twice": (
        POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n0\r\n\r\n", 400, LIMITS),
    "transfer-encoding in http/1.0": (
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, LIMITS),
    "chunk size negative": (POST_CHUNKED + b"-1\r\nx\r\n0\r\n\r\n", 400, LIMITS),
    "chunk size not hex": (POST_CHUNKED + b"zz\r\nx\r\n0\r\n\r\n", 400, LIMITS),
    "chunk size 0x": (POST_CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", 400, LIMITS),
    "chunk size too long": (POST_CHUNKED + b"1" * 21 + b"\r\nx\r\n0\r\n\r\n", 400, LIMITS),
    "chunk data longer than its size": (POST_CHUNKED + b"3\r\nhello\r\n0\r\n\r\n", 400, LIMITS),
    "chunk size bare LF": (POST_CHUNKED + b"5\nhello\r\n0\r\n\r\n", 400, LIMITS),
    "chunked body in bare LFs": (POST_CHUNKED + b"5\nhello\n0\n\n", 400, LIMITS),  # at once
    "chunk size CR CR LF": (POST_CHUNKED + b"5\r\r\nhello\r\n0\r\n\r\n", 400, LIMITS),
    "trailer ended by a bare LF": (POST_CHUNKED + b"0\r\n\n", 400, LIMITS),
    "trailer line ended by a bare LF": (POST_CHUNKED + b"0\r\nX: y\n\r\n", 400, LIMITS),
    "space before colon": (HEAD_OF + b"Content-Length : 0\r\n\r\n", 400, LIMITS),
    "obs-fold": (HEAD_OF + b"X-A: a\r\n b\r\n\r\n", 400, LIMITS),
    "obs-fold with tab": (HEAD_OF + b"X-A: a\r\n\tb\r\n\r\n", 400, LIMITS),
    "NUL in a value": (HEAD_OF + b"X-A: a\x00b\r\n\r\n", 400, LIMITS),
    "CR in a value": (HEAD_OF + b"X-A: a\rb\r\n\r\n", 400, LIMITS),
    "bare LF line ends": (b"GET / HTTP/1.1\nHost: a\n\n", 400, LIMITS),
    "bare LF in a header": (HEAD_OF + b"X-A: a\nX-B: b\r\n\r\n", 400, LIMITS),
    "empty header name": (HEAD_OF + b": v\r\n\r\n", 400, LIMITS),
    "no host": (b"GET / HTTP/1.1\r\n\r\n", 400, LIMITS),
    "two hosts": (HEAD_OF + b"Host: b\r\n\r\n", 400, LIMITS),
    # request line
    "no version": (b"GET /\r\nHost: a\r\n\r\n", 400, LIMITS),
    "no target": (b"GET HTTP/1.1\r\nHost: a\r\n\r\n", 400, LIMITS),
    "extra part": (b"GET / x HTTP/1.1\r\nHost: a\r\n\r\n", 400, LIMITS),
    "two spaces": (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, LIMITS),
    "bad version": (b"GET / HTTP/x.y\r\nHost: a\r\n\r\n", 400, LIMITS),
    "version without dot": (b"GET / HTTP/11\r\nHost: a\r\n\r\n", 400, LIMITS),
    "lower-case version": (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, LIMITS),
    "method not a token": (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, LIMITS),
    "control in target": (b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400, LIMITS),
    "http/2.0": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, LIMITS),
}  # fmt: skip


# -- the sans-IO core --------------------------------------------------------------------


def parse(raw: bytes, limits: HttpLimits = LIMITS, step: int = 0) -> list[tuple[Any, bytes]]:
    """Every request in `raw` as (Request, body), answering each with an empty 200.
    With `step`, the bytes arrive `step` at a time."""
    http = HttpConnection(limits)
    pieces = [raw[i : i + step] for i in range(0, len(raw), step)] if step else [raw]
    pieces.append(b"")  # the end of the stream
    out = []

    def more() -> None:
        http.feed(pieces.pop(0))

    while True:
        while (request := http.next_request()) is None:
            if http.closed:
                return out
            more()
        body = b""
        while (data := http.read_body()) != b"":
            if data is None:
                more()
            else:
                body += data
        http.respond(200, [(b"content-length", b"0")])
        http.end()
        out.append((request, body))
        if not http.finish():
            return out


@pytest.mark.parametrize("step", [0, 1, 7])
@pytest.mark.parametrize("name", VALID)
def test_valid_requests_parse(name: str, step: int) -> None:
    case = VALID[name]
    got = parse(case.raw, step=step)
    assert [(r.method, r.target, body) for r, body in got] == case.want
    for header in case.headers:
        assert header in got[0][0].headers


@pytest.mark.parametrize("name", INVALID)
def test_invalid_requests_refused(name: str) -> None:
    raw, status, limits = INVALID[name]
    with pytest.raises(HttpError) as caught:
        parse(raw, limits)
    assert caught.value.status == status


# Near-valid input, where a parser's bounds checks are tested hardest: the corpus, cut and
# spliced with the bytes HTTP's framing turns on.
CORPUS = [case.raw for case in VALID.values()] + [raw for raw, _, _ in INVALID.values()]
SPLICES = [
    *(b"\r\n", b"\r", b"\n", b"\r\n\r\n", b":", b" ", b"\t", b",", b";", b"0", b"\x00", b"\xff"),
    *(b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n"),
    *(b"Connection: close\r\n", b"HTTP/1.0", b"HEAD "),
]


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(CORPUS))[:2048])
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(raw)))
        cut = draw(st.integers(0, 3))
        raw[at : at + cut] = draw(st.sampled_from(SPLICES) | st.binary(max_size=6))
    return bytes(raw)


def outcome(raw: bytes, limits: HttpLimits, step: int) -> object:
    """What a client sending `raw` gets: its requests, or the one refusal."""
    try:
        return [(r.method, r.target, r.headers, body) for r, body in parse(raw, limits, step)]
    except HttpError as exc:
        return exc.status
    except ClientDisconnected:
        return "disconnected"


TIGHT = HttpLimits(max_request_line=24, max_header_bytes=64, max_headers=2, max_body=4, max_drain=8)


@settings(max_examples=600, deadline=None)
@given(mangled(), st.integers(1, 40), st.sampled_from([LIMITS, SMALL, TIGHT]))
# A bare LF the partial head showed first, where the whole head's line was checked first;
# a next request whose line ends just at the limit, its CR taken for more of the line.
@example(b"\nTransfer-Encoding: chunked\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 1, TIGHT)
@example(b"POST / HTTP/1.1\r\nHost:\r\n\r\nTransfer-Encoding: chunk\r\ned\r\n\r\n", 1, TIGHT)
def test_any_bytes_give_requests_or_one_refusal_however_they_arrive(
    raw: bytes, step: int, limits: HttpLimits
) -> None:
    """Never another exception, never a wait for bytes after the end of the stream (parse
    would pop from no pieces left), and the same outcome however TCP splits the bytes."""
    whole = outcome(raw, limits, 0)
    assert whole == "disconnected" or isinstance(whole, list) or 400 <= whole <= 505
    assert outcome(raw, limits, step) == whole


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 30 + b" HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 414),
        (b"GET /\nHost: a" + b"a" * 30 + b" HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nX:\r" + b"x" * 60 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nA: 1\r\n b\r\nC: 3\r\nD: 4\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n" + b"D" * 60 + b"\r\n\r\n", 431),
        # The CR at the limit is bare, and the line too long: both show with the next byte.
        (b"GET /" + b"a" * 19 + b"\r\rHost: a\r\n\r\n", 414),
        (b"GET /" + b"a" * 19 + b"\r\nHost: a\r\n\r\n", 400),  # it fits, with no version
    ],
)
def test_of_several_faults_the_first_in_the_bytes_is_named(raw: bytes, status: int) -> None:
    """Whole, byte by byte, or in fives: the same status, for the fault that comes first."""
    assert {outcome(raw, TIGHT, step) for step in (0, 1, 5)} == {status}


def test_the_next_request_is_carried() -> None:
    """What was read of the next request is what a parked connection carries, and a new
    connection resumes from it."""
    http = HttpConnection(LIMITS)
    http.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHo")
    assert http.next_request() is not None
    assert http.read_body() == b""
    http.respond(204, [])
    http.end()
    assert http.finish()
    assert http.next_request() is None
    carry = http.carry()
    assert carry == b"GET /2 HTTP/1.1\r\nHo"
    resumed = HttpConnection(LIMITS, carry)
    resumed.feed(b"st: a\r\n\r\n")
    request = resumed.next_request()
    assert request is not None and request.target == b"/2"


def test_keep_alive_decisions() -> None:
    def keeps(raw: bytes) -> bool:
        http = HttpConnection(LIMITS)
        http.feed(raw)
        assert http.next_request() is not None
        assert http.read_body() == b""
        http.respond(200, [(b"content-length", b"0")])
        http.end()
        return http.finish()

    assert keeps(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not keeps(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert not keeps(b"GET / HTTP/1.0\r\n\r\n")


def test_unread_body_is_drained_or_the_connection_closes() -> None:
    http = HttpConnection(LIMITS)
    http.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab")
    assert http.next_request() is not None
    http.respond(200, [(b"content-length", b"0")])
    http.end()
    assert http.drain() is None  # one byte to come
    http.feed(b"cGET")
    assert http.drain() is True
    assert http.finish() and http.carry() == b"GET"
    waiting = HttpConnection(LIMITS)
    waiting.feed(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert waiting.next_request() is not None
    waiting.respond(417, [(b"content-length", b"0")])
    waiting.end()
    assert waiting.drain() is False  # never asked for: it may never come


def test_continue_only_when_asked() -> None:
    http = HttpConnection(LIMITS)
    http.feed(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert http.next_request() is not None
    assert http.expects_continue()
    assert http.continue_bytes() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert http.continue_bytes() == b""


def test_head_response_keeps_framing_and_sends_no_body() -> None:
    http = HttpConnection(LIMITS)
    http.feed(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert http.next_request() is not None
    head = http.respond(200, [(b"content-length", b"5")])
    assert b"content-length: 5\r\n" in head.lower()
    assert http.body(b"hello") == []
    assert http.end() == b""


def test_response_headers_date_server_and_framing() -> None:
    for version, framing in (
        (b"1.1", b"transfer-encoding: chunked"),
        (b"1.0", b"connection: close"),
    ):
        http = HttpConnection(LIMITS)
        http.feed(b"GET / HTTP/" + version + b"\r\nHost: a\r\n\r\n")
        assert http.next_request() is not None
        head = http.respond(200, []).lower()
        assert head.startswith(b"http/1.1 200 ok\r\n")
        assert b"\r\ndate: " in head and b"\r\nserver: sockpool\r\n" in head
        assert framing in head


def exchange(raw: bytes) -> HttpConnection:
    http = HttpConnection(LIMITS)
    http.feed(raw)
    assert http.next_request() is not None
    assert http.read_body() == b""
    return http


@pytest.mark.parametrize("status", [204, 304])
def test_no_content_length_with_a_204_or_a_304(status: int) -> None:
    """RFC 9110 8.6: never with a 204; with a 304 only the 200's length, which the one made
    from an empty WSGI list or ASGI body (Flask's and Starlette's 304s) is not."""
    head = exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").respond(
        status, [(b"Content-Length", b"0")]
    )
    assert b"content-length" not in head.lower()


def test_a_content_length_for_a_whole_body_but_not_for_an_empty_answer_to_head() -> None:
    """Where the application gave none. An empty answer to HEAD says nothing of GET's
    length: none, rather than a wrong one."""
    for method, size, length in [(b"GET", 0, b"0"), (b"HEAD", 5, b"5"), (b"HEAD", 0, None)]:
        headers: list[tuple[bytes, bytes]] = []
        exchange(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n").add_length(headers, size)
        assert dict(headers).get(b"Content-Length") == length, method
    headers = [(b"content-length", b"9")]
    exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").add_length(headers, 3)
    assert headers == [(b"content-length", b"9")]  # the application's: respond() holds to it


def test_the_applications_date_and_server_replace_ours() -> None:
    """Date is no list (RFC 9110 5.3): two would be read as one bad date (Werkzeug sets it
    for files and 304s)."""
    date = b"Tue, 24 Nov 2026 01:53:31 GMT"
    head = exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").respond(
        200, [(b"Date", date), (b"server", b"app"), (b"Content-Length", b"0")]
    )
    assert head.lower().count(b"\r\ndate: ") == 1 and b"\r\nDate: " + date + b"\r\n" in head
    assert head.lower().count(b"\r\nserver: ") == 1 and b"\r\nserver: app\r\n" in head


def test_hop_by_hop_headers_of_the_application_are_dropped() -> None:
    """PEP 3333: the application may not set them; the connection is the server's. Not
    Upgrade, which a 426 must carry (RFC 9110 15.5.22)."""
    for name in (b"Keep-Alive", b"TE", b"Trailer", b"Proxy-Connection"):
        head = exchange(b"GET / HTTP/1.0\r\n\r\n").respond(200, [(name, b"x"), (b"X-Kept", b"y")])
        assert b"\r\n" + name.lower() + b":" not in head.lower() and b"\r\nX-Kept: y\r\n" in head
    head = exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").respond(426, [(b"Upgrade", b"TLS/1.2")])
    assert b"\r\nUpgrade: TLS/1.2\r\n" in head


def test_an_http_1_0_head_answered_without_a_length_keeps_the_connection() -> None:
    """Its answer has no body, so no close is needed to end one."""
    http = exchange(b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head = http.respond(200, [])
    assert b"\r\nConnection: keep-alive\r\n" in head and http.end() == b"" and http.finish()


def test_no_100_continue_once_the_response_head_is_out() -> None:
    """A 1xx after the final response's head would land in its body (RFC 9110 15.2): an
    application that answers before it reads the body sends none, and the connection
    closes after the response, as the client may never send the body."""
    http = HttpConnection(LIMITS)
    http.feed(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert http.next_request() is not None
    head = http.respond(200, [])
    assert http.continue_bytes() == b"" and b"\r\nConnection: close\r\n" in head


BIG = 200_000  # a body over max_drain (64 KiB)


@pytest.mark.parametrize(
    ("framing", "read_first", "closes"),
    [
        (b"Content-Length: %d" % BIG, 0, True),  # more unread than drain() reads
        (b"Content-Length: %d" % BIG, BIG - 10, False),  # 10 bytes unread: drained
        (b"Content-Length: 10", 0, False),
        (b"Transfer-Encoding: chunked", 0, True),  # how much is unread is unknown
    ],
)
def test_a_response_says_it_closes_when_the_unread_body_is_more_than_drain_reads(
    framing: bytes, read_first: int, closes: bool
) -> None:
    """A keep-alive promised, then broken by closing, would lose the client's next request
    (behind a balancer's pool of connections, a race on every reuse)."""
    http = HttpConnection(LIMITS)
    http.feed(b"POST / HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n\r\n" + b"x" * read_first)
    assert http.next_request() is not None
    while read_first and http.read_body():
        pass
    head = http.respond(200, [(b"Content-Length", b"0")])
    assert (b"\r\nConnection: close\r\n" in head) == closes
    assert http.drain() is None  # the rest is to come
    if not closes:
        http.feed(b"x" * 10)
        assert http.drain() is True and http.finish()


def test_asgi_a_client_that_reads_nothing_is_let_go_at_the_idle_timeout() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * (8 << 20)})  # > the buffers

    info = dataclasses.replace(INFO, idle_timeout=0.5)
    client, thread = run_async(asgi.make_handler(app), info)
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # and never reads
    thread.join(10)
    assert not thread.is_alive()  # drain() no longer waits for ever
    client.close()


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ([], 5),  # bytes(5) would be five NULs
        ([(b"content-length", b"8")], b"short"),
        ([(b"content-length", b"8")], b"far too long"),
    ],
)
def test_asgi_body_that_cannot_be_sent_is_a_500(headers: list, body: object) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    client, thread = run_async(asgi.make_handler(app))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert Client(client).response()[0] == 500
    thread.join(10)


def test_response_framing() -> None:
    """The application's Content-Length is sent once and held to; a 204 has no body;
    HTTP/1.0 keep-alive is answered; nothing can split a response."""
    http = exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = http.respond(200, [(b"Content-Length", b"3"), (b"X", b"y"), (b"Content-Length", b"3")])
    assert head.lower().count(b"content-length") == 1 and b"transfer-encoding" not in head.lower()
    assert http.body(b"abc") == [b"abc"]
    with pytest.raises(ValueError):
        http.body(b"d")
    assert not http.finish()  # too much: closed
    short = exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    short.respond(200, [(b"content-length", b"3")])
    short.body(b"ab")
    with pytest.raises(ValueError):
        short.end()
    empty = exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = empty.respond(204, [])
    assert b"content-length" not in head.lower() and b"transfer-encoding" not in head.lower()
    assert empty.body(b"ignored") == [] and empty.end() == b"" and empty.finish()
    old = exchange(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"\r\nConnection: keep-alive\r\n" in old.respond(200, [(b"content-length", b"0")])
    assert old.end() == b"" and old.finish()
    told = exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in told.respond(200, [(b"Connection", b"close")])
    told.end()
    assert not told.finish()
    # RFC 9110 5.5: visible characters, obs-text, spaces and tabs (no response splitting)
    for bad in (
        (b"X", b"a\r\nSet-Cookie: b"), (b"X", b"a\nb"), (b"X:", b"a"), (b"X", b"a\x00"),
        (b"X", b"a\x0bb"), (b"X", b"a\x7f"), (b"X", b"\x1f"),
    ):  # fmt: skip
        with pytest.raises(ValueError):
            exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").respond(200, [bad])


def test_end_of_stream_mid_head_is_a_disconnect() -> None:
    http = HttpConnection(LIMITS)
    http.feed(b"GET / HTT")
    assert http.next_request() is None
    http.feed(b"")
    with pytest.raises(ClientDisconnected):
        http.next_request()


def test_which_socket_errors_mean_the_client_is_gone() -> None:
    for gone in (
        ConnectionResetError(errno.ECONNRESET, "reset"),
        BrokenPipeError(errno.EPIPE, "pipe"),
        TimeoutError(errno.ETIMEDOUT, "keepalive gave up"),
        TimeoutError("timed out"),  # a socket timeout, asyncio.timeout
        OSError(errno.EHOSTUNREACH, "no route to host"),
        OSError(errno.ENETUNREACH, "network is unreachable"),
        ClientDisconnected("mid-body"),
    ):
        assert client_gone(gone), gone
    for fault in (OSError(errno.EBADF, "bad descriptor"), OSError(errno.EIO, "a file's I/O")):
        assert not client_gone(fault), fault


def test_targets_and_peers() -> None:
    assert split_target(b"/a?b=c") == (b"/a", b"b=c")
    assert split_target(b"http://h:8/x/y?q") == (b"/x/y", b"q")
    assert split_target(b"http://h") == (b"/", b"")
    assert split_target(b"*") == (b"*", b"")
    assert split_target(b"/env#frag") == split_target(b"/env?#f") == (b"/env", b"")
    assert split_target(b"/env?x=1#frag") == (b"/env", b"x=1")
    assert split_target(b"http://h#x") == split_target(b"http://h/#x") == (b"/", b"")
    assert split_target(b"http://h?x=1") == (b"/", b"x=1")
    assert parse_peer("10.0.0.1:5000") == ("10.0.0.1", 5000)
    assert parse_peer("[::1]:5000") == ("::1", 5000)
    assert parse_peer("/run/x.sock") == ("/run/x.sock", None)
    assert parse_peer("unix") == ("unix", None)
    assert parse_peer("h:\u00b9") == ("h:\u00b9", None)  # a digit, not a port


# -- driving the handlers over socketpairs -------------------------------------------------


class Client:
    """Reads responses with h11 as a client, given the methods of the requests sent."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)

    def response(self, method: bytes = b"GET") -> tuple[int, dict[bytes, bytes], bytes]:
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(self.sock.recv(65536))
            elif type(event) is h11.Response:
                status, headers = event.status_code, dict(event.headers)
            elif type(event) is h11.Data:
                body += event.data
            elif type(event) in (h11.EndOfMessage, h11.ConnectionClosed):
                return status, headers, body

    def closed(self) -> bool:
        """The server closed the connection, nothing more sent."""
        data, closed = self.conn.trailing_data
        return not data and (closed or self.sock.recv(1) == b"")


INFO = ConnectionInfo(7, "web", "127.0.0.1:40000")


def recv_until(sock: socket.socket, marker: bytes) -> bytes:
    """What the server sent up to and with `marker` (and what came with it)."""
    got = b""
    while marker not in got:
        got += sock.recv(4096)
    return got


@dataclass
class Calls:
    seen: list[dict[str, Any]] = field(default_factory=list)


def run_sync(
    handler: Callable[..., None], info: ConnectionInfo = INFO
) -> tuple[socket.socket, threading.Thread]:
    """Serve one connection the way a sync worker does, in a thread; the client's end."""
    server, client = socket.socketpair()
    client.settimeout(10)
    server.settimeout(10)

    def serve() -> None:
        set_current(info)
        try:
            handler(server, info)
        except (ConnectionError, TimeoutError, Parked):  # as the worker does
            pass
        finally:
            server.shutdown(socket.SHUT_WR)
            server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return client, thread


def one_answer(
    handler: Callable[..., None], request: bytes
) -> tuple[int, dict[bytes, bytes], bytes]:
    """A sync handler's answer to one GET `request`; the client closes after it."""
    client, thread = run_sync(handler)
    client.sendall(request)
    answer = Client(client).response()
    client.close()
    thread.join(10)
    return answer


def a_500_and_its_record(
    client: socket.socket, thread: threading.Thread, caplog: pytest.LogCaptureFixture
) -> logging.LogRecord:
    """A request the application fails on: a 500 that closes the connection, and the one
    HANDLER_ERROR record of it."""
    with caplog.at_level(logging.ERROR):
        client.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, _ = Client(client).response()
        thread.join(10)
    assert status == 500 and headers[b"connection"] == b"close"
    (record,) = [r for r in caplog.records if r.name == "sockpool"]
    assert record.MESSAGE_ID == "3d76ff58b995427fae7b2af903c6fb8a"  # HANDLER_ERROR
    return record


def recording_wsgi(calls: Calls) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        stream = environ["wsgi.input"]
        body = b"".join(iter(lambda: stream.read(4096), b""))
        calls.seen.append({**environ, "body": body})
        out = b"%d bytes" % len(body)
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))]
        )
        return [out]

    return wsgiref.validate.validator(app)


def methods_of(case: Valid) -> list[bytes]:
    return [method for method, _, _ in case.want]


@pytest.mark.parametrize("name", VALID)
def test_wsgi_serves_the_valid_corpus(name: str) -> None:
    case = VALID[name]
    calls = Calls()
    client, thread = run_sync(wsgi.make_handler(recording_wsgi(calls), LIMITS))
    client.sendall(case.raw)
    reader = Client(client)
    for method, _, body in case.want:
        status, headers, got = reader.response(method)
        assert status == 200
        answer = b"%d bytes" % len(body)
        assert headers[b"content-length"] == b"%d" % len(answer)  # HEAD's too
        assert got == (b"" if method == b"HEAD" else answer)
    client.shutdown(socket.SHUT_WR)
    thread.join(10)
    assert [
        (e["REQUEST_METHOD"].encode(), e["RAW_URI"].encode(), e["body"]) for e in calls.seen
    ] == case.want
    first = calls.seen[0]
    for name_, value in case.headers:
        assert first["HTTP_" + name_.decode().upper().replace("-", "_")] == value.decode("latin-1")


@pytest.mark.parametrize("name", INVALID)
def test_wsgi_refuses_the_invalid_corpus(name: str) -> None:
    raw, status, limits = INVALID[name]
    calls = Calls()
    client, thread = run_sync(wsgi.make_handler(recording_wsgi(calls), limits))
    client.sendall(raw)
    reader = Client(client)
    got, headers, _ = reader.response(b"POST")
    thread.join(10)
    assert got == status
    assert headers[b"connection"] == b"close"
    assert reader.closed()
    if status != 413 or b"chunked" not in raw:  # a chunked body's size shows as it is read
        assert calls.seen == []


def test_wsgi_environ() -> None:
    calls = Calls()
    info = ConnectionInfo(7, "web", "[::1]:41000")
    client, thread = run_sync(wsgi.make_handler(recording_wsgi(calls)), info)
    client.sendall(
        b"POST /caf%C3%A9/x%2Fy?q=%20 HTTP/1.1\r\nHost: a:80\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\nX-Two: 1\r\nX-Two: 2\r\nX_Under: spoof\r\nConnection: close\r\n"
        b"\r\nhi"
    )
    assert Client(client).response(b"POST")[0] == 200
    thread.join(10)
    (env,) = calls.seen
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/caf\xc3\xa9/x/y"  # bytes as latin-1, PEP 3333
    assert env["QUERY_STRING"] == "q=%20"
    assert env["REMOTE_ADDR"] == "::1" and env["REMOTE_PORT"] == "41000"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "2"
    assert "HTTP_CONTENT_LENGTH" not in env
    assert env["HTTP_X_TWO"] == "1,2"
    assert "HTTP_X_UNDER" not in env
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is False and env["wsgi.multiprocess"] is True
    assert env["wsgi.run_once"] is False
    assert env["body"] == b"hi"


def test_wsgi_streams_and_closes_the_iterable() -> None:
    """Each block goes out as it is yielded (chunked on 1.1, close-delimited on 1.0), and
    close() is called, even when the application raises midway."""
    events: list[str] = []
    release = threading.Event()

    class Body:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def __iter__(self) -> Any:
            yield b"first"
            release.wait(10)  # the client has the first block before the second is made
            if self.fail:
                raise RuntimeError("midway")
            yield b"second"

        def close(self) -> None:
            events.append("closed")

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body(environ["PATH_INFO"] == "/fail")

    for version in (b"1.1", b"1.0"):
        release.clear()
        client, thread = run_sync(wsgi.make_handler(wsgiref.validate.validator(app)))
        client.sendall(b"GET / HTTP/" + version + b"\r\nHost: a\r\nConnection: close\r\n\r\n")
        seen = b""
        while b"first" not in seen:
            seen += client.recv(4096)
        release.set()
        while data := client.recv(4096):
            seen += data
        thread.join(10)
        if version == b"1.1":
            assert b"transfer-encoding: chunked" in seen.lower() and seen.endswith(b"0\r\n\r\n")
        else:
            assert b"transfer-encoding" not in seen.lower() and seen.endswith(b"second")
    release.set()
    client, thread = run_sync(wsgi.make_handler(app))
    client.sendall(b"GET /fail HTTP/1.1\r\nHost: a\r\n\r\n")
    seen = b""
    while data := client.recv(4096):
        seen += data
    thread.join(10)
    assert b"first" in seen and not seen.endswith(b"0\r\n\r\n")  # cut: the client can tell
    assert events == ["closed", "closed", "closed"]


def test_wsgi_write_callable_and_exc_info() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        if path == "/early":  # an error before any body: a second start_response wins
            try:
                raise ValueError("before the head")
            except ValueError:
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")],
                               sys.exc_info())  # fmt: skip
            return [b"sorry"]
        write(b"written ")
        if path == "/late":  # after the head: start_response re-raises
            try:
                raise ValueError("after the head")
            except ValueError:
                start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"returned"]

    client, thread = run_sync(wsgi.make_handler(wsgiref.validate.validator(app)))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /early HTTP/1.1\r\nHost: a\r\n\r\n")
    reader = Client(client)
    assert reader.response()[::2] == (200, b"written returned")
    assert reader.response()[::2] == (503, b"sorry")
    client.sendall(b"GET /late HTTP/1.1\r\nHost: a\r\n\r\n")
    seen = b""
    while data := client.recv(4096):
        seen += data
    thread.join(10)
    assert seen.startswith(b"HTTP/1.1 200 OK\r\n") and seen.endswith(b"written \r\n")  # cut


# An application's own ConnectionError or TimeoutError (its database, an upstream) is its
# error, not a client that went away.
@pytest.mark.parametrize("error", [RuntimeError, ConnectionRefusedError, TimeoutError, SystemExit])
def test_wsgi_application_error_is_a_500_and_a_journal_record(
    error: type[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        raise error("boom")

    record = a_500_and_its_record(*run_sync(wsgi.make_handler(app)), caplog)
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])


@pytest.mark.parametrize("leaves", ["mid-body", "mid-response"])
def test_wsgi_a_client_that_leaves_is_no_application_error(
    leaves: str, caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ["wsgi.input"].read()
        start_response("200 OK", [])
        while True:
            yield b"x" * 65536  # until the client is found gone

    client, thread = run_sync(wsgi.make_handler(app))
    with caplog.at_level(logging.DEBUG):
        client.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc")
        if leaves == "mid-response":
            client.sendall(b"defghi")
            assert client.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        client.close()  # a reset: the response's next send fails at once
        thread.join(10)
    assert not thread.is_alive()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("body", [[b"short"], [b"far too long"]])
def test_wsgi_body_that_breaks_its_content_length_is_a_500_before_anything_is_sent(
    body: list[bytes],
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", "8")])
        return body

    client, thread = run_sync(wsgi.make_handler(app))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert Client(client).response()[0] == 500
    thread.join(10)


@pytest.mark.parametrize("status", ["2000 OK", "OK", "\u00b200 Superscript"])
def test_wsgi_status_that_is_not_three_ascii_digits_is_a_500_naming_it(
    status: str, caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response(status, [("Content-Type", "text/plain")])
        return [b"never"]

    record = a_500_and_its_record(*run_sync(wsgi.make_handler(app)), caplog)
    assert record.exc_info is not None and str(record.exc_info[1]) == f"bad status {status!r}"


@pytest.mark.parametrize("body", ["a str", ["a str"], [5]])
def test_wsgi_body_that_is_not_bytes_is_a_500_not_an_empty_close(body: object) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return iter(body) if isinstance(body, list) else body

    client, thread = run_sync(wsgi.make_handler(app))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert Client(client).response()[0] == 500
    thread.join(10)


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        ("200 OK", [("X-Evil", "a\r\nSet-Cookie: stolen=1")]),
        ("200 OK\r\nSet-Cookie: stolen=1", []),  # through the reason
        ("099 Weird", []),  # no such status
        ("101 Switching Protocols", []),  # not final: the client would wait for another
    ],
)
def test_wsgi_response_head_that_cannot_be_sent_is_a_500(status: str, headers: list) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response(status, headers)
        return [b"never"]

    client, thread = run_sync(wsgi.make_handler(app))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    seen = b""
    while data := client.recv(4096):
        seen += data
    thread.join(10)
    assert seen.startswith(b"HTTP/1.1 500 ") and b"stolen" not in seen


@pytest.mark.parametrize("framing", [b"Content-Length: 100", b"Transfer-Encoding: chunked"])
def test_wsgi_body_trickled_slower_than_the_request_timeout_is_cut_off(framing: bytes) -> None:
    """The socket's timeout starts again with each byte: only request_timeout stops a
    client that sends its body a byte at a time from holding the worker for ever."""
    seen: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(environ["wsgi.input"].read())
        start_response("200 OK", [])
        return [b"read"]

    client, thread = run_sync(wsgi.make_handler(app, HttpLimits(request_timeout=0.5)))
    client.sendall(b"POST / HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n\r\n")
    for _ in range(100):  # 20 s at this pace; the socket's own timeout is 10 s
        if select.select([client], [], [], 0.2)[0]:
            break
        client.sendall(b"1\r\nx\r\n" if b"chunked" in framing else b"x")
    assert client.recv(4096) == b""  # closed, unanswered
    thread.join(10)
    assert not seen  # the application never had the body


def test_wsgi_an_application_slower_than_the_request_timeout_still_reads_its_body() -> None:
    """The timeout is the client's: only the waits for its bytes count."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        time.sleep(0.8)  # work, past the request timeout, before reading
        body = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [body]

    client, thread = run_sync(wsgi.make_handler(app, HttpLimits(request_timeout=0.5)))
    client.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5\r\n\r\n")
    time.sleep(0.1)  # the body comes once the head has been read
    client.sendall(b"hello")
    assert Client(client).response()[2] == b"hello"
    thread.join(10)


def test_wsgi_continue_is_sent_when_the_body_is_read() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        body = b""
        if environ["PATH_INFO"] == "/read":
            body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body or b"unread"]

    client, thread = run_sync(wsgi.make_handler(wsgiref.validate.validator(app)))
    head = b"Host: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    client.sendall(b"POST /read HTTP/1.1\r\n" + head)
    assert recv_until(client, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.sendall(b"body")
    assert Client(client).response(b"POST")[2] == b"body"
    client.sendall(b"POST /unread HTTP/1.1\r\n" + head)
    reader = Client(client)
    status, headers, body = reader.response(b"POST")
    assert (status, body) == (200, b"unread")  # no 100: the application did not read
    assert headers[b"connection"] == b"close"  # the body may never come: close
    thread.join(10)


@pytest.fixture
def sendfile_offsets(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Where each os.sendfile() the server makes begins (it still sends)."""
    offsets: list[int] = []
    real = os.sendfile

    def spy(out: int, fd: int, offset: int, count: int) -> int:
        offsets.append(offset)
        return real(out, fd, offset, count)

    monkeypatch.setattr(os, "sendfile", spy)
    return offsets


@pytest.mark.parametrize("kind", ["regular-file", "bytesio"])
def test_wsgi_file_wrapper_sends_the_file(sendfile_offsets: list[int], kind: str) -> None:
    """A regular file goes out with os.sendfile(), an io.BytesIO as one body, from where
    the file stands, with its Content-Length; HEAD gets the same Content-Length and no
    body."""
    content = b"0123456789" * 10000
    with tempfile.NamedTemporaryFile() as f:
        f.write(content)
        f.flush()

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            if kind == "bytesio":
                opened: Any = io.BytesIO(content)
            else:  # the server closes it, as PEP 3333 says
                opened = open(f.name, "rb")  # noqa: SIM115
            opened.read(5)  # buffered: the descriptor is further on than the file
            return environ["wsgi.file_wrapper"](opened)

        # Not through wsgiref.validate: it hides the wrapper in an iterator of its own.
        client, thread = run_sync(wsgi.make_handler(app))
        client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nHEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        reader = Client(client)
        _, headers, body = reader.response()
        assert headers[b"content-length"] == b"99995" and body == content[5:]
        _, headers, body = reader.response(b"HEAD")
        assert headers[b"content-length"] == b"99995" and body == b""
        client.close()
        thread.join(10)
    assert sendfile_offsets == ([5] if kind == "regular-file" else [])


@pytest.mark.parametrize("kind", ["regular-file", "bytesio"])
@pytest.mark.parametrize("wrote", [b"", b"first part "], ids=["returned", "written-first"])
def test_wsgi_a_file_answer_is_as_long_as_its_content_length(
    tmp_path: Path, kind: str, wrote: bytes
) -> None:
    """A file answer is as long as the application's Content-Length says: the file's
    first bytes when that is shorter, or, after a first part the application wrote with
    the write() callable, the part and the whole file."""
    content = os.urandom(100_000)
    sent = wrote + (content if wrote else content[:70_000])
    path = tmp_path / "file"
    path.write_bytes(content)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        length = len(sent)
        head = [("Content-Type", "application/octet-stream"), ("Content-Length", str(length))]
        write = start_response("200 OK", head)
        if wrote:
            write(wrote)
        opened = io.BytesIO(content) if kind == "bytesio" else open(path, "rb")  # noqa: SIM115
        return environ["wsgi.file_wrapper"](opened)

    client, thread = run_sync(wsgi.make_handler(app))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    reader = Client(client)
    for _ in range(2):  # the first answer ended where its head said: the next is whole
        status, _, body = reader.response()
        assert status == 200 and body == sent
    client.close()
    thread.join(10)


class _Reads(io.BytesIO):
    """A file that is not a regular one (no sendfile()): where each read began."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.starts: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.starts.append(self.tell())
        return super().read(size)


@pytest.mark.parametrize("kind", ["regular-file", "bytesio", "not-a-file"])
@pytest.mark.parametrize("ask", [b"", b"Range: bytes=70000-79999\r\n"], ids=["whole", "range"])
def test_wsgi_send_file_goes_out_as_the_span_it_is(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    sendfile_offsets: list[int],
    kind: str,
    ask: bytes,
) -> None:
    """werkzeug's send_file(), whole or a `Range` of it (its range iterator around the
    wrapped file): a regular file goes out with os.sendfile() from the span's start (and so
    may be left to the dispatcher: test_web); an io.BytesIO, all in memory, as one answer
    (whose rest, too, may be left: unsent.send() with last); any other file is iterated,
    seeked to the start, not read up to it. The client gets the span's bytes, with
    werkzeug's status and headers."""
    from werkzeug.utils import send_file

    content = os.urandom(100_000)
    path = tmp_path / "file"
    path.write_bytes(content)
    opened: list[io.BytesIO] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if kind != "regular-file":
            opened.append(io.BytesIO(content) if kind == "bytesio" else _Reads(content))
        # By path, as Flask's send_file(path) does: werkzeug knows the size, so does ranges.
        what = path if kind == "regular-file" else opened[-1]
        answer = send_file(what, environ, mimetype="application/octet-stream")
        return answer(environ, start_response)

    sends: list[tuple[bool, int]] = []  # (last, bytes) of each part sent
    real_send = wsgi._send
    monkeypatch.setattr(
        wsgi,
        "_send",
        lambda conn, data, last=True: (
            sends.append((last, len(data))),
            real_send(conn, data, last),
        ),
    )
    request = b"GET / HTTP/1.1\r\nHost: a\r\n" + ask + b"\r\n"
    status, headers, body = one_answer(wsgi.make_handler(app), request)
    start, end = (70000, 80000) if ask else (0, 100_000)
    assert status == (206 if ask else 200) and body == content[start:end]
    assert headers[b"content-length"] == b"%d" % (end - start)
    if ask:
        assert headers[b"content-range"] == b"bytes 70000-79999/100000"
    sent = sendfile_offsets
    if kind == "regular-file":
        assert sent[0] == start
    elif kind == "bytesio":  # the whole body in the last part (which a slow client leaves)
        assert not sent and sends[-1][0] and sends[-1][1] >= end - start and opened[0].closed
    else:
        assert not sent and opened[0].starts[0] == start and opened[0].closed
        assert len(sends) > 2  # a stream: each piece as it comes


@pytest.mark.parametrize("begun", [False, True], ids=["unbegun", "begun"])
def test_wsgi_a_range_without_its_length_is_still_its_span(tmp_path: Path, begun: bool) -> None:
    """werkzeug's range iterator as the application left it: with its Content-Length
    removed the answer still ends where the range does (the server gives it its length),
    and one the application began to iterate goes on from where it stopped, chunked, not
    again from the range's start."""
    from werkzeug.utils import send_file

    content = os.urandom(10240)
    path = tmp_path / "file"
    path.write_bytes(content)
    taken: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        answer = send_file(path, environ, mimetype="application/octet-stream")
        del answer.headers["Content-Length"]
        taken.append(next(answer.response) if begun else b"")
        return answer(environ, start_response)

    request = b"GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=700-9999\r\n\r\n"
    status, headers, body = one_answer(wsgi.make_handler(app), request)
    assert status == 206 and headers.get(b"content-length") == (None if begun else b"9300")
    assert body == content[700 + len(taken[0]) : 10000]


def test_wsgi_a_file_cut_short_before_its_answer_is_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file shrank between werkzeug's stat, which gave its Content-Length, and the
    send: nothing has gone yet, so the client gets a 500, not a head whose body never
    comes, and the error is the application's."""
    from werkzeug.utils import send_file

    path = tmp_path / "file"
    path.write_bytes(os.urandom(10240))

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        answer = send_file(path, environ, mimetype="application/octet-stream")
        os.truncate(path, 50)
        return answer(environ, start_response)

    a_500_and_its_record(*run_sync(wsgi.make_handler(app)), caplog)


def test_wsgi_a_client_gone_during_a_bytesio_answer_is_a_disconnect() -> None:
    """An in-memory file's send fails as any answer's does, and the BytesIO is closed after
    it: the server holds no view of it (one left alive, as in a failed send's traceback,
    would make close() raise BufferError in place of the disconnect)."""
    from werkzeug.utils import send_file

    made: list[io.BytesIO] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        made.append(io.BytesIO(os.urandom(4 << 20)))
        answer = send_file(made[-1], environ, mimetype="application/octet-stream")
        return answer(environ, start_response)

    server, client = socket.socketpair()
    with server:
        server.settimeout(10)
        client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        client.close()
        with pytest.raises(ClientDisconnected):
            wsgi.make_handler(app)(server, INFO)
    assert made[0].closed


def test_wsgi_parks_between_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between requests the handler gives the connection back with what it read of the
    next request; a new handler call resumes from `info.carried`."""
    from sockpool import giveback

    parked: list[bytes] = []
    monkeypatch.setattr(
        giveback, "_send", lambda fd, cid, started, carry, *flags: parked.append(carry)
    )
    monkeypatch.setattr(giveback, "_park_after", 0.0)
    calls = Calls()
    handler = wsgi.make_handler(recording_wsgi(calls))
    info = ConnectionInfo(7, "web", "127.0.0.1:1", may_park=True)
    server, client = socket.socketpair()

    def serve(info: ConnectionInfo) -> None:  # the current connection ends with the call
        set_current(info)
        with pytest.raises(giveback.Parked):
            handler(server, info)

    client.sendall(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHo")
    contextvars.copy_context().run(serve, info)
    assert parked == [b"GET /2 HTTP/1.1\r\nHo"]
    info2 = ConnectionInfo(7, "web", "127.0.0.1:1", carried=parked[0], may_park=True)
    client.sendall(b"st: a\r\n\r\n")
    contextvars.copy_context().run(serve, info2)
    assert parked[1:] == [b""]
    assert [e["PATH_INFO"] for e in calls.seen] == ["/1", "/2"]
    reader = Client(client)
    assert reader.response()[2] == b"0 bytes" and reader.response()[2] == b"0 bytes"
    assert wsgi.make_handler(recording_wsgi(calls)).client_speaks_first  # type: ignore[attr-defined]


def test_access_log(caplog: pytest.LogCaptureFixture) -> None:
    calls = Calls()
    caplog.handler.addFilter(log._AddFields())  # as log.setup() does: connection fields
    for on in (True, False):
        caplog.clear()
        client, thread = run_sync(wsgi.make_handler(recording_wsgi(calls), access_log=on))
        with caplog.at_level(logging.INFO):
            client.sendall(
                b"POST /a?b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n"
                b"\r\nxyz"
            )
            Client(client).response(b"POST")
            thread.join(10)
        records = [r for r in caplog.records if r.name == "sockpool.access"]
        if not on:
            assert records == []
            continue
        (record,) = records
        assert (record.METHOD, record.PATH, record.STATUS, record.BYTES) == (
            "POST",
            "/a?b",
            "200",
            "7",
        )
        assert int(record.DURATION_US) >= 0
        assert record.CONN_ID == "7"


# -- ASGI ----------------------------------------------------------------------------------


def run_async(
    handler: Callable[..., Any], info: ConnectionInfo = INFO, first: bytes = b""
) -> tuple[socket.socket, threading.Thread]:
    """Serve one connection the way an async worker does, on an event loop in a thread;
    `first`: what the client has sent before the handler starts."""
    server, client = socket.socketpair()
    client.settimeout(10)
    client.sendall(first)

    async def serve() -> None:
        set_current(info)
        reader, writer = await asyncio.open_connection(sock=server)
        if info.carried:
            reader.feed_data(info.carried)
        try:
            await handler(reader, writer)
        except (ConnectionError, TimeoutError, Parked):  # as the worker does
            pass
        finally:
            if writer.can_write_eof():
                writer.write_eof()
            writer.close()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    return client, thread


def recording_asgi(calls: Calls) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            body += message["body"]
            if not message["more_body"]:
                break
        calls.seen.append({**scope, "body": body})
        out = b"%d bytes" % len(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
        await send({"type": "http.response.body", "body": out})

    return app


@pytest.mark.parametrize("name", VALID)
def test_asgi_serves_the_valid_corpus(name: str) -> None:
    case = VALID[name]
    calls = Calls()
    client, thread = run_async(asgi.make_handler(recording_asgi(calls), LIMITS))
    client.sendall(case.raw)
    reader = Client(client)
    for method, _, body in case.want:
        status, headers, got = reader.response(method)
        answer = b"%d bytes" % len(body)
        assert status == 200
        assert headers[b"content-length"] == b"%d" % len(answer)  # HEAD's too
        assert got == (b"" if method == b"HEAD" else answer)
    client.shutdown(socket.SHUT_WR)
    thread.join(10)
    got_calls = [
        (s["method"].encode(), s["raw_path"], s["query_string"], s["body"]) for s in calls.seen
    ]
    assert got_calls == [(m, *split_target(t), b) for m, t, b in case.want]
    for header in case.headers:
        assert header in calls.seen[0]["headers"]


@pytest.mark.parametrize("name", INVALID)
def test_asgi_refuses_the_invalid_corpus(name: str) -> None:
    raw, status, limits = INVALID[name]
    calls = Calls()
    client, thread = run_async(asgi.make_handler(recording_asgi(calls), limits))
    client.sendall(raw)
    reader = Client(client)
    got, headers, _ = reader.response(b"POST")
    thread.join(10)
    assert got == status
    assert headers[b"connection"] == b"close"
    assert reader.closed()
    if status != 413 or b"chunked" not in raw:
        assert calls.seen == []


def test_asgi_scope() -> None:
    calls = Calls()
    info = ConnectionInfo(7, "web", "[::1]:41000")
    client, thread = run_async(asgi.make_handler(recording_asgi(calls), state={"db": 1}), info)
    client.sendall(b"GET /caf%C3%A9/x%2Fy?q=%20 HTTP/1.0\r\nX-A: 1\r\n\r\n")
    assert Client(client).response()[0] == 200
    thread.join(10)
    (scope,) = calls.seen
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert scope["http_version"] == "1.0" and scope["method"] == "GET"
    assert scope["scheme"] == "http" and scope["root_path"] == ""
    assert scope["path"] == "/café/x/y"
    assert asgi_path(b"/caf%C3%A9/%ff") == "/café/\ufffd"  # not UTF-8: not a lone surrogate
    assert scope["raw_path"] == b"/caf%C3%A9/x%2Fy" and scope["query_string"] == b"q=%20"
    assert scope["headers"] == [(b"x-a", b"1")]
    assert scope["client"] == ("::1", 41000)
    assert scope["server"] is None  # a socketpair has no address
    assert scope["state"] == {"db": 1}


def test_asgi_streaming_continue_disconnect_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    """A streamed body goes out chunked; 100 Continue is sent when the body is first asked
    for; receive() after the body is http.disconnect once the response is out; an error
    before the response is a 500 and a HANDLER_ERROR record."""
    after: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        message = await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send(
            {"type": "http.response.body", "body": b"a" + message["body"], "more_body": True}
        )
        await send({"type": "http.response.body", "body": b"b", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        after.append((await receive())["type"])

    client, thread = run_async(asgi.make_handler(app))
    client.sendall(
        b"POST /s HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
    )
    assert recv_until(client, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.sendall(b"x")
    reader = Client(client)
    status, headers, body = reader.response(b"POST")
    assert (status, headers[b"transfer-encoding"], body) == (201, b"chunked", b"axb")
    with caplog.at_level(logging.ERROR):
        client.sendall(b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, _ = reader.response()
        thread.join(10)
    assert status == 500 and headers[b"connection"] == b"close"
    assert after == ["http.disconnect"]
    (record,) = [r for r in caplog.records if r.name == "sockpool"]
    assert record.MESSAGE_ID == "3d76ff58b995427fae7b2af903c6fb8a"


async def _inner_task_cancelled() -> None:
    inner = asyncio.ensure_future(asyncio.sleep(10))
    await asyncio.sleep(0)
    inner.cancel()
    await inner  # its CancelledError, not this task's


@pytest.mark.parametrize(
    "raises",
    [
        ConnectionRefusedError("boom: the database"),  # not the client's going
        SystemExit(3),  # a request cannot end the worker and its other connections
        _inner_task_cancelled,  # not a cancellation of the request's task
    ],
    ids=["ConnectionRefusedError", "SystemExit", "CancelledError"],
)
def test_asgi_application_error_is_a_500_and_a_journal_record(
    raises: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if isinstance(raises, BaseException):
            raise raises
        await raises()

    a_500_and_its_record(*run_async(asgi.make_handler(app)), caplog)


def test_asgi_parks_between_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    from sockpool import giveback

    parked: list[bytes] = []

    def send(fd: int, cid: int, started: int, carry: bytes, *flags: object) -> None:
        parked.append(carry)

    monkeypatch.setattr(giveback, "_send", send)
    # The bytes are there before the handler starts: it reads them well within this.
    monkeypatch.setattr(giveback, "_park_after", 0.2)
    calls = Calls()
    handler = asgi.make_handler(recording_asgi(calls))
    info = ConnectionInfo(7, "web", "127.0.0.1:1", may_park=True)
    first = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHo"
    client, thread = run_async(handler, info, first)
    assert Client(client).response()[2] == b"0 bytes"
    thread.join(10)
    assert parked == [b"GET /2 HTTP/1.1\r\nHo"]
    # Parked, the connection left this worker (abort() closed its copy); it comes back,
    # here on a new socketpair, with what was read of the next request carried.
    info2 = ConnectionInfo(7, "web", "127.0.0.1:1", carried=parked[0], may_park=True)
    client2, thread = run_async(handler, info2)
    client2.sendall(b"st: a\r\n\r\n")
    assert Client(client2).response()[2] == b"0 bytes"
    thread.join(10)
    assert [s["path"] for s in calls.seen] == ["/1", "/2"]


def lifespan_app(behaviour: str, seen: list[str]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan" or behaviour == "unsupported":
            raise ValueError("no lifespan here")
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "lifespan.startup":
                if behaviour == "fail":
                    await send({"type": "lifespan.startup.failed", "message": "no database"})
                    return
                if behaviour == "raise":
                    raise RuntimeError("startup raised")
                if behaviour == "exit":
                    sys.exit(3)
                scope["state"]["ready"] = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app


def test_lifespan() -> None:
    async def main() -> None:
        seen: list[str] = []
        life = asgi.Lifespan(lifespan_app("ok", seen))
        await life.startup()
        assert life.state == {"ready": True}
        await life.shutdown()
        assert seen == ["lifespan.startup", "lifespan.shutdown"]
        for behaviour, words in (
            ("fail", "no database"),
            ("raise", "startup raised"),
            ("exit", "SystemExit"),  # its task's: not out of the loop, ending the worker
        ):
            failing = asgi.Lifespan(lifespan_app(behaviour, []))
            with pytest.raises(asgi.LifespanFailed, match=words):
                await failing.startup()
        unsupported = asgi.Lifespan(lifespan_app("unsupported", []))
        await unsupported.startup()
        await unsupported.shutdown()
        assert not unsupported.supported

    asyncio.run(main())


def test_asgi_silent_client_mid_body_is_a_disconnect() -> None:
    """A client that stops sending its body for idle_timeout is a disconnect to the
    application, not an error in its code: to every task that waits for the body."""
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(await receive())
        seen.extend(await asyncio.gather(receive(), receive()))

    info = ConnectionInfo(7, "web", "127.0.0.1:1", idle_timeout=0.2)
    first = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"
    client, thread = run_async(asgi.make_handler(app), info, first)
    thread.join(10)
    assert [m["type"] for m in seen] == ["http.request", "http.disconnect", "http.disconnect"]
    assert seen[0]["body"] == b"abc" and seen[0]["more_body"]
    assert client.recv(4096) == b""  # closed without an answer: nobody is listening


def test_asgi_two_tasks_may_read_the_body_at_once() -> None:
    """receive() may be awaited by several tasks at once (uvicorn allows it), body or not:
    each piece of the body goes to one of them, in order, none is lost, and the reader
    underneath (which takes one reader at a time) is never asked twice."""
    pieces: list[bytes] = []
    both_wait = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def drain(second: bool) -> None:
            if second:  # the first already waits in receive(): it ran first
                both_wait.set()
            while (message := await receive())["type"] == "http.request":
                pieces.append(message["body"])
                if not message["more_body"]:
                    return

        await asyncio.gather(drain(False), drain(True))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"".join(pieces)})

    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n"
    client, thread = run_async(asgi.make_handler(app), first=head)
    assert both_wait.wait(10)
    for sent, part in enumerate((b"ab", b"cd", b"ef")):
        while len(pieces) < sent and thread.is_alive():  # one read each, both tasks waiting
            threading.Event().wait(0.01)
        client.sendall(part)
    answer = b""
    while not answer.endswith(b"\r\n\r\nabcdef") and (data := client.recv(4096)):
        answer += data
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"".join(pieces) == b"abcdef"


def test_asgi_receive_after_the_response_is_a_disconnect() -> None:
    """The ASGI spec: receive() after the response has been sent gives http.disconnect,
    not the body the application never read."""
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        seen.append((await receive())["type"])

    client, thread = run_async(asgi.make_handler(app))
    client.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    assert Client(client).response()[0] == 200
    client.close()
    thread.join(10)
    assert seen == ["http.disconnect"]


def test_asgi_100_continue_is_not_sent_after_the_response_head() -> None:
    """An application that starts its answer, then reads the body (a streaming echo): the
    100 would land in the middle of the body."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"echo:", "more_body": True})
        await send({"type": "http.response.body", "body": (await receive())["body"]})

    client, thread = run_async(asgi.make_handler(app))
    client.sendall(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    answer = recv_until(client, b"echo:\r\n")
    client.sendall(b"hello")  # as curl does on a final answer
    answer += b"".join(iter(lambda: client.recv(4096), b""))  # the 100 owed: it closes
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close\r\n" in answer
    assert answer.endswith(b"\r\n\r\n5\r\necho:\r\n5\r\nhello\r\n0\r\n\r\n")
    thread.join(10)


def test_asgi_a_body_trickled_past_request_timeout_is_a_disconnect() -> None:
    """Each wait for the body is bounded by idle_timeout, and all of them together by
    request_timeout, as for WSGI: else a client sending a byte a second would keep its
    slot for ever."""
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (message := await receive())["type"] == "http.request" and message["more_body"]:
            seen.append(message)
        seen.append(message)

    limits = dataclasses.replace(LIMITS, request_timeout=0.5)
    info = dataclasses.replace(INFO, idle_timeout=5)
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n"
    client, thread = run_async(asgi.make_handler(app, limits), info, first=head)
    for _ in range(8):  # 2.1 s in all, each pause well inside idle_timeout
        if not thread.is_alive():
            break
        threading.Event().wait(0.3)
        with contextlib.suppress(OSError):
            client.sendall(b"x")
    thread.join(10)
    assert seen[-1]["type"] == "http.disconnect" and len(seen) < 8


def waiting_app(seen: list[str]) -> Any:
    """A long-poll: after the body, two tasks wait in receive() for the client to leave
    (or the response to end, from another task) before answering."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        seen.extend(m["type"] for m in await asyncio.gather(receive(), receive()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    return app


@pytest.mark.parametrize("leaves", ["close", "half-close", "reset"])
def test_asgi_hears_the_client_leave_while_it_waits(leaves: str) -> None:
    """Nothing pinned: a long-poll whose client went learns it, so its slot and descriptor
    go with the client. A half-closed client counts as gone, as in uvicorn."""
    seen: list[str] = []
    client, thread = run_async(asgi.make_handler(waiting_app(seen)))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    if leaves == "half-close":
        client.shutdown(socket.SHUT_WR)
    elif leaves == "reset":
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        client.close()
    else:
        client.close()
    thread.join(10)
    assert not thread.is_alive() and seen == ["http.disconnect", "http.disconnect"]
    if leaves == "half-close":
        assert client.recv(4096) == b""  # the late answer is not sent: it was told


def is_disconnected(receive: Any) -> bool:
    """receive() as in a cancelled anyio scope (Starlette's is_disconnected()): run to its
    first wait, and cancelled there; True for an http.disconnect that came without one."""
    call = receive()
    try:
        call.send(None)
    except StopIteration as returned:
        return bool(returned.value["type"] == "http.disconnect")
    with contextlib.suppress(asyncio.CancelledError):
        call.throw(asyncio.CancelledError())
    return False


def test_asgi_a_poll_in_a_cancelled_scope_sees_the_client_gone() -> None:
    """Starlette's request.is_disconnected() calls receive() in a cancelled scope: once
    the client has gone, the answer must come without a wait. (test_web has the real
    Starlette; the Debian build runs these tests without it.)"""
    polls: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        while True:
            polls.append(gone := is_disconnected(receive))
            if gone:
                return
            await asyncio.sleep(0.01)  # a long-poll's wait for news: nothing is sent

    client, thread = run_async(asgi.make_handler(app))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    client.close()
    thread.join(10)
    assert not thread.is_alive() and polls[-1] and not any(polls[:-1])


def test_asgi_a_first_poll_after_the_client_went_says_so() -> None:
    """The one check before costly work: the client left while the body was being used."""
    polls: list[bool] = []
    gone = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await asyncio.get_running_loop().run_in_executor(None, gone.wait, 10)
        await asyncio.sleep(0.1)  # the end of stream reaches the reader
        polls.append(is_disconnected(receive))

    client, thread = run_async(asgi.make_handler(app))
    client.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    client.close()
    gone.set()
    thread.join(10)
    assert polls == [True]


def test_asgi_a_client_lost_to_keepalive_is_gone() -> None:
    """A peer that vanished without a FIN is found by TCP keepalive: its read fails with
    ETIMEDOUT, an OSError that is no ConnectionError, and means gone all the same."""
    seen: list[str] = []
    handler = asgi.make_handler(waiting_app(seen))

    async def lost_to_keepalive(reader: asyncio.StreamReader, writer: Any) -> None:
        error = TimeoutError(110, "Connection timed out")  # as connection_lost(exc) gives it
        asyncio.get_running_loop().call_later(0.2, reader.set_exception, error)
        await handler(reader, writer)

    client, thread = run_async(lost_to_keepalive)
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    thread.join(10)
    assert not thread.is_alive() and seen == ["http.disconnect", "http.disconnect"]


def test_asgi_a_request_sent_with_a_half_close_after_a_response_is_answered() -> None:
    """An end of stream once the response is out is a client done sending, not gone: the
    application may still be at work (a background task) and listening."""
    calls = Calls()
    recording = recording_asgi(calls)
    responded = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] != "/background":
            return await recording(scope, receive, send)
        await receive()
        listener = asyncio.ensure_future(receive())
        await asyncio.sleep(0)  # listening, as Starlette's StreamingResponse is
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        await asyncio.get_running_loop().run_in_executor(None, responded.wait, 10)
        await asyncio.sleep(0.1)  # the background work, while the last request arrives
        await listener

    client, thread = run_async(asgi.make_handler(app))
    client.sendall(b"GET /background HTTP/1.1\r\nHost: a\r\n\r\n")
    reader = Client(client)
    assert reader.response()[::2] == (200, b"ok")
    client.sendall(b"GET /last HTTP/1.1\r\nHost: a\r\n\r\n")
    client.shutdown(socket.SHUT_WR)
    responded.set()
    assert reader.response()[::2] == (200, b"0 bytes")
    thread.join(10)


def test_asgi_what_a_client_pipelines_while_a_stream_listens_is_served_after_it() -> None:
    """While the application listens for a disconnect (Starlette's StreamingResponse
    does), the client's next request is read and kept, not taken for a departure."""
    calls = Calls()
    recording = recording_asgi(calls)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] != "/stream":
            return await recording(scope, receive, send)
        await receive()
        listener = asyncio.ensure_future(receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"a", b"b", b""):
            await asyncio.sleep(0.1)  # the pipelined request arrives meanwhile
            await send({"type": "http.response.body", "body": piece, "more_body": bool(piece)})
        assert (await listener)["type"] == "http.disconnect"  # the response is out

    client, thread = run_async(asgi.make_handler(app))
    client.sendall(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\nPOST /next HTTP/1.1\r\n")
    time.sleep(0.05)
    client.sendall(b"Host: a\r\nContent-Length: 2\r\n\r\nhi")
    reader = Client(client)
    assert reader.response()[::2] == (200, b"ab")
    assert reader.response(b"POST")[::2] == (200, b"2 bytes")
    client.shutdown(socket.SHUT_WR)
    thread.join(10)
    assert [(s["path"], s["body"]) for s in calls.seen] == [("/next", b"hi")]


def _body_of(http: HttpConnection) -> bytes:
    body = b""
    while piece := http.read_body():
        body += piece
    return body


def test_a_request_whose_small_body_has_not_all_come_is_not_ready() -> None:
    """Within hold_body (max_carry), a request counts once its body is here: until then
    carry() holds all of it, to be parked whole; a worker holds nothing for a slow body."""
    limits = HttpLimits(hold_body=100)
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"
    http = HttpConnection(limits, head + b"hello")
    assert http.next_request() is None and http.carry() == head + b"hello"
    http.feed(b"world")
    assert http.next_request() is not None and _body_of(http) == b"helloworld"
    chunked = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    http = HttpConnection(limits, chunked)
    assert http.next_request() is None
    http.feed(b"0\r\n\r\n")
    assert http.next_request() is not None and _body_of(http) == b"hello"


def test_a_chunked_body_in_many_chunks_is_not_held() -> None:
    """Each look at a held chunked body parses it again: past HELD_CHUNKS chunks it goes to
    the worker, or a body trickled in a thousand one-byte chunks would cost its square."""
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    few = HttpConnection(HttpLimits(hold_body=1000), head + b"1\r\na\r\n" * HELD_CHUNKS)
    assert few.next_request() is None  # HELD_CHUNKS chunks, the last one owed: held
    many = HttpConnection(HttpLimits(hold_body=1000), head + b"1\r\na\r\n" * (HELD_CHUNKS + 1))
    assert many.next_request() is not None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"Content-Length: 200\r\n\r\nhello", "over hold_body with its head: read in the worker"),
        (b"Content-Length: 10\r\nExpect: 100-continue\r\n\r\n", "its client waits for us"),
        (b"Content-Length: 0\r\n\r\n", "no body"),
    ],
)
def test_a_request_is_ready_with_its_head_when_its_body_is_not_held(data: bytes, why: str) -> None:
    http = HttpConnection(HttpLimits(hold_body=100), b"POST /x HTTP/1.1\r\nHost: a\r\n" + data)
    assert http.next_request() is not None, why


def test_a_longer_body_within_buffer_body_is_owed_then_ready_once_it_has_come() -> None:
    """Over hold_body with its head, a body whose rest fits buffer_body (max_buffered_body)
    is not ready while what came of it fits hold_body: `owed` says how much is to come,
    for the dispatcher to wait for. Once that has come, the request is whole."""
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n\r\n"
    http = HttpConnection(HttpLimits(hold_body=100, buffer_body=1000), head + b"abc")
    assert http.next_request() is None and http.owed == 497
    assert http.carry() == head + b"abc"
    http.feed(b"d" * 497)
    assert http.next_request() is not None and http.owed == 0
    assert _body_of(http) == b"abc" + b"d" * 497


@pytest.mark.parametrize(
    ("limits", "sent", "why"),
    [
        (HttpLimits(hold_body=100, buffer_body=499), b"", "its rest over buffer_body"),
        (HttpLimits(hold_body=100), b"", "buffer_body 0: an ASGI app's, read in its task"),
        (HttpLimits(hold_body=100, buffer_body=1000), b"a" * 60, "what came is over hold_body"),
    ],
)
def test_a_longer_body_is_read_in_the_worker_past_the_limits(
    limits: HttpLimits, sent: bytes, why: str
) -> None:
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n\r\n"
    http = HttpConnection(limits, head + sent)
    assert http.next_request() is not None and http.owed == 0, why


def test_a_request_whose_client_left_mid_body_is_ready_to_be_told() -> None:
    http = HttpConnection(
        HttpLimits(hold_body=100), b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nab"
    )
    http.feed(b"")
    assert http.next_request() is not None  # the application hears of it as it reads
    with pytest.raises(ClientDisconnected):
        _body_of(http)


def test_a_pipelined_requests_time_starts_when_the_one_before_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its first bytes came with the request before it, which took longer than
    request_timeout to serve: its own time counts from then, not from that request's
    start (it was dropped unanswered, its time up before its first wait)."""
    monkeypatch.setattr(giveback, "_request_timeout", 0.5)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/slow":
            time.sleep(0.8)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    info = ConnectionInfo(8, "web", "127.0.0.1:40001")
    client, thread = run_sync(wsgi.make_handler(app, HttpLimits(request_timeout=0.5)), info)
    with client:
        client.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n")
        assert recv_until(client, b"\r\n\r\nok").startswith(b"HTTP/1.1 200 ")
        client.sendall(b"Host: a\r\n\r\n")  # the rest of the second, at once
        assert recv_until(client, b"\r\n\r\nok").startswith(b"HTTP/1.1 200 ")
    thread.join(10)
