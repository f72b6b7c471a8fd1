"""Turning a `module:callable` string into the handler it names, with errors a human can act on."""

from __future__ import annotations

import importlib
import inspect
import traceback
from collections.abc import Callable
from typing import Any


class HandlerError(Exception):
    """The handler cannot be loaded; the message says which and why, on one line."""


def load_handler(spec: str) -> Callable[..., Any]:
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is the user's to fix
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise HandlerError(
            f"handler {spec!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
            f" ({where.filename}:{where.lineno})"
        ) from None
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise HandlerError(f"handler {spec!r}: {module_name!r} has no {attr_path!r}") from None
    if not callable(target):
        raise HandlerError(f"handler {spec!r}: {type(target).__name__} is not callable")
    return target


def is_async(handler: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - an async __call__ on an instance
    )
