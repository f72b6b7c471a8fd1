"""Web applications under the real systemd-socket-activate: Flask on sync workers (--wsgi),
Starlette on async workers (--asgi), and raw WSGI/ASGI apps (webapps.py), over real sockets.

What an application saw comes back in its answers (JSON echoes) or in the marks file it
writes (webapps.mark): "call ..." for each request that reached it, "close ..." for each
iterable closed, "startup PID" / "shutdown PID" for its lifespan. The RFC 9112 corpus is
the unit tests' (tests/unit/test_http11.py), sent here through the dispatcher, parking and
the workers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from harness import (
    SOCKPOOL,
    HttpClient,
    HttpLoad,
    Response,
    Service,
    connect,
    free_port,
    http_request,
    read_to_eof,
    wait_until,
)
from test_bad_input import error_line
from test_ready_work import figures, mark, settle, trickled_until_closed, wait_closed
from unit.test_http11 import INVALID, VALID
from webapps import STREAMED, bigger

HERE = Path(__file__).resolve().parent
FILE_SIZE = 300_000  # /file: over one sendfile() call's worth on loopback, not a round number


def tcp() -> str:
    return f"127.0.0.1:{free_port()}"


@dataclass
class Site:
    """A web service and the marks file its applications write."""

    kind: str  # "wsgi" or "asgi"
    service: Service
    marks: Path

    @property
    def address(self):
        return self.service.address

    def client(self) -> HttpClient:
        return HttpClient(self.address)

    def events(self, prefix: str = "") -> list[str]:
        lines = self.marks.read_text().splitlines() if self.marks.exists() else []
        return [line for line in lines if line.startswith(prefix)]

    def log(self) -> str:
        return self.service.output()


def start_site(serve, kind: str, app: str, args: list[str] = (), **kw) -> Site:  # type: ignore[assignment]
    """sockpool --wsgi/--asgi APP with two workers, once the activating connection is gone."""
    tmp = Path(tempfile.mkdtemp(prefix="web-"))
    data = tmp / "file.bin"
    data.write_bytes(os.urandom(FILE_SIZE))
    env = {"WEBAPPS_MARKS": str(tmp / "marks"), "WEBAPPS_FILE": str(data), **kw.pop("env", {})}
    listen = kw.pop("listen", [tcp()])
    service = serve(["--workers=2", f"--{kind}", app, *args], listen=listen, env=env, **kw)
    if kw.get("wait_ready", True):
        service.wait_idle()
    return Site(kind, service, tmp / "marks")


APPS = {"wsgi": "webapps:site", "asgi": "webapps:starlette_app"}


@pytest.fixture(scope="module", params=["wsgi", "asgi"])
def site(request, serve_module) -> Site:
    """Flask (with the raw WSGI apps under /raw/) or Starlette, shared by a module's tests."""
    return start_site(serve_module, request.param, APPS[request.param])


@pytest.fixture(scope="module")
def wsgi_site(serve_module) -> Site:
    return start_site(serve_module, "wsgi", APPS["wsgi"])


@pytest.fixture(scope="module")
def asgi_site(serve_module) -> Site:
    return start_site(serve_module, "asgi", APPS["asgi"])


def hello(response: Response) -> bool:
    return response.status == 200 and response.body == b"hello\n"


def echoed(response: Response) -> dict:
    assert response.status == 200, response
    return json.loads(response.body)


# -- HTTP/1.1: keep-alive, pipelining, chunked bodies, 100-continue, HEAD, 1.0, headers --------


def test_keep_alive_connection_parks_between_requests(site: Site) -> None:
    with site.client() as client:
        for _ in range(3):
            since = mark(site.service)
            assert hello(client.ask("GET", "/hello"))
            # Past park_after (2 ms) the worker gives it back: held by the dispatcher, idle.
            settle(site.service, busy=0, parked=1, since=since)
        since = mark(site.service)
        assert hello(client.ask("GET", "/hello", close=True))
        assert client.closed()
    settle(site.service, busy=0, parked=0, since=since)


def test_pipelined_requests_are_answered_in_order(site: Site) -> None:
    with site.client() as client:
        client.send(
            http_request("GET", "/echo")
            + http_request("POST", "/echo", b"two")
            + http_request("PUT", "/echo", b"3\r\nthr\r\n2\r\nee\r\n0\r\n\r\n",
                           headers=[("Transfer-Encoding", "chunked")])
            + http_request("GET", "/hello")
            + http_request("POST", "/echo", b"five", close=True)
        )  # fmt: skip
        answers = [client.response() for _ in range(5)]
        assert client.closed()
    seen = [echoed(a) for n, a in enumerate(answers) if n != 3]
    assert [(e["method"], e["body"]) for e in seen] == [
        ("GET", ""), ("POST", "two"), ("PUT", "three"), ("POST", "five")
    ]  # fmt: skip
    assert hello(answers[3])


def test_chunked_request_body_reaches_the_application(site: Site) -> None:
    """Chunks in separate packets, with extensions and a trailer: the framework's own body
    reader (Flask's request.get_data(), Starlette's request.body()) gets the data."""
    pieces = [
        http_request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")]),
        b"5\r\nhello\r\n",
        b"1;ext=val\r\n,\r\n",
        b"6\r\n world\r\n",
        b"0\r\nX-Trailer: t\r\n\r\n",
    ]
    with site.client() as client:
        for piece in pieces[:-1]:
            client.send(piece)
            with pytest.raises(TimeoutError):  # nothing is answered before the body ends
                client.sock.settimeout(0.05)
                client.sock.recv(1, socket.MSG_PEEK)
        client.sock.settimeout(10)
        client.send(pieces[-1])
        assert echoed(client.response())["body"] == "hello, world"


def test_expect_100_continue(site: Site) -> None:
    head = http_request(
        "POST", "/echo", headers=[("Expect", "100-continue"), ("Content-Length", "4")]
    )
    with site.client() as client:
        client.send(head)
        interim = client.response(interim=True)  # the body is not sent until this comes
        assert (interim.status, interim.body) == (100, b"")
        client.send(b"body")
        assert echoed(client.response())["body"] == "body"
        assert hello(client.ask("GET", "/hello"))  # still open
    # An application that does not read the body: no 100, and the connection closes (the
    # body may still come, unasked-for).
    with site.client() as client:
        client.send(head.replace(b"POST /echo", b"GET /hello"))
        answer = client.response(interim=True)
        assert hello(answer)
        assert answer.header(b"connection") == b"close"
        assert client.closed()


def test_head_has_the_get_headers_and_no_body(site: Site) -> None:
    with site.client() as client:
        get = client.ask("GET", "/hello")
        head = client.ask("HEAD", "/hello")
        assert (head.status, head.body) == (200, b"")
        assert head.header(b"content-length") == get.header(b"content-length") == b"6"
        # No body bytes went out after the HEAD answer: the next answer parses whole.
        assert hello(client.ask("GET", "/hello"))


@pytest.fixture(params=["wsgi", "asgi"])
def kind(request) -> str:
    return request.param


def test_head_of_a_streamed_response_does_not_claim_an_empty_body(site: Site) -> None:
    """GET /stream is chunked (its length is not known up front). HEAD may leave the length
    out, or frame it as GET would; Content-Length: 0 would say GET's body is empty."""
    with site.client() as client:
        get = client.ask("GET", "/stream")
        head = client.ask("HEAD", "/stream")
        assert get.header(b"transfer-encoding") == b"chunked"
        assert head.status == 200
        assert head.header(b"content-length") in (None, str(len(b"".join(STREAMED))).encode())


def test_http_1_0_and_connection_close_end_the_connection(site: Site) -> None:
    with site.client() as client:  # 1.0: one request
        client.send(b"GET /hello HTTP/1.0\r\n\r\n")
        assert hello(client.response())
        assert client.closed()
    with site.client() as client:  # 1.0 asking for keep-alive, then not
        client.send(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        answer = client.response()
        assert hello(answer) and answer.header(b"connection") == b"keep-alive"
        client.send(b"GET /hello HTTP/1.0\r\n\r\n")
        assert hello(client.response())
        assert client.closed()
    with site.client() as client:  # 1.0 and a body of unknown length: ends with the connection
        client.send(b"GET /stream HTTP/1.0\r\n\r\n")
        answer = client.response()
        assert answer.header(b"transfer-encoding") is None
        assert answer.body == b"".join(STREAMED)
    with site.client() as client:  # 1.1 with Connection: close
        answer = client.ask("GET", "/hello", close=True)
        assert hello(answer) and answer.header(b"connection") == b"close"
        assert client.closed()


def test_date_and_server_headers(site: Site) -> None:
    with site.client() as client:
        answers = [client.ask("GET", "/hello"), client.ask("GET", "/no-such-page")]
        client.send(b"GET / HTTP/1.1\r\n\r\n")  # no Host: refused by the server itself
        answers.append(client.response())
    assert [a.status for a in answers] == [200, 404, 400]
    for answer in answers:
        assert answer.header(b"server") == b"sockpool"
        date = answer.header(b"date")
        assert date is not None and date.endswith(b" GMT")
        assert parsedate_to_datetime(date.decode()).tzinfo is not None


def test_streaming_response_goes_out_chunked(site: Site) -> None:
    with site.client() as client:
        client.send(http_request("GET", "/stream"))
        head = client._until(b"\r\n\r\n")
        assert b"\r\ntransfer-encoding: chunked\r\n" in head.lower()
        chunks = client._until(b"0\r\n\r\n")
    # One chunk a piece the application produced (a generator view, a StreamingResponse).
    assert chunks == b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in STREAMED) + b"0\r\n\r\n"


# -- application errors and the access log -----------------------------------------------------

FIELDS = r"\[CONN_ID=\d+ LISTENER=unknown PEER=127\.0\.0\.1:{port} WORKER_PID=\d+ GENERATION=1\]"
ERRORS = {  # path -> the first line of the record it makes
    "wsgi": [("/raw/raise", r"ERROR: application raised on GET /raw/raise "),
             ("/boom", r"ERROR: Exception on /boom \[GET\] ")],  # Flask's own record
    "asgi": [("/boom", r"ERROR: application raised on GET /boom ")],
}  # fmt: skip


def test_application_exception_is_a_500_and_a_record_with_the_connection_fields(
    site: Site,
) -> None:
    for path, line in ERRORS[site.kind]:
        with site.client() as client:
            assert client.ask("GET", path).status == 500
            record = re.compile(line + FIELDS.format(port=client.port))
        wait_until(lambda r=record: r.search(site.log()), f"the record of {path}")


ACCESS = re.compile(r'INFO: "(\S+) (\S+)" (\d+) (\d+) (\d+)us \[CONN_ID=(\d+) [^]]*PEER=([^ ]+)')


def test_access_log_is_off_by_default(site: Site) -> None:
    with site.client() as client:
        assert hello(client.ask("GET", "/hello"))
    assert not ACCESS.search(site.log())


def test_access_log_has_one_record_per_request(serve, kind: str) -> None:
    site = start_site(serve, kind, APPS[kind], ["--access-log"])
    with site.client() as client:
        assert hello(client.ask("GET", "/hello"))
        assert client.ask("POST", "/echo?q=1", b"12345").status == 200
        assert client.ask("GET", "/stream").body == b"".join(STREAMED)
        assert client.ask("GET", "/missing", close=True).status == 404
        port = client.port
    with site.client() as other:
        assert other.ask("HEAD", "/hello").status == 200

    def records() -> list[tuple[str, ...]]:
        return ACCESS.findall(site.log())

    got = wait_until(lambda: len(records()) >= 5 and records(), "5 access records")
    assert len(got) == 5, got
    assert [(m, p, s) for m, p, s, *_ in got] == [
        ("GET", "/hello", "200"), ("POST", "/echo?q=1", "200"), ("GET", "/stream", "200"),
        ("GET", "/missing", "404"), ("HEAD", "/hello", "200"),
    ]  # fmt: skip
    assert got[0][3] == "6" and got[2][3] == str(len(b"".join(STREAMED)))
    assert got[4][3] == "0"  # HEAD: no body bytes sent
    assert len({conn for *_, conn, _ in got[:4]}) == 1  # one connection: one CONN_ID
    assert got[4][5] != got[0][5]
    assert {peer for *_, peer in got[:4]} == {f"127.0.0.1:{port}"}


# -- limits ------------------------------------------------------------------------------------

LIMITS = "max_request_line = 64\nmax_header_bytes = 512\nmax_headers = 8\nmax_body = 100\n"
LINE_AT = b"GET /" + b"a" * 50 + b" HTTP/1.1"  # 64 bytes: the longest request line taken
HOST = b"Host: t\r\n"
LIMIT_CASES = {  # (raw, status); 200 means it reaches the application
    "request line at the limit": (LINE_AT + b"\r\n" + HOST + b"\r\n", 200),
    "request line over": (LINE_AT.replace(b"/", b"/a") + b"\r\n" + HOST + b"\r\n", 414),
    "8 header fields": (b"GET / HTTP/1.1\r\n" + HOST + b"X: v\r\n" * 7 + b"\r\n", 200),
    "9 header fields": (b"GET / HTTP/1.1\r\n" + HOST + b"X: v\r\n" * 8 + b"\r\n", 431),
    "head over 512 bytes": (b"GET / HTTP/1.1\r\n" + HOST + b"X: " + b"v" * 500 + b"\r\n\r\n", 431),
    "body of 100 bytes": (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 100\r\n\r\n"
                          + b"b" * 100, 200),
    "body of 101 bytes": (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 101\r\n\r\n"
                          + b"b" * 101, 413),
}  # fmt: skip


@pytest.fixture(scope="module")
def limited(serve_module, tmp_path_factory) -> Site:
    config = tmp_path_factory.mktemp("limits") / "web.toml"
    config.write_text(f'wsgi = "webapps:echo_wsgi"\n{LIMITS}')
    return start_site(serve_module, "wsgi", "webapps:echo_wsgi", [f"--config={config}"])


@pytest.mark.parametrize("name", LIMIT_CASES)
def test_limits_from_the_config_file(limited: Site, name: str) -> None:
    raw, status = LIMIT_CASES[name]
    if status == 200:
        assert_served(limited, raw, 1)
    else:
        assert_refused(limited, raw, status)


def test_a_chunked_body_over_the_limit_is_413(limited: Site) -> None:
    """Its size shows only as it is read, by then by the application: it gets an error
    from wsgi.input, the client a 413, and the connection closes."""
    raw = (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"64\r\n" + b"c" * 100 + b"\r\n1\r\nc\r\n0\r\n\r\n")  # fmt: skip
    assert_refused(limited, raw, 413, in_body=True)


# -- the RFC 9112 corpus ----------------------------------------------------------------------


def assert_served(site: Site, raw: bytes, count: int) -> list[Response]:
    """`raw` gets `count` answers from the application, which was called for each."""
    calls = len(site.events("call"))
    with site.client() as client:
        client.send(raw)
        answers = [client.response(head=raw.startswith(b"HEAD")) for _ in range(count)]
    assert [a.status for a in answers] == [200] * count, answers
    assert len(site.events("call")) == calls + count
    return answers


def assert_refused(site: Site, raw: bytes, status: int, in_body: bool = False) -> None:
    """`raw` gets `status` from the server, the connection closes, the application is not
    called (and a request smuggled behind it is not served). `in_body`: the fault is in a
    chunked body, found as the application reads it: it is called, and never gets a body."""
    seen = "body" if in_body else "call"
    before = len(site.events(seen))
    with site.client() as client:
        client.send(raw)
        answer = client.response()
        assert (answer.status, answer.header(b"connection")) == (status, b"close"), answer
        assert client.closed()
    assert site.events(seen)[before:] == []


@pytest.fixture(scope="module", params=["wsgi", "asgi"])
def echo(request, serve_module) -> Site:
    """The raw echo apps; --max-body=100 for the corpus' small-limit case (its other cases
    have the default limits, and their bodies are smaller)."""
    app = {"wsgi": "webapps:echo_wsgi", "asgi": "webapps:echo_asgi"}[request.param]
    return start_site(serve_module, request.param, app, ["--max-body=100"])


def seen_path(kind: str, target: bytes) -> tuple[str, str]:
    """(path, query) as the application sees the target: the path percent-decoded (WSGI's
    as latin-1 text, ASGI's as UTF-8), an absolute form's scheme and authority gone, and
    OPTIONS *'s path empty for WSGI."""
    if match := re.match(rb"[a-z]+://[^/]*", target):
        target = target[match.end() :]
    path, _, query = target.partition(b"?")
    if path == b"*":
        return ("" if kind == "wsgi" else "*"), query.decode()
    return unquote_to_bytes(path).decode("latin-1" if kind == "wsgi" else "utf-8"), query.decode()


@pytest.mark.parametrize("name", VALID)
def test_valid_corpus_reaches_the_application(echo: Site, name: str) -> None:
    case = VALID[name]
    answers = assert_served(echo, case.raw, len(case.want))
    seen = [json.loads(a.body) for a in answers if a.body]  # HEAD answers have none
    wanted = [w for w in case.want if w[0] != b"HEAD"]
    assert [(s["method"], s["path"], s["query"], s["body"].encode("latin-1")) for s in seen] == [
        (m.decode(), *seen_path(echo.kind, t), b) for m, t, b in wanted
    ]
    if case.headers:
        first = [(k.encode(), v.encode("latin-1")) for k, v in seen[0]["headers"]]
        for header in case.headers:
            assert header in first


IN_BODY = {name for name in INVALID if name.startswith("chunk")}  # bad chunks, or too many


@pytest.mark.parametrize("name", INVALID)
def test_invalid_corpus_is_refused_before_the_application(echo: Site, name: str) -> None:
    raw, status, _ = INVALID[name]
    assert_refused(echo, raw, status, in_body=name in IN_BODY)


def test_a_malformed_chunked_body_never_reaches_the_application(echo: Site) -> None:
    assert_refused(echo, INVALID["chunk size not hex"][0], 400)


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
POST = b"POST / HTTP/1.1\r\nHost: a\r\n"
SMUGGLING = {  # a second request hidden where one parser or another would find it
    "CL.TE": POST + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "TE.CL": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
             b"%x\r\n" % (len(SMUGGLED) + 2) + SMUGGLED + b"\r\n0\r\n\r\n",
    "CL.CL": POST + b"Content-Length: 0\r\nContent-Length: 37\r\n\r\n" + SMUGGLED,
    "TE obfuscated": POST + b"Transfer-Encoding: chunked\r\nTransfer-encoding: cow\r\n\r\n"
                     b"0\r\n\r\n" + SMUGGLED,
    "TE with space before colon": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
                                  + SMUGGLED,
    "TE folded": POST + b"X: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "bare LF hiding a header": POST + b"X: a\nContent-Length: 37\r\n\r\n" + SMUGGLED,
    "chunk size with junk": POST + b"Transfer-Encoding: chunked\r\n\r\n"
                            b"0 x\r\n\r\n" + SMUGGLED,
}  # fmt: skip


@pytest.mark.parametrize("name", SMUGGLING)
def test_smuggling_attempts_are_refused_and_serve_nothing(echo: Site, name: str) -> None:
    assert_refused(echo, SMUGGLING[name], 400, in_body=name.startswith("chunk"))
    assert echo.events("call GET /smuggled") == []


def test_a_chunk_size_past_64_bits_hides_no_request(echo: Site) -> None:
    """A front end that wraps the size to 0 would see the body end and a request after it;
    here those bytes are chunk data, and the client that stops sending gets nothing."""
    raw = POST + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\n" + SMUGGLED
    with echo.client() as client:
        client.send(raw)
        client.sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(client.sock) == b""
    assert echo.events("call GET /smuggled") == []


def test_a_request_head_split_across_pauses_is_carried_whole(echo: Site) -> None:
    """Each pause parks the request so far; the dispatcher carries it to the next worker."""
    raw = b"POST /split?x=1 HTTP/1.1\r\nHost: a\r\nX-Part: two\r\nContent-Length: 3\r\n\r\nabc"
    calls = len(echo.events("call"))
    with echo.client() as client:
        for at in range(0, len(raw), 17):
            since = mark(echo.service)
            client.send(raw[at : at + 17])
            if at + 17 < len(raw):
                settle(echo.service, busy=0, parked=1, since=since)
        seen = json.loads(client.response().body)
    assert (seen["method"], seen["path"], seen["query"], seen["body"]) == (
        "POST", "/split", "x=1", "abc"
    )  # fmt: skip
    assert ["x-part", "two"] in seen["headers"]
    assert len(echo.events("call")) == calls + 1


@pytest.mark.parametrize(
    ("head", "part", "rest"),
    [
        (b"Content-Length: 10", b"hello", b"world"),
        (b"Transfer-Encoding: chunked", b"5\r\nhello\r\n", b"5\r\nworld\r\n0\r\n\r\n"),
    ],
    ids=["content-length", "chunked"],
)
def test_a_small_body_that_stalls_holds_no_worker(serve, head, part, rest) -> None:
    """As many clients as sync workers send a head and part of a small body, then nothing
    (or a byte now and then): they wait in the dispatcher, not in a worker for
    request_timeout, and a third client is served meanwhile. Each body, once it comes,
    reaches the application whole."""
    site = start_site(serve, "wsgi", "webapps:echo_wsgi")
    slow = [site.client() for _ in range(2)]
    since = mark(site.service)
    for client in slow:
        client.send(b"POST /slow HTTP/1.1\r\nHost: a\r\n" + head + b"\r\n\r\n" + part)
    settle(site.service, busy=0, parked=2, since=since)
    with site.client() as fast:
        assert fast.ask("GET", "/fast").status == 200
    for client in slow:
        with client:
            client.send(rest)
            assert json.loads(client.response().body)["body"] == "helloworld"


def test_a_long_body_that_stalls_holds_no_worker_until_it_has_all_come(serve) -> None:
    """Slow uploads: as many clients as sync workers send a head and the start of a body
    longer than max_carry, then the rest a piece at a time. The dispatcher waits for each
    body in the kernel's buffer: no piece but the last wakes a worker (`served` counts each
    handoff that ends, parked or done: only the fast clients'), a third client is served
    meanwhile, and each application is called once, with its whole body."""
    site = start_site(serve, "wsgi", "webapps:echo_wsgi")
    length = 300_000  # over max_carry (16 KiB), under max_buffered_body (1 MiB)
    bodies = [bytes([ord("a") + k]) * length for k in range(2)]
    slow = [site.client() for _ in bodies]
    calls = len(site.events("call"))
    since = mark(site.service)
    for client, body in zip(slow, bodies, strict=True):
        client.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % length)
        client.send(body[:5000])
    settle(site.service, busy=0, parked=2, since=since)
    count = figures(site.service)[2]
    for at in range(5000, length - 1, 100_000):
        since = mark(site.service)
        for client, body in zip(slow, bodies, strict=True):
            client.send(body[at : min(at + 100_000, length - 1)])
        with site.client() as fast:
            assert fast.ask("GET", "/fast").status == 200
        count += 1
        settle(site.service, busy=0, parked=2, since=since, served=count)
    assert len(site.events("call")) == calls + 3  # the fast ones only, so far
    for client, body in zip(slow, bodies, strict=True):
        with client:
            client.send(body[-1:])
            assert json.loads(client.response().body)["body"].encode() == body
    assert len(site.events("call")) == calls + 5


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_trickled_small_body_that_cannot_be_parked_keeps_request_timeout(serve, kind) -> None:
    """At the descriptor limit (here from the start: 128 + 4 per worker are kept free) no
    connection is parked, and a held body is read in the worker: still within
    request_timeout, not idle_timeout a byte."""
    app = {"wsgi": "webapps:echo_wsgi", "asgi": "webapps:echo_asgi"}[kind]
    args = ["--request-timeout=1", "--idle-timeout=10"]
    site = start_site(serve, kind, app, args, wrapper=["prlimit", "--nofile=136:136", "--"])
    client = connect(site.address)
    client.sendall(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\n\r\nhello")
    trickled_until_closed(client)


# -- slow readers -----------------------------------------------------------------------------

# More than the kernel holds for a client that reads nothing: the server's send buffer grows
# to tcp_wmem's 4 MiB at most, the client's receive buffer starts at 128 KiB.
LONG = 6 << 20
GET_HELLO = b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"
UNSENT = [f"--max-unsent={8 << 20}"]


@pytest.mark.parametrize("view", [b"/big", b"/memory"], ids=["body", "send_file-bytesio"])
def test_clients_that_read_slowly_hold_no_sync_worker(serve, view: bytes) -> None:
    """Nothing pinned: as many clients as sync workers ask for an answer longer than the
    kernel's buffers hold, and read none of it yet: a body, or send_file() of what the
    application made in memory. The workers leave the rest to the dispatcher, and a third
    client is served meanwhile. Then each slow client gets its whole answer: the one that
    asked to close gets the end of the stream after it, the other one's connection serves
    its next request."""
    site = start_site(serve, "wsgi", APPS["wsgi"], ["--idle-timeout=60", *UNSENT])
    kept, closing = site.client(), site.client()
    since = mark(site.service)
    kept.send(b"GET %s/%d HTTP/1.1\r\nHost: a\r\n\r\n" % (view, LONG))
    closing.send(b"GET %s/%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % (view, LONG))
    settle(site.service, busy=0, parked=2, since=since)  # both with the dispatcher
    with site.client() as fast:
        assert hello(fast.ask("GET", "/hello"))
    with kept, closing:
        assert closing.response().body == bigger(LONG)
        assert read_to_eof(closing.sock) == b""
        assert kept.response().body == bigger(LONG)
        assert hello(kept.ask("GET", "/hello"))


@pytest.mark.parametrize("span", [None, (1000, LONG - 1001)], ids=["whole", "range"])
def test_slow_downloads_of_a_file_hold_no_sync_worker(
    serve, disk_path: Path, span: tuple[int, int] | None
) -> None:
    """Flask's send_file goes out with sendfile(), and what the client does not take is
    left to the dispatcher as the file itself, however much longer than max_unsent (here
    the default, 1 MiB), a `Range` asked for as the whole file: two slow downloads, two
    workers, and a third client is served meanwhile. Each download then comes whole, and
    its connection serves the next request."""
    data = disk_path / "long.bin"
    data.write_bytes(os.urandom(LONG))
    env = {"WEBAPPS_FILE": str(data)}
    site = start_site(serve, "wsgi", APPS["wsgi"], ["--idle-timeout=60"], env=env)
    ask, status, want = b"GET /file HTTP/1.1\r\nHost: a\r\n\r\n", 200, data.read_bytes()
    if span is not None:
        ask = ask[:-2] + b"Range: bytes=%d-%d\r\n\r\n" % span
        status, want = 206, want[span[0] : span[1] + 1]
    slow = [site.client() for _ in range(2)]
    since = mark(site.service)
    for client in slow:
        client.send(ask)
    settle(site.service, busy=0, parked=2, since=since)
    with site.client() as fast:
        assert hello(fast.ask("GET", "/hello"))
    for client in slow:
        with client:
            answer = client.response()
            assert (answer.status, answer.body) == (status, want)
            assert hello(client.ask("GET", "/hello"))


def test_a_file_cut_short_while_the_dispatcher_sends_it_ends_the_connection(
    serve, disk_path: Path
) -> None:
    """The file shrank after the worker left its rest to the dispatcher (a log rotated):
    the client gets what there is and then the connection's end, so it cannot mistake
    what follows for the rest of its answer; the dispatcher says why (`short-file`)."""
    data = disk_path / "long.bin"
    data.write_bytes(os.urandom(4 * LONG))  # far more than the kernel's buffers hold
    env = {"WEBAPPS_FILE": str(data)}
    site = start_site(serve, "wsgi", APPS["wsgi"], ["--idle-timeout=60"], env=env)
    since = mark(site.service)
    with site.client() as client:
        client.send(b"GET /file HTTP/1.1\r\nHost: a\r\n\r\n")
        settle(site.service, busy=0, parked=1, since=since)
        # By one byte: what the kernel still has to send of the file (sendfile() sends
        # its pages, not a copy) stays as it was, and only the dispatcher's last read fails.
        os.truncate(data, 4 * LONG - 1)
        head, _, body = read_to_eof(client.sock).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\ncontent-length: %d" % (4 * LONG) in head.lower()
        assert body == data.read_bytes()
    wait_closed(site.service, "short-file", 1)


def test_a_stream_to_a_client_that_fell_behind_is_not_held_back(serve) -> None:
    """Each piece of a stream goes out as it is written, even once its client fell behind:
    the application writes its next piece only when something else happens (here, a gate
    the test opens once it has what came before), so a piece held back for the dispatcher
    would wait for ever."""
    site = start_site(serve, "wsgi", APPS["wsgi"], ["--idle-timeout=60", *UNSENT])
    with site.client() as client:
        client.send(b"GET /gated/%d HTTP/1.1\r\nHost: a\r\n\r\n" % LONG)
        time.sleep(0.5)  # taking nothing: the kernel's buffers fill, the worker stalls
        got = b""
        for k in range(3):
            want = bigger(LONG) if k == 0 else b"event %d\n" % (k - 1)
            while want not in got:
                got += client.sock.recv(1 << 20)  # the client's timeout fails the test
            (site.marks.parent / f"gate{k}").touch()
        while b"event 2\n" not in got:
            got += client.sock.recv(1 << 20)


def test_what_a_client_has_not_taken_does_not_wait_for_the_applications_close(serve) -> None:
    """The answer's rest goes to the dispatcher before the application's close() (its
    teardown) runs: here close() waits until the test has the whole answer."""
    site = start_site(serve, "wsgi", APPS["wsgi"], ["--idle-timeout=60", *UNSENT])
    with site.client() as client:
        client.send(b"GET /raw/gated-close/%d HTTP/1.1\r\nHost: a\r\n\r\n" % LONG)
        time.sleep(0.5)  # taking nothing: the kernel's buffers fill, the worker stalls
        assert client.response().body == bigger(LONG)
        (site.marks.parent / "close-gate").touch()
        wait_until(lambda: site.events("closed"), "the application's close()")
        assert hello(client.ask("GET", "/hello"))


def test_a_stop_sends_what_slow_readers_have_not_taken_then_exits(serve) -> None:
    """Nothing lost: the dispatcher outlives its workers until the answers it holds are
    sent, then ends the connection and exits cleanly."""
    site = start_site(serve, "wsgi", APPS["wsgi"], ["--idle-timeout=60", *UNSENT])
    since = mark(site.service)
    with site.client() as client:
        client.send(b"GET /big/%d HTTP/1.1\r\nHost: a\r\n\r\n" % LONG)
        settle(site.service, busy=0, parked=1, since=since)
        site.service.signal(signal.SIGTERM)
        gone = re.compile(r"worker \d+ exited")
        wait_until(lambda: len(gone.findall(site.log())) == 2, "both workers gone")
        assert client.response().body == bigger(LONG)
        assert read_to_eof(client.sock) == b""
    assert site.service.wait() == 0


def test_a_stop_serves_a_request_pipelined_behind_an_answer_not_taken(serve) -> None:
    """Nothing lost: a request pipelined behind a long answer the dispatcher is sending goes
    to a worker once the answer is sent, and a stop that comes meanwhile waits for it.
    (One that came with the first, the worker serves before it gives the connection back.)"""
    site = start_site(serve, "wsgi", APPS["wsgi"], ["--idle-timeout=60", *UNSENT])
    since = mark(site.service)
    with site.client() as client:
        client.send(b"GET /big/%d HTTP/1.1\r\nHost: a\r\n\r\n" % LONG)
        settle(site.service, busy=0, parked=1, since=since)
        client.send(GET_HELLO)
        site.service.signal(signal.SIGTERM)
        time.sleep(1)  # time enough for the workers to leave, were the request not counted
        assert client.response().body == bigger(LONG)
        assert hello(client.response())
    assert site.service.wait() == 0


def test_a_request_begun_behind_an_answer_gets_its_time_once_the_answer_is_sent(serve) -> None:
    """request_timeout counts from when the client had the answer before it, as when the
    worker sent the answer: not while the client was still taking it."""
    site = start_site(serve, "wsgi", APPS["wsgi"], ["--request-timeout=1", *UNSENT])
    since = mark(site.service)
    with site.client() as client:
        client.send(b"GET /big/%d HTTP/1.1\r\nHost: a\r\n\r\nGET /hel" % LONG)
        settle(site.service, busy=0, parked=1, since=since)
        time.sleep(2)  # past request_timeout, taking nothing yet
        assert client.response().body == bigger(LONG)
        client.send(b"lo HTTP/1.1\r\nHost: a\r\n\r\n")
        assert hello(client.response())


def test_a_second_ctrl_c_cuts_answers_being_sent_too(serve) -> None:
    """A second Ctrl-C stops waiting for the workers (one still reading a body here) and
    for the answers the dispatcher is sending: not graceful_timeout later."""
    args = ["--graceful-timeout=300", "--idle-timeout=60", *UNSENT]
    site = start_site(serve, "wsgi", APPS["wsgi"], args)
    since = mark(site.service)
    with site.client() as slow:
        slow.send(b"GET /big/%d HTTP/1.1\r\nHost: a\r\n\r\n" % LONG)
        settle(site.service, busy=0, parked=1, since=since)
        busy = site.client()  # a worker reads its body: it sends 20,000 bytes of 99,999
        busy.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 99999\r\n\r\n" + bytes(20000))
        settle(site.service, busy=1, parked=1, since=since)
        os.killpg(site.service.pid, signal.SIGINT)
        wait_until(lambda: "stopping on SIGINT" in site.log(), "the stop")
        os.killpg(site.service.pid, signal.SIGINT)
        assert site.service.wait() == 0
        busy.close()


def test_an_answer_nobody_reads_is_closed_at_the_idle_timeout(serve) -> None:
    """A client that takes nothing of its answer for idle_timeout is closed (`unread`) by
    the dispatcher, which lets go of the memfd with it (STATUS: nothing parked)."""
    site = start_site(serve, "wsgi", APPS["wsgi"], ["--idle-timeout=1", *UNSENT])
    with site.client() as client:
        client.send(b"GET /big/%d HTTP/1.1\r\nHost: a\r\n\r\n" % LONG)
        wait_closed(site.service, "unread", 1)
    settle(site.service, busy=0, parked=0)


# -- WSGI (PEP 3333) with Flask ----------------------------------------------------------------


def test_wsgi_environ(wsgi_site: Site) -> None:
    with wsgi_site.client() as client:
        env = echoed(client.ask("GET", "/environ?a=1&b=%20"))
        port = client.port
    host, server_port = wsgi_site.address
    assert env == env | {
        "SCRIPT_NAME": "",
        "PATH_INFO": "/environ",
        "QUERY_STRING": "a=1&b=%20",
        "REQUEST_METHOD": "GET",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": str(port),
        "SERVER_NAME": host,
        "SERVER_PORT": str(server_port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.version": [1, 0],
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "url": "http://test/environ?a=1&b=%20",
    }


def test_wsgi_exc_info(wsgi_site: Site) -> None:
    with wsgi_site.client() as client:  # before the head: the new status goes out
        answer = client.ask("GET", "/raw/exc-info-before")
        assert (answer.status, answer.body) == (503, b"sorry\n")
    with wsgi_site.client() as client:  # after: re-raised, the response is cut short
        client.send(http_request("GET", "/raw/exc-info-after"))
        cut = read_to_eof(client.sock)
        port = client.port
    assert cut.startswith(b"HTTP/1.1 200 OK\r\n")
    assert cut.endswith(b"\r\n\r\n8\r\npartial\n\r\n")  # no last chunk: the client can tell
    record = r"application raised on GET /raw/exc-info-after " + FIELDS.format(port=port)
    wait_until(lambda: re.search(record, wsgi_site.log()), "the record of the re-raised error")
    assert "ValueError: found out after the head" in wsgi_site.log()


def test_wsgi_close_is_called_on_the_iterable(wsgi_site: Site) -> None:
    with wsgi_site.client() as client:
        assert client.ask("GET", "/raw/closing").body == b"".join(STREAMED)
    wait_until(lambda: wsgi_site.events("close closing"), "close() after the response")
    with wsgi_site.client() as client:  # the iterable raises midway: closed all the same
        client.send(http_request("GET", "/raw/closing-fails"))
        with pytest.raises(EOFError):
            client.response()
    wait_until(lambda: wsgi_site.events("close closing-fails"), "close() after the failure")
    assert len(wsgi_site.events("close")) == 2


def test_wsgi_file_wrapper_sends_the_file(wsgi_site: Site) -> None:
    data = (wsgi_site.marks.parent / "file.bin").read_bytes()
    with wsgi_site.client() as client:
        answer = client.ask("GET", "/file")
        assert answer.header(b"content-length") == str(FILE_SIZE).encode()
        assert answer.body == data
        head = client.ask("HEAD", "/file")
        assert (head.header(b"content-length"), head.body) == (str(FILE_SIZE).encode(), b"")
        assert hello(client.ask("GET", "/hello"))  # nothing more came after either


def test_wsgiref_validator_has_no_complaint(serve) -> None:
    site = start_site(serve, "wsgi", "webapps:validated_flask")
    with site.client() as client:
        assert hello(client.ask("GET", "/hello"))
        assert client.ask("HEAD", "/hello").status == 200
        assert echoed(client.ask("POST", "/echo", b"validated"))["body"] == "validated"
        assert client.ask("GET", "/stream").body == b"".join(STREAMED)
        assert len(client.ask("GET", "/file").body) == FILE_SIZE
        assert echoed(client.ask("GET", "/environ"))["SCRIPT_NAME"] == ""
        assert client.ask("GET", "/missing").status == 404
        assert hello(client.ask("GET", "/hello", close=True))
    site.service.stop()  # a generator never closed complains when it is collected
    log = site.log()
    for complaint in ("WSGIWarning", "AssertionError", "Traceback", "garbage collected"):
        assert complaint not in log, log


# -- ASGI with Starlette -----------------------------------------------------------------------


def test_asgi_http_scope(asgi_site: Site) -> None:
    with asgi_site.client() as client:
        scope = echoed(client.ask("GET", "/scope?a=1&b=%20"))
        port = client.port
    host, server_port = asgi_site.address
    assert scope == scope | {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": scope["asgi"].get("spec_version")},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/scope",
        "raw_path": "/scope",
        "query_string": "a=1&b=%20",
        "root_path": "",
        "client": ["127.0.0.1", port],
        "server": [host, server_port],
    }


def test_asgi_long_poll_hears_its_client_leave(asgi_site: Site) -> None:
    """Nothing pinned: a Starlette long-poll learns from request.is_disconnected() that its
    client has gone, and ends, giving back its worker's slot and the descriptor."""
    with asgi_site.client() as client:
        client.send(http_request("GET", "/poll"))
        wait_until(lambda: asgi_site.events("call GET /poll"), "the long-poll to start")
    wait_until(lambda: asgi_site.events("gone GET /poll"), "the long-poll to hear it")


def test_asgi_sys_exit_in_a_task_of_the_application_recycles_its_worker(serve) -> None:
    """Starlette runs a StreamingResponse's body in a task of its own, whose SystemExit
    asyncio lets out of the worker's loop. The request is cut; the worker, which holds other
    connections and may be left broken, is recycled: replaced first, then drained."""
    site = start_site(serve, "asgi", APPS["asgi"], ["--workers=1"])
    [worker] = site.service.workers()
    recycled = f"recycling worker {worker}: a task of the application called sys.exit()"
    with site.client() as held:
        held.send(http_request("GET", "/poll"))  # a connection the worker holds meanwhile
        wait_until(lambda: site.events("call GET /poll"), "the long-poll to start")
        with site.client() as client:
            client.send(http_request("GET", "/stream-exit"))
            cut = read_to_eof(client.sock)
        assert cut.startswith(b"HTTP/1.1 200 OK\r\n") and b"first\n" in cut
        assert not cut.endswith(b"0\r\n\r\n")  # not the end of a chunked body: cut short
        wait_until(lambda: recycled in site.log(), "the worker to be recycled")
        with site.client() as client:
            assert hello(client.ask("GET", "/hello"))
    # The long-poll was still running in the old worker: it hears its client leave.
    wait_until(lambda: site.events("gone GET /poll"), "the long-poll to hear it")
    wait_until(lambda: worker not in site.service.workers(), "the old worker to exit")
    assert site.log().count("SystemExit: 3") == 2  # the task's record, and the request's


def startups(site: Site) -> list[int]:
    return [int(line.split()[1]) for line in site.events("startup")]


def test_asgi_lifespan_startup_once_per_worker_before_ready_and_shutdown_on_retire(
    serve,
) -> None:
    site = start_site(serve, "asgi", APPS["asgi"])
    first = site.service.workers()
    assert sorted(startups(site)) == sorted(first)  # by READY=1: once per worker
    served = set()
    for _ in range(6):
        with site.client() as client:
            served.add(echoed(client.ask("GET", "/scope"))["pid"])
    assert served <= set(first)
    assert site.events("shutdown") == []

    site.service.signal(signal.SIGHUP)  # reload: the old generation retires
    wait_until(lambda: "generation 2 serves" in site.log(), "generation 2")
    wait_until(
        lambda: len(site.service.workers()) == 2 and not set(first) & set(site.service.workers()),
        "the old generation gone",
    )
    second = site.service.workers()
    wait_until(lambda: len(site.events("shutdown")) == 2, "the old workers' shutdown")
    assert sorted(int(e.split()[1]) for e in site.events("shutdown")) == sorted(first)
    assert sorted(startups(site)) == sorted(first + second)

    site.service.stop()  # stop: the new generation retires
    assert site.service.wait() == 0
    assert sorted(int(e.split()[1]) for e in site.events("shutdown")) == sorted(first + second)


def test_a_stop_during_the_lifespan_startup_lets_it_finish_then_runs_the_shutdown(
    serve,
) -> None:
    """A worker still starting gets a SIGTERM with its stop (a blocked import ends of it),
    but from its lifespan's startup on that is a stop like any: no startup cut midway."""
    env = {"WEBAPPS_SLOW_STARTUP": "1.5"}
    site = start_site(serve, "asgi", APPS["asgi"], env=env, wait_ready=False)
    wait_until(lambda: len(site.events("startup")) == 2, "both startups begun")
    site.service.signal(signal.SIGTERM)
    assert site.service.wait() == 0, site.log()
    assert sorted(site.events("shutdown")) == sorted(
        e.replace("startup", "shutdown") for e in site.events("startup")
    )


def test_asgi_lifespan_state_reaches_requests(asgi_site: Site) -> None:
    with asgi_site.client() as client:
        answer = client.ask("GET", "/state")
    assert answer.status == 200
    assert int(answer.body) in asgi_site.service.workers()


@pytest.fixture(scope="module")
def failed_startup(serve_module) -> Site:
    """Starlette whose lifespan startup raises, run until sockpool gives up."""
    site = start_site(
        serve_module, "asgi", APPS["asgi"], wait_ready=False, env={"WEBAPPS_FAIL_STARTUP": "1"}
    )
    site.service.wait(timeout=60)
    return site


def test_asgi_lifespan_startup_failure_gives_up_with_70(failed_startup: Site) -> None:
    assert failed_startup.service.wait() == 70
    assert failed_startup.events("startup")  # it did try
    last = failed_startup.log().splitlines()[-1]
    assert last.startswith("sockpool: workers keep failing to start: ")
    assert "ASGI lifespan startup failed: " in last


def test_asgi_lifespan_startup_failure_names_the_error_in_one_line(
    failed_startup: Site,
) -> None:
    line = error_line(failed_startup.log())
    assert "the database is unreachable" in line


@pytest.mark.parametrize("exits", ["once", "every turn", "and once cancelled"])
def test_asgi_sys_exit_in_a_task_of_a_lifespan_startup_is_a_failed_start(serve, exits: str) -> None:
    """Recycling would start the same broken start again and again: a failed start has
    the backoff, and the give-up. Every turn: again as the loop closes, still a failure."""
    env = {"WEBAPPS_EXIT_IN_A_STARTUP_TASK": exits}
    site = start_site(serve, "asgi", APPS["asgi"], wait_ready=False, env=env)
    assert site.service.wait(timeout=60) == 70
    last = site.log().splitlines()[-1]
    assert "a task of the application called sys.exit() while the worker started" in last
    assert "recycling" not in site.log()


# -- reload under load -------------------------------------------------------------------------


def test_reload_under_load_fails_no_request(serve) -> None:
    site = start_site(serve, "wsgi", APPS["wsgi"])
    new_each = HttpLoad(site.address, clients=3, seconds=60, pause=0.002)
    kept = HttpLoad(site.address, clients=3, seconds=60, pause=0.002, keep_alive=50)
    with new_each, kept:
        for load in (new_each, kept):
            load.progress(30)
        for generation in (2, 3):
            old = set(site.service.workers())
            site.service.signal(signal.SIGHUP)
            wait_until(lambda g=generation: f"generation {g} serves" in site.log(), "reloaded")
            wait_until(lambda o=old: not o & set(site.service.workers()), "the old generation gone")
            for load in (new_each, kept):
                load.progress(30)
    for load in (new_each, kept):
        assert load.done == load.ok, load.summary()
    assert "Traceback" not in site.log()


# -- configuration: --check, and TOML with a web app beside a raw handler ----------------------


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SOCKPOOL, "--check", *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(HERE)},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--wsgi", "no_such_module:app"], "cannot import 'no_such_module'"),
        (["--wsgi", "webapps:nothing"], "'webapps' has no 'nothing'"),
        (["--wsgi", "webapps:not_callable"], "int is not callable"),
        (["--wsgi", "webapps:starlette_app"], "is async: serve it with --asgi"),
        (["--asgi", "webapps:flask_app"], "is not async"),
        (["--wsgi", "broken_app:handle"], "this module is broken on purpose"),
    ],
)
def test_check_refuses_a_bad_app_in_one_line(args: list[str], message: str) -> None:
    result = check(*args)
    assert result.returncode == 78
    assert message in error_line(result.stderr)


def test_check_accepts_the_apps(tmp_path: Path) -> None:
    config = tmp_path / "web.toml"
    config.write_text(
        '[listeners.web]\nwsgi = "webapps:site"\n'
        '[listeners.api]\nasgi = "webapps:starlette_app"\n'
        '[listeners.raw]\nhandler = "apps:whoami"\n'
    )
    for args in (["--wsgi", APPS["wsgi"]], ["--asgi", APPS["asgi"]], [f"--config={config}"]):
        result = check(*args)
        assert (result.returncode, result.stdout.count("configuration OK")) == (0, 1), result


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_toml_web_app_on_one_listener_and_a_raw_handler_on_another(
    serve, tmp_path: Path, kind: str
) -> None:
    config = tmp_path / "web.toml"
    config.write_text(
        f'[listeners.web]\n{kind} = "{APPS[kind]}"\n[listeners.raw]\nhandler = "apps:whoami"\n'
    )
    service = serve(
        ["--workers=2", f"--config={config}"], listen=[tcp(), tcp()], fdnames=["web", "raw"]
    )
    web, raw = service.addresses
    with HttpClient(web) as client:
        assert hello(client.ask("GET", "/hello"))
    with connect(raw) as sock:
        sock.sendall(b"who\n")
        assert sock.makefile("rb").readline().startswith(b"whoami raw ")
    with HttpClient(raw) as client:  # the raw handler answers HTTP with its own line
        client.send(http_request("GET", "/hello"))
        assert client.sock.makefile("rb").readline().startswith(b"whoami raw ")
