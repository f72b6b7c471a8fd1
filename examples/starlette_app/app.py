"""A Starlette application served by sockpool: `asgi = "app:app"` in /etc/sockpool/api.toml.

Copied to /srv/starlette_app/app.py; the service finds it through
PYTHONPATH=/srv/starlette_app (sockpool@api.service.d/app.conf). Try it without systemd:

    PYTHONPATH=. sockpool --listen 127.0.0.1:8081 --asgi app:app
    curl http://127.0.0.1:8081/
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # ASGI lifespan: each worker runs the startup once, before it reports ready (a failure
    # here is a worker that cannot start), and the shutdown when it retires (stop, reload).
    app.state.requests = 0
    log.info("worker %d started", os.getpid())
    yield
    log.info("worker %d retiring after %d requests", os.getpid(), app.state.requests)


async def hello(request: Request) -> PlainTextResponse:
    request.app.state.requests += 1
    return PlainTextResponse("hello from Starlette under sockpool\n")


async def whoami(request: Request) -> JSONResponse:
    """Which client asked, and which worker answered."""
    request.app.state.requests += 1
    client = request.client.host if request.client else None
    return JSONResponse({"client": client, "worker_pid": os.getpid(), "path": request.url.path})


app = Starlette(routes=[Route("/", hello), Route("/whoami", whoami)], lifespan=lifespan)
