"""Which callables sockpool accepts as handlers: the ones it can call as it does."""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import pytest

from sockpool import handlers
from sockpool.importing import HandlerError, check_callable, load_handler


def two(sock: Any, info: Any) -> None: ...


def star(*args: Any) -> None: ...


def three(sock, info, extra) -> None: ...


def keyword_only(*, sock, info) -> None: ...


async def async_two(reader: Any, writer: Any) -> None: ...


async def async_three(reader, writer, extra) -> None: ...


class Instance:
    async def __call__(self, reader: Any, writer: Any) -> None: ...


@pytest.mark.parametrize(
    "handler",
    [
        two,
        star,
        async_two,
        Instance(),
        functools.partial(three, extra=1),
        handlers.echo,
        handlers.echo_async,
        handlers.http_hello,
        handlers.http_hello_async,
    ],
)
def test_callable_the_way_sockpool_calls(handler: Any) -> None:
    check_callable("m:h", handler)


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (os.system, "handler 'm:h' is a built-in function; sockpool calls handler(sock, info)"),
        (print, "handler 'm:h' is a built-in function; sockpool calls handler(sock, info)"),
        (three, "handler 'm:h' takes (sock, info, extra); sockpool calls "),
        (keyword_only, "handler 'm:h' takes (*, sock, info); sockpool calls "),
        (
            async_three,
            "handler 'm:h' takes (reader, writer, extra); sockpool calls await "
            "handler(reader, writer)",
        ),
        (dict, "handler 'm:h': its signature cannot be inspected"),
    ],
)
def test_refused(handler: Any, message: str) -> None:
    with pytest.raises(HandlerError, match="^" + re.escape(message)):
        check_callable("m:h", handler)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            'import sys\nsys.exit("DATABASE_URL is not set")\n',
            "cannot import 'needsenv_{n}': SystemExit: DATABASE_URL is not set (",
        ),
        ("raise KeyboardInterrupt\n", "cannot import 'needsenv_{n}': KeyboardInterrupt ("),
        (
            "class Stop(BaseException):\n    pass\nraise Stop('no config')\n",
            "cannot import 'needsenv_{n}': Stop: no config (",
        ),
        (
            "class Odd(Exception):\n    def __str__(self):\n        raise ValueError\nraise Odd\n",
            "cannot import 'needsenv_{n}': Odd: (its message cannot be shown) (",
        ),
        (
            "def __getattr__(name):\n    raise RuntimeError('no app without a database')\n",
            "looking up 'handle': RuntimeError: no app without a database",
        ),
    ],
    ids=["sys-exit", "keyboard-interrupt", "base-exception", "unprintable", "module-getattr"],
)
def test_a_module_that_fails_any_way_is_one_line_with_its_reason(
    tmp_path, monkeypatch: pytest.MonkeyPatch, source: str, message: str, request
) -> None:
    # Such failures escaped the `except Exception`: each worker start logged a traceback,
    # and --check said only that the import ended the process, with the wrong status.
    n = request.node.callspec.id.replace("-", "_")
    (tmp_path / f"needsenv_{n}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HandlerError) as err:
        load_handler(f"needsenv_{n}:handle")
    assert message.format(n=n) in str(err.value) and "\n" not in str(err.value)


def test_a_failed_import_names_the_users_line_and_keeps_the_traceback(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not json/decoder.py's line, where the error was raised: the user's call. The
    traceback goes with it, for the journal's EXCEPTION_TEXT."""
    (tmp_path / "badconfig_mod.py").write_text('import json\nCONFIG = json.loads("{bad")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HandlerError) as err:
        load_handler("badconfig_mod:handle")
    assert str(err.value).endswith(f"({tmp_path}/badconfig_mod.py:2)")
    assert err.value.detail.startswith("Traceback")
    assert 'CONFIG = json.loads("{bad")' in err.value.detail


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ('import h11\nh11.Request(method="GET", target="/", headers=[])\n', 2),  # in a library
        ("x = 1\ndef broken(:\n", 2),  # a SyntaxError: importlib's frames only
        ("import ast\nCONFIG = ast.literal_eval('{')\n", 2),  # one of a string, not a file
    ],
    ids=["installed-library", "syntax-error", "syntax-error-of-a-string"],
)
def test_a_failed_import_names_the_users_line_not_a_librarys(
    tmp_path, monkeypatch: pytest.MonkeyPatch, source: str, line: int, request
) -> None:
    name = f"users_line_{request.node.callspec.id.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HandlerError) as err:
        load_handler(f"{name}:handle")
    assert str(err.value).endswith(f"({tmp_path}/{name}.py:{line})")
