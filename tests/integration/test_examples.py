"""The web examples in examples/ serve what they say, run as their units run them: the
example's TOML, the app found through PYTHONPATH, the socket from socket activation.

They need issue 13's --wsgi/--asgi: against a sockpool without them they are skipped.
"""

from __future__ import annotations

import functools
import http.client
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import SOCKPOOL, Service, free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
FLASK = EXAMPLES / "flask_app"
STARLETTE = EXAMPLES / "starlette_app"
# (the flag the example's key needs, the app's directory, its /etc/sockpool/NAME.toml)
EXAMPLE = {
    "flask": ("--wsgi", FLASK, FLASK / "web.toml"),
    "starlette": ("--asgi", STARLETTE, STARLETTE / "api.toml"),
}


@functools.cache
def sockpool_help() -> str:
    return subprocess.run([SOCKPOOL, "--help"], capture_output=True, text=True, timeout=30).stdout


def require(flag: str) -> None:
    if flag not in sockpool_help():
        pytest.skip(f"this sockpool has no {flag} (issue 13's web serving)")


def ask(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "text/plain"})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def start(serve: Callable[..., Service], name: str) -> int:
    flag, app_dir, toml = EXAMPLE[name]
    require(flag)
    port = free_port()
    serve([f"--config={toml}"], [f"127.0.0.1:{port}"], env={"PYTHONPATH": str(app_dir)})
    return port


@pytest.mark.parametrize("name", EXAMPLE)
def test_example_config_passes_check(name: str) -> None:
    """`sockpool --check`, as ExecReload= runs it: the TOML is valid and the app imports."""
    flag, app_dir, toml = EXAMPLE[name]
    require(flag)
    done = subprocess.run(
        [SOCKPOOL, "--check", f"--config={toml}"],
        env={"PYTHONPATH": str(app_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_flask_example_serves(serve: Callable[..., Service]) -> None:
    port = start(serve, "flask")
    assert ask(port, "GET", "/") == (200, b"hello from Flask under sockpool\n")
    status, body = ask(port, "GET", "/whoami")
    assert status == 200
    assert json.loads(body)["client"] == "127.0.0.1"
    payload = bytes(range(256)) * 400  # more than one read
    assert ask(port, "POST", "/echo", payload) == (200, payload)
    assert ask(port, "GET", "/nowhere")[0] == 404


def test_starlette_example_serves(serve: Callable[..., Service]) -> None:
    port = start(serve, "starlette")
    assert ask(port, "GET", "/") == (200, b"hello from Starlette under sockpool\n")
    status, body = ask(port, "GET", "/whoami")
    assert status == 200
    assert json.loads(body)["client"] == "127.0.0.1"
    assert ask(port, "GET", "/nowhere")[0] == 404


@pytest.mark.parametrize(("name", "instance"), [("flask", "web"), ("starlette", "api")])
def test_example_drop_ins_load(tmp_path: Path, name: str, instance: str) -> None:
    """systemd reads the drop-ins over the template units without a complaint, except that
    the application's interpreter (/srv/APP/venv, made at install time) is not there yet."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    app_dir = EXAMPLE[name][1]
    for unit in (REPO / "units").glob("sockpool@.*"):
        shutil.copy(unit, tmp_path)
    for drop_in in app_dir.glob(f"sockpool@{instance}.*.d"):
        shutil.copytree(drop_in, tmp_path / drop_in.name)
    units = [str(tmp_path / f"sockpool@{instance}.{kind}") for kind in ("socket", "service")]
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    venv_python = f"/srv/{app_dir.name}/venv/bin/python"
    complaints = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line and f"Command {venv_python} is not executable" not in line
    ]
    assert complaints == []
    assert venv_python in done.stderr  # the drop-in's ExecStart= was read
