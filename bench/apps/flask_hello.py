"""Flask "hello": every path answers ``hello\\n``, under sockpool --wsgi and gunicorn alike.

Every path, because bench.loadgen asks for a unique /r/<tag> per request (wrk asks for /).
POST /upload reads its body first, as a view that takes an upload does (flask-upload).
GET /download sends a file of bench.loadgen.DOWNLOAD_SIZE bytes with ``send_file``
(wsgi.file_wrapper), as a view that serves a download does (flask-download).

    systemd-socket-activate -l 127.0.0.1:7101 gunicorn -w 4 bench.apps.flask_hello:app
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from flask import Flask, Response, request, send_file

from bench.loadgen import DOWNLOAD_SIZE, download_body

app = Flask(__name__)


def download_file() -> Path:
    """The file GET /download sends, bench.loadgen.download_body(), which the download
    crowd checks byte for byte: written once into the temporary directory, where each
    worker that imports the app finds it (whole: a new one is renamed into place)."""
    path = Path(tempfile.gettempdir()) / f"sockpool-bench-download-{DOWNLOAD_SIZE}.bin"
    body = download_body()
    if not (path.is_file() and path.read_bytes() == body):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
    return path


DOWNLOAD = download_file()


@app.route("/", defaults={"path": ""})
@app.route("/<path:path>")
def hello(path: str) -> Response:
    return Response("hello\n", mimetype="text/plain")


@app.post("/upload")
def upload() -> Response:
    request.get_data()  # the body, read whole
    return Response("hello\n", mimetype="text/plain")


@app.get("/download")
def download() -> Response:
    return send_file(DOWNLOAD, mimetype="application/octet-stream")
