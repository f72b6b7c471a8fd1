"""What serves a listener, made callable as a sockpool handler: a handler itself, or a WSGI
or ASGI application wrapped in the HTTP/1.1 server (wsgi.py, asgi.py).

Imported in the worker, after the fork, so a reload's generation serves new code; the
dispatcher never imports applications.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import Target
from .importing import load_app, load_handler
from .spec import WorkerSpec

Handler = Callable[..., Any]


class Served:
    """The handlers by listener name (None: listeners without their own), and the ASGI
    applications whose lifespan the worker runs: startup before READY, shutdown at exit."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.table: dict[str | None, Handler] = {}
        self.lifespans: list[Any] = []
        loaded: dict[Target, Handler] = {}  # one import per distinct target
        for name, target in [(None, spec.default_handler), *spec.handlers.items()]:
            if target:
                if target not in loaded:
                    loaded[target] = self._load(target)
                self.table[name] = loaded[target]

    def _load(self, target: Target) -> Handler:
        if target.kind == "handler":
            return load_handler(target.spec)
        app = load_app(target.spec, target.kind)
        from . import http11  # web apps only: kept off a plain handler's cold start

        limits = http11.HttpLimits(
            *self.spec.http_limits,
            request_timeout=self.spec.request_timeout,
            hold_body=self.spec.max_carry,
            buffer_body=self.spec.max_buffered_body if target.kind == "wsgi" else 0,
        )
        if target.kind == "wsgi":
            from . import wsgi

            return wsgi.make_handler(app, limits, self.spec.access_log)
        from . import asgi

        lifespan = asgi.Lifespan(app)
        self.lifespans.append(lifespan)
        return asgi.make_handler(app, limits, self.spec.access_log, state=lifespan.state)
