"""Bad input gets one line naming the problem and an exit code of its own; never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import SOCKPOOL, free_port

ECHO = "sockpool.handlers:echo"


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SOCKPOOL, *args], capture_output=True, text=True, timeout=timeout)


def error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("sockpool: ")]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output
    return lines[0]


def activated_error(serve, wrapper: list[str], args: list[str] | None = None, **kw) -> tuple:
    service = serve(
        args or [ECHO], listen=[f"127.0.0.1:{free_port()}"], wait_ready=False, wrapper=wrapper, **kw
    )
    code = service.wait()
    return code, error_line(service.output())


def test_listen_pid_of_another_process(serve) -> None:
    code, line = activated_error(serve, ["env", "LISTEN_PID=1"])
    assert code == 65
    assert "LISTEN_PID=1 is another process" in line


def test_listen_fds_naming_a_closed_descriptor(serve) -> None:
    code, line = activated_error(serve, ["env", "LISTEN_FDS=2"])
    assert code == 69
    assert line == "sockpool: LISTEN_FDS=2 but descriptor 4 is not open"


def test_listen_fds_naming_a_descriptor_that_is_not_a_socket(serve) -> None:
    code, line = activated_error(
        serve, ["sh", "-c", 'exec 4</dev/null; LISTEN_FDS=2 exec "$0" "$@"']
    )
    assert code == 69
    assert line == "sockpool: descriptor 4 from LISTEN_FDS is not a socket"


def test_listen_fds_garbage(serve) -> None:
    code, line = activated_error(serve, ["env", "LISTEN_FDS=three"])
    assert code == 65
    assert "LISTEN_FDS='three' is not a count" in line


def test_listen_fdnames_that_do_not_match(serve) -> None:
    code, line = activated_error(serve, ["env", "LISTEN_FDNAMES=a:b"])
    assert code == 65
    assert "names 2 sockets" in line


def test_bad_config_value_names_the_key(serve, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('workers = "four"\n')
    code, line = activated_error(serve, [], args=[f"--config={config}", ECHO])
    assert code == 78
    assert line == f"sockpool: config {config}: workers: expected a positive integer, got 'four'"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wrkers = 2\n", "wrkers: unknown key"),
        ("graceful_timeout = -1\n", "graceful_timeout: expected a number of seconds >= 0"),
        ("handler = 'no-colon'\n", "handler: expected 'module:callable'"),
        ("[listeners.admin]\nhandlr = 'a:b'\n", "listeners: admin.handlr: unknown key"),
        ("workers = [\n", "not valid TOML"),
        ("listen = ['127.0.0.1:99999']\n", "port must be a number from 0 to 65535"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run(f"--config={config}", "--check", ECHO)
    assert result.returncode == 78
    assert message in error_line(result.stderr)


def test_bad_flag_value_is_a_config_error() -> None:
    result = run("--workers=0", "--check", ECHO)
    assert result.returncode == 78
    assert error_line(result.stderr) == ("sockpool: --workers: expected a positive integer, got 0")


def test_unknown_flag_is_a_usage_error() -> None:
    result = run("--wrokers=2", ECHO)
    assert result.returncode == 64
    assert "unrecognized arguments: --wrokers=2" in error_line(result.stderr)


def test_no_sockets_at_all() -> None:
    result = run(ECHO)
    assert result.returncode == 66
    assert "no sockets" in error_line(result.stderr)


def test_listen_address_in_use() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(f"--listen=127.0.0.1:{port}", ECHO)
    assert result.returncode == 71
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in error_line(result.stderr)


def test_check_imports_the_handlers(tmp_path: Path) -> None:
    env_path = str(Path(__file__).parent)
    ok = subprocess.run(
        [SOCKPOOL, "--check", "apps:whoami"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path},
    )
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stdout
    for handler, message in [
        ("apps:not_callable", "int is not callable"),
        ("apps:nothing", "'apps' has no 'nothing'"),
        ("broken_app:handle", "ImportError: this module is broken on purpose"),
    ]:
        bad = subprocess.run(
            [SOCKPOOL, "--check", handler],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": env_path},
        )
        assert bad.returncode == 78
        assert message in error_line(bad.stderr)


def test_workers_that_cannot_start_make_the_dispatcher_give_up(serve) -> None:
    service = serve(
        ["--workers=2", "broken_app:handle"], listen=[f"127.0.0.1:{free_port()}"], wait_ready=False
    )
    assert service.wait(timeout=60) == 70
    line = error_line(service.output())
    assert "workers keep failing to start" in line
    assert "this module is broken on purpose" in line


def test_version_and_module_entry_point() -> None:
    assert run("--version").stdout.strip() == "sockpool 0.1.0"
    module = subprocess.run(
        [sys.executable, "-m", "sockpool", "--version"], capture_output=True, text=True
    )
    assert module.stdout.strip() == "sockpool 0.1.0"


def test_a_datagram_socket_is_refused(serve) -> None:
    service = serve([ECHO], listen=[f"127.0.0.1:{free_port()}"], wait_ready=False, datagram=True)
    assert service.wait() == 69
    assert "is not a stream socket" in error_line(service.output())


def test_listen_fds_claiming_too_many(serve) -> None:
    code, line = activated_error(serve, ["env", "LISTEN_FDS=100000"])
    assert code == 65
    assert "LISTEN_FDS='100000' is not a count from 1 to 1024" in line
