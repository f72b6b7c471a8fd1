"""Starlette "hello": every path answers ``hello\\n``, under sockpool --asgi and uvicorn alike.

Every path, because bench.loadgen asks for a unique /r/<tag> per request (wrk asks for /).

    systemd-socket-activate -l 127.0.0.1:7101 uvicorn --fd 3 --workers 4 \\
        bench.apps.starlette_hello:app
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello\n")


app = Starlette(routes=[Route("/{path:path}", hello)])
