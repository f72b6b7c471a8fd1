"""The WSGI equivalent of sockpool.handlers:http_hello, for gunicorn's sync workers.

systemd-socket-activate -l 127.0.0.1:7101 gunicorn -w 4 -k sync bench.peers.wsgi:app
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"hello\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [BODY]
