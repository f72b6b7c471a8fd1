"""Flask "hello": every path answers ``hello\\n``, under sockpool --wsgi and gunicorn alike.

Every path, because bench.loadgen asks for a unique /r/<tag> per request (wrk asks for /).
POST /upload reads its body first, as a view that takes an upload does (flask-upload).

    systemd-socket-activate -l 127.0.0.1:7101 gunicorn -w 4 bench.apps.flask_hello:app
"""

from __future__ import annotations

from flask import Flask, Response, request

app = Flask(__name__)


@app.route("/", defaults={"path": ""})
@app.route("/<path:path>")
def hello(path: str) -> Response:
    return Response("hello\n", mimetype="text/plain")


@app.post("/upload")
def upload() -> Response:
    request.get_data()  # the body, read whole
    return Response("hello\n", mimetype="text/plain")
