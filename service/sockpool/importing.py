"""Turning a `module:callable` string into the handler it names, with errors a human can act on."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import select
import signal
import site
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from .config import Target
from .errors import cut, quote

SYNC_CALL = "handler(sock, info)"
ASYNC_CALL = "await handler(reader, writer)"


class HandlerError(Exception):
    """The handler cannot be loaded; the message says which and why, on one line, and
    `detail` holds the traceback of an import that raised (the journal's EXCEPTION_TEXT)."""

    detail = ""


def load_handler(spec: str) -> Callable[..., Any]:
    """Import the handler `spec` names and make sure sockpool can call it (check_callable)."""
    target = _import(spec, f"handler {quote(spec)}")
    check_callable(spec, target)
    return target


def load_app(spec: str, kind: str) -> Callable[..., Any]:
    """Import a WSGI (`kind` "wsgi") or ASGI ("asgi") application and check that it can be
    called as one: app(environ, start_response), or await app(scope, receive, send)."""
    name = f"{kind} app {quote(spec)}"
    app = _import(spec, name)
    if kind == "asgi" and not is_async(app):
        raise HandlerError(
            f"{name} is not async; an ASGI app is `async def app(scope, receive, send)`"
        )
    if kind == "wsgi" and is_async(app):
        raise HandlerError(f"{name} is async: serve it with --asgi")
    args = 3 if kind == "asgi" else 2
    try:
        inspect.signature(app).bind(*[None] * args)
    except (TypeError, ValueError):
        call = (
            "await app(scope, receive, send)" if kind == "asgi" else "app(environ, start_response)"
        )
        raise HandlerError(f"{name} cannot be called as {call}") from None
    return app


def load_target(target: Target) -> Callable[..., Any]:
    """Import and check what serves a listener (for --check, and the worker)."""
    if target.kind == "handler":
        return load_handler(target.spec)
    return load_app(target.spec, target.kind)


def _import(spec: str, name: str) -> Any:
    """The object `module:attr.path` names, with any failure as one HandlerError line."""
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    # Any import-time failure of user code is the user's to fix, sys.exit("...") and a
    # class of its own under BaseException included: its message is the line worth showing.
    except BaseException as exc:
        filename, lineno = _users_line(exc, module_name)
        error = HandlerError(
            f"{name}: cannot import {quote(module_name)}: {_text(exc)} ({cut(filename)}:{lineno})"
        )
        error.detail = "".join(traceback.format_exception(exc))
        raise error from None
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise HandlerError(f"{name}: {quote(module_name)} has no {quote(attr_path)}") from None
        except Exception as exc:  # a module __getattr__ or a property of the user's
            raise HandlerError(f"{name}: looking up {quote(attr)}: {_text(exc)}") from None
    if not callable(target):
        raise HandlerError(f"{name}: {type(target).__name__} is not callable")
    return target


# Not the user's, unless in the module's own package: the standard library, installed
# packages, importlib's frozen frames, and ours (the import).
_NOT_USERS = tuple(
    {
        *(path + os.sep for path in (*site.getsitepackages(), site.getusersitepackages())),
        *(sysconfig.get_paths()[key] + os.sep for key in ("stdlib", "purelib", "platlib")),
        "<frozen ",
        os.path.dirname(__file__) + os.sep,
    }
)


def _users_line(exc: BaseException, module: str) -> tuple[str, int | None]:
    """Where the import failed in the user's code: a json.loads() or a library call that
    fails at import is the line that made it, not json/decoder.py's. A SyntaxError says
    where itself. Else the innermost frame in the module's own package (which may be an
    installed one), then in no library, then the innermost of all."""
    if isinstance(exc, SyntaxError) and exc.filename and os.path.isfile(exc.filename):
        return exc.filename, exc.lineno  # (not "<unknown>": a string the module compiled)
    frames = traceback.extract_tb(exc.__traceback__)
    home = _package_dir(module)
    for frame in reversed(frames):
        if home and frame.filename.startswith(home):
            return frame.filename, frame.lineno
    for frame in reversed(frames):
        if not frame.filename.startswith(_NOT_USERS):
            return frame.filename, frame.lineno
    return frames[-1].filename, frames[-1].lineno


def _package_dir(module: str) -> str:
    """The directory of the top-level package `module` is in (the file, for a plain
    module); "" when it cannot be found."""
    try:
        spec = importlib.util.find_spec(module.partition(".")[0])
    except Exception:  # the finder runs the user's code: anything may fail there
        return ""
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return ""
    return os.path.dirname(spec.origin) + os.sep if spec.submodule_search_locations else spec.origin


def _text(exc: BaseException) -> str:
    """`Type: message`, cut to one line's worth; an exception whose str() fails is named."""
    try:
        message = str(exc)
    except Exception:
        message = "(its message cannot be shown)"
    return f"{type(exc).__name__}: {cut(message)}" if message else type(exc).__name__


def check_callable(spec: str, handler: Callable[..., Any]) -> None:
    """sockpool calls a handler `handler(sock, info)`, or `await handler(reader, writer)`
    when it is a coroutine function: refuse one that cannot take that call, rather than
    fail on every connection. The rule: the callable is written in Python (a function,
    method, class or object with `__call__`) and its signature accepts two positional
    arguments. Built-in functions (os.system, print) are refused, and so is a callable
    whose signature cannot be read, since nothing shows it was meant to be a handler."""
    call = ASYNC_CALL if is_async(handler) else SYNC_CALL
    name = f"handler {quote(spec)}"
    if inspect.isbuiltin(handler):
        raise HandlerError(f"{name} is a built-in function; sockpool calls {call}")
    if inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler):
        raise HandlerError(f"{name} is a generator function; sockpool calls {call}")
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        raise HandlerError(
            f"{name}: its signature cannot be inspected, so nothing shows it takes {call}; "
            "wrap it in a Python function"
        ) from None
    try:
        signature.bind(None, None)
    except TypeError:
        raise HandlerError(
            f"{name} takes {cut(_plain(signature), 80)}; sockpool calls {call}"
        ) from None


def _plain(signature: inspect.Signature) -> str:
    """The parameters without annotations, which make an error line long, not clearer."""
    empty = inspect.Parameter.empty
    params = [p.replace(annotation=empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=params, return_annotation=empty))


def is_async(handler: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - an async __call__ on an instance
    )


def check_in_child(specs: Iterable[Target], timeout: float) -> None:
    """Load the handlers as a worker would, in a child process, within `timeout` seconds
    (start_timeout): for `--check`, which must neither hang on an import that blocks nor
    be fooled by one that forks. Raises HandlerError naming the handler.

    The child has a process group of its own, killed whole at the end: nothing a module
    started at import outlives the check, unless it left the group (a session of its own,
    as a daemon makes).
    """
    specs = list(specs)
    _flush()  # or the child would write our buffered output a second time
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its verdict is what the tests see
        code = 1
        try:
            os.close(r)
            os.setpgid(0, 0)
            _load_and_report(specs, w)
            code = 0
        finally:
            _flush()  # what the modules printed at import, which os._exit would drop
            os._exit(code)
    os.close(w)
    with contextlib.suppress(OSError):  # as the child does, in case we get to kill it first
        os.setpgid(pid, pid)
    try:
        kind, text, current = _verdict(r, timeout)
    finally:
        os.close(r)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the unreaped child keeps the group's id ours
        _, status = os.waitpid(pid, 0)
    name = current or "the handlers"
    if kind == "timeout":
        raise HandlerError(f"{name}: importing it did not finish within start_timeout={text}s")
    if kind == "ended":
        raise HandlerError(f"{name}: importing it ended the process ({_status(status)})")
    if kind != "ok":
        raise HandlerError(text)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream is no reason to fail
            stream.flush()


def _load_and_report(specs: list[Target], w: int) -> None:
    """In the check's child: one JSON line to the parent per step, each write atomic."""
    import json  # --check's child only: kept off the service's cold start

    me = os.getpid()
    forks = []
    os.register_at_fork(after_in_parent=lambda: forks.append(1))

    def report(kind: str, text: str) -> None:
        os.write(w, json.dumps([kind, text[:2000]]).encode() + b"\n")

    for spec in specs:
        report("importing", str(spec))
        try:
            load_target(spec)
        except HandlerError as exc:
            if os.getpid() == me:
                report("failed", str(exc))
                return
        if os.getpid() != me:  # a copy forked below Python's hooks came back into sockpool
            report("failed", _forked(spec))
            os._exit(0)
        if forks:
            report("failed", _forked(spec))
            return
    report("ok", "")


def _forked(target: Target) -> str:
    module = target.spec.partition(":")[0]
    return (
        f"{target}: importing {quote(module)} forks (os.fork()): in a worker the "
        "copy would go on as a second worker; start helper processes with subprocess, "
        "or from the handler"
    )


def _verdict(r: int, timeout: float) -> tuple[str, str, str | None]:
    """(kind, text, handler being imported) from the child's reports."""
    import json  # --check's child only: kept off the service's cold start

    deadline = time.monotonic() + timeout
    buffer = b""
    current = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            return "timeout", f"{timeout:g}", current
        chunk = os.read(r, 65536)
        if not chunk:
            return "ended", "", current
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            kind, text = json.loads(line)
            if kind == "importing":
                current = text
            else:
                return kind, text, current


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
