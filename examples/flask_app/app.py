"""A Flask application served by sockpool: `wsgi = "app:app"` in /etc/sockpool/web.toml.

Copied to /srv/flask_app/app.py; the service finds it through PYTHONPATH=/srv/flask_app
(sockpool@web.service.d/app.conf). Try it without systemd from this directory:

    PYTHONPATH=. sockpool --listen 127.0.0.1:8080 --wsgi app:app
    curl http://127.0.0.1:8080/
"""

from __future__ import annotations

import logging
import os

from flask import Flask, jsonify, request

log = logging.getLogger(__name__)
app = Flask(__name__)


@app.get("/")
def hello() -> str:
    return "hello from Flask under sockpool\n"


@app.get("/whoami")
def whoami() -> object:
    """Which client asked, and which worker answered (a new connection may get another)."""
    return jsonify(client=request.remote_addr, worker_pid=os.getpid(), path=request.path)


@app.post("/echo")
def echo() -> tuple[bytes, int, dict[str, str]]:
    # sockpool refuses a body above its limit (max_body) with 413 without calling the
    # application: by its Content-Length at once, a chunked one once read whole.
    body = request.get_data()
    log.info("echoing %d bytes", len(body))
    return body, 200, {"Content-Type": request.content_type or "application/octet-stream"}
