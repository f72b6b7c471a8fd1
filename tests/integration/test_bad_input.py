"""Bad input gets one line naming the problem and an exit code of its own; never a traceback."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harness import SOCKPOOL, free_port, request, wait_until

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


# Digits, but not ASCII ones; a leading 0 (libsystemd reads it as octal: "010" passes 8
# sockets); past int()'s 4,300 digits.
@pytest.mark.parametrize("fds", ["three", "\u00b9", "\uff11", "01", "0" * 5000 + "1"])
def test_listen_fds_garbage(serve, fds: str) -> None:
    code, line = activated_error(serve, ["env", f"LISTEN_FDS={fds}"])
    assert code == 65
    assert f"LISTEN_FDS={fds[:20]!r}"[:-1] in line and "is not a count from 1" in line


def test_listen_pid_with_a_leading_zero(serve) -> None:
    code, line = activated_error(serve, ["sh", "-c", 'LISTEN_PID=0$$ exec "$0" "$@"'])
    assert code == 65
    assert re.fullmatch(r"sockpool: LISTEN_PID='0\d+' is not a process id", line), line


def test_listen_fdnames_that_do_not_match(serve) -> None:
    code, line = activated_error(serve, ["env", "LISTEN_FDNAMES=a:b"])
    assert code == 65
    assert "names 2 sockets" in line


def test_bad_config_value_names_the_key(serve, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('workers = "four"\n')
    code, line = activated_error(serve, [], args=[f"--config={config}", ECHO])
    assert code == 78
    expected = "workers: expected an integer from 1 to 4096, got 'four'"
    assert line == f"sockpool: config {config}: {expected}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wrkers = 2\n", "wrkers: unknown key"),
        ("graceful_timeout = -1\n", "graceful_timeout: expected a number of seconds >= 0"),
        ("handler = 'no-colon'\n", "handler: expected 'module:callable'"),
        ("[listeners.admin]\nhandlr = 'a:b'\n", "listeners: admin.handlr: unknown key"),
        ("workers = [\n", "not valid TOML"),
        ("listen = ['127.0.0.1:99999']\n", "port must be a number from 0 to 65535"),
        ("listen = ['127.0.0.1:\u00b9']\n", "port must be a number from 0 to 65535"),
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
    expected = "--workers: expected an integer from 1 to 4096, got 0"
    assert error_line(result.stderr) == f"sockpool: {expected}"


def test_unknown_flag_is_a_usage_error() -> None:
    result = run("--wrokers=2", ECHO)
    assert result.returncode == 64
    assert "unrecognized arguments: --wrokers=2" in error_line(result.stderr)


@pytest.mark.parametrize("extra", ["a\nforged line", "x" * 100_000])
def test_a_usage_error_is_one_short_line_whatever_it_quotes(extra: str) -> None:
    result = run("--check", ECHO, extra)
    assert result.returncode == 64
    assert result.stderr.count("\n") == 1 and len(error_line(result.stderr)) < 400


def test_an_empty_config_path_is_a_usage_error() -> None:
    # As `--config=$CONFIG` with the variable unset: it used to mean "no file" silently.
    result = run("--config=", "--check", ECHO)
    assert result.returncode == 64
    assert "argument --config: an empty path" in error_line(result.stderr)


def test_no_sockets_at_all() -> None:
    result = run(ECHO)
    assert result.returncode == 66
    assert "no sockets" in error_line(result.stderr)


@pytest.mark.skipif(
    Path("/run/systemd/journal/socket").exists(), reason="needs a machine without journald"
)
def test_with_the_journal_asked_for_and_no_journald_the_error_line_goes_to_stderr() -> None:
    """It was logged to a journal that is not there, and the admin saw nothing."""
    result = run("--log-target=journal", ECHO)
    assert result.returncode == 66
    assert error_line(result.stderr) == (
        "sockpool: no sockets: start sockpool from a systemd .socket unit (socket "
        "activation) or give --listen ADDRESS"
    )


def test_listen_address_in_use() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(f"--listen=127.0.0.1:{port}", ECHO)
    assert result.returncode == 71
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in error_line(result.stderr)


def test_out_of_descriptors_at_listen_is_one_line_and_leaves_no_socket_file(
    tmp_path: Path,
) -> None:
    paths = [f"--listen={tmp_path}/s{i}.sock" for i in range(40)]
    result = subprocess.run(
        ["sh", "-c", 'ulimit -n 24 && exec "$@"', "sh", SOCKPOOL, *paths, ECHO],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 71
    assert "Too many open files" in error_line(result.stderr)
    assert not list(tmp_path.iterdir())


def test_a_failed_listen_leaves_no_socket_file_behind(tmp_path: Path) -> None:
    """The UNIX socket bound before the address that failed is closed and unlinked."""
    path = tmp_path / "first.sock"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(f"--listen={path}", f"--listen=127.0.0.1:{port}", ECHO)
    assert result.returncode == 71
    assert "Address already in use" in error_line(result.stderr)
    assert not path.exists()


def test_a_listener_with_no_handler_is_refused_before_its_socket_file_exists(
    tmp_path: Path,
) -> None:
    path = tmp_path / "unserved.sock"
    result = run(f"--listen=web={path}")
    assert result.returncode == 78
    assert "no handler for listener 'web'" in error_line(result.stderr)
    assert not path.exists()


def test_the_same_listen_address_twice_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "twice.sock"
    result = run(f"--listen={path}", f"--listen=b={path}", ECHO)
    assert result.returncode == 78
    line = error_line(result.stderr)  # the paths quoted, long ones cut in the middle
    assert line.startswith("sockpool: --listen: 'b=/") and "): the same address as '/" in line
    assert not path.exists()


def test_check_names_a_config_path_that_is_not_utf8(tmp_path: Path) -> None:
    """Printed as it was, the path's undecodable byte was a UnicodeEncodeError under a
    UTF-8 stdout, after the check itself had passed."""
    path = bytes(tmp_path) + b"/c\xff.toml"
    Path(os.fsdecode(path)).write_text("workers = 1\n")
    ok = subprocess.run(
        [SOCKPOOL, f"--config={os.fsdecode(path)}", "--check", ECHO],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"sockpool: configuration OK ({tmp_path}/c\\udcff.toml)\n"


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


# -- handlers --check must refuse (issue 11, items 3, 4 and 6) ----------------------------


def check_module(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`sockpool --check ARGS` with a module `mod` of this source importable."""
    (tmp_path / "mod.py").write_text(source)
    return subprocess.run(
        [SOCKPOOL, "--check", *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path)},
        timeout=60,
    )


HANDLERS = """
import asyncio

def two(sock, info): pass
def three(sock, info, extra): pass
async def async_one(reader): pass
def gen(sock, info): yield
class Serve:
    def __init__(self, sock, info): pass
class Handler:
    def __call__(self, sock, info): pass
instance = Handler()
"""


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (
            "os:system",
            "sockpool: handler 'os:system' is a built-in function; sockpool calls "
            "handler(sock, info)",
        ),
        ("builtins:print", "sockpool: handler 'builtins:print' is a built-in function"),
        (
            "mod:three",
            "sockpool: handler 'mod:three' takes (sock, info, extra); sockpool calls "
            "handler(sock, info)",
        ),
        (
            "mod:async_one",
            "sockpool: handler 'mod:async_one' takes (reader); sockpool calls "
            "await handler(reader, writer)",
        ),
        ("mod:gen", "sockpool: handler 'mod:gen' is a generator function"),
        ("mod:Handler", "sockpool: handler 'mod:Handler' takes (); sockpool calls"),
        ("builtins:dict", "sockpool: handler 'builtins:dict': its signature cannot be inspected"),
    ],
)
def test_check_refuses_handlers_sockpool_cannot_call(
    tmp_path: Path, handler: str, message: str
) -> None:
    result = check_module(tmp_path, HANDLERS, handler)
    assert result.returncode == 78
    assert error_line(result.stderr).startswith(message)


@pytest.mark.parametrize("handler", ["mod:two", "mod:Serve", "mod:instance"])
def test_check_accepts_python_callables_of_two_arguments(tmp_path: Path, handler: str) -> None:
    result = check_module(tmp_path, HANDLERS, handler)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("configuration OK") == 1


def test_check_refuses_a_module_that_forks_at_import(tmp_path: Path) -> None:
    """It used to say "configuration OK" twice, once from each process, and exit 0."""
    result = check_module(
        tmp_path, "import os\nos.fork()\ndef handle(sock, info): pass\n", "mod:handle"
    )
    assert result.returncode == 78
    assert "configuration OK" not in result.stdout
    line = error_line(result.stderr)
    assert line.startswith("sockpool: handler 'mod:handle': importing 'mod' forks (os.fork())")


def test_check_gives_up_on_an_import_that_never_returns(tmp_path: Path) -> None:
    """It used to hang forever. Now it names the handler, and the child is killed."""
    config = tmp_path / "c.toml"
    config.write_text(f'handler = "{ECHO}"\n[listeners.slow]\nhandler = "mod:handle"\n')
    source = "import threading\nthreading.Event().wait()\ndef handle(sock, info): pass\n"
    result = check_module(tmp_path, source, "--start-timeout=1", f"--config={config}")
    assert result.returncode == 78
    assert error_line(result.stderr) == (
        "sockpool: handler 'mod:handle': importing it did not finish within start_timeout=1s"
    )
    assert not [p for p in Path("/proc").glob("[0-9]*") if _runs_with(p, str(config))]


def _runs_with(proc: Path, arg: str) -> bool:
    try:
        return f"--config={arg}" in (proc / "cmdline").read_text()
    except OSError:
        return False


def test_check_names_an_import_that_kills_its_process(tmp_path: Path) -> None:
    result = check_module(tmp_path, "import os\nos.kill(os.getpid(), 9)\n", "mod:handle")
    assert result.returncode == 78
    assert error_line(result.stderr) == (
        "sockpool: handler 'mod:handle': importing it ended the process (killed by SIGKILL)"
    )


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "86401", "soon"])
def test_start_timeout_must_be_a_positive_number(value: str) -> None:
    result = run(f"--start-timeout={value}", "--check", ECHO)
    assert result.returncode == 78
    assert error_line(result.stderr).startswith(
        "sockpool: --start-timeout: expected a number of seconds above 0, at most 86400"
    )


# -- hostile configuration files (issue 11, item 6) ----------------------------------------


def cut_as(line: str, expected: str) -> bool:
    """line == expected, where <cut> in expected stands for a quoted value cut short."""
    pattern = re.escape(expected).replace("<cut>", r"[^' ]{20,40}\.\.\.[^' ]{20,40}")
    return re.fullmatch(pattern, line) is not None


def check_config(tmp_path: Path, data: bytes) -> tuple[int, str]:
    config = tmp_path / "c.toml"
    config.write_bytes(data)
    result = run(f"--config={config}", "--check", ECHO)
    return result.returncode, error_line(result.stderr).replace(str(config), "FILE")


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"a = " + b"[" * 100_000 + b"]" * 100_000, "not valid TOML: nested too deeply"),
        (b'name = "x"\nhandler = "\xff"\n', "not UTF-8: byte 0xff on line 2"),
        (b"# " + b"x" * 1024 * 1024 + b"\n", "larger than 1,048,576 bytes"),
        (
            b'name = "' + b"n" * 1_000_000 + b'"\n',
            "name: expected a name of up to 255 letters, digits "
            "and ._@:-\\, got 'n<cut>n' (1,000,000 characters)",
        ),
        (
            b"".join(b"[listeners.l%d]\n" % i for i in range(1025)),
            "listeners: 1,025 "
            "[listeners.NAME] tables, at most 1024 (as many as sockets can be passed)",
        ),
        (
            b'"' + b"k" * 5000 + b'\\n" = 1\n',
            "k" * 60 + "...: unknown key",  # a key is cut, not quoted
        ),
        (
            b'listen = ["' + b"h." * 149 + b'hh:80"]\n',  # labels IDNA takes: only too long
            "listen: 'h<cut>:80' "
            "(303 characters): a listener name is at most 255 bytes: give NAME=ADDR",
        ),
    ],
    ids=[
        "nested",
        "not-utf8",
        "too-large",
        "long-value",
        "too-many-tables",
        "long-key",
        "long-name",
    ],
)
def test_hostile_config_files_get_one_short_line(tmp_path: Path, data: bytes, line: str) -> None:
    code, got = check_config(tmp_path, data)
    assert code == 78
    assert cut_as(got, f"sockpool: config FILE: {line}")
    assert len(got) < 250


def test_a_bad_value_from_a_flag_is_cut_too() -> None:
    result = run("--workers=" + "9x" * 50_000, "--check", ECHO)
    assert result.returncode == 78
    assert cut_as(
        error_line(result.stderr),
        "sockpool: --workers: expected an integer from 1 to 4096, "
        "got '9x<cut>9x' (100,000 characters)",
    )


def test_listener_tables_no_socket_has_get_one_warning(serve, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'handler = "{ECHO}"\n' + "".join(f"[listeners.x{i}]\n" for i in range(40)))
    service = serve([f"--config={config}"], listen=[f"127.0.0.1:{free_port()}"], fdnames=["web"])
    warnings = [ln for ln in service.output().splitlines() if "WARNING" in ln]
    assert len(warnings) == 1, warnings
    assert (
        "config names 40 listener(s) with no socket of that name passed: 'x0', 'x1'"
        in (warnings[0])
    )


# -- names and paths (issue 11, item 5) ----------------------------------------------------


def test_listen_name_longer_than_255_bytes_is_refused_before_serving() -> None:
    """It passed --check, then the first connection crashed the dispatcher (WireError)."""
    listen = "--listen=" + "n" * 256 + f"=127.0.0.1:{free_port()}"
    for args in ([listen, "--check", ECHO], [listen, ECHO]):
        result = run(*args)
        assert result.returncode == 78
        assert cut_as(
            error_line(result.stderr),
            "sockpool: --listen: 'n<cut>n' (256 characters): a listener name is at most 255 bytes",
        )


def test_unix_path_that_is_not_utf8_serves(serve) -> None:
    """A --listen path with a byte that is not UTF-8 is bound as it is and named with the
    byte escaped; its first connection used to crash the dispatcher (UnicodeEncodeError)."""
    directory = Path(tempfile.mkdtemp(prefix="sockpool-"))
    path = os.fsdecode(bytes(directory) + b"/a\xff.sock")
    try:
        # Not socket-activated (under activation `listen` is not bound): the activating
        # socket only starts it.
        service = serve(
            ["--workers=1", f"--listen={path}", "apps:whoami"],
            listen=[f"127.0.0.1:{free_port()}"],
            wrapper=["env", "-u", "LISTEN_FDS", "-u", "LISTEN_PID", "-u", "LISTEN_FDNAMES"],
        )
        assert os.listdir(bytes(directory)) == [b"a\xff.sock"]
        for _ in range(2):  # still serving after the first
            answer = request(path, b"who\n").decode()
            assert answer.startswith(f"whoami {directory}/a\\udcff.sock ")
        assert "Traceback" not in service.output()
    finally:
        shutil.rmtree(bytes(directory))


NOT_AN_FDNAME = "is not a socket name systemd passes: printable ASCII, at most 255 characters"


@pytest.mark.parametrize(
    ("names", "line"),
    [
        # byte 0xff in the environment: it was a SystemError traceback from python-systemd
        ("web:\udcff", f"sockpool: LISTEN_FDNAMES: name 2 '\\udcff' {NOT_AN_FDNAME}"),
        ("n" * 256, f"sockpool: LISTEN_FDNAMES: name 1 'n<cut>n' (256 characters) {NOT_AN_FDNAME}"),
    ],
)
def test_listen_fdnames_systemd_would_not_pass(serve, names: str, line: str) -> None:
    listen = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    service = serve(
        [ECHO], listen=listen, wait_ready=False, wrapper=["env", f"LISTEN_FDNAMES={names}"]
    )
    assert service.wait() == 65
    assert cut_as(error_line(service.output()), line)
    checked = subprocess.run(
        [SOCKPOOL, "--check", ECHO], capture_output=True, text=True, env={"LISTEN_FDNAMES": names}
    )
    assert checked.returncode == 65
    assert cut_as(error_line(checked.stderr), line)


# -- log injection (issue 11, item 7) ------------------------------------------------------


def test_a_peer_path_cannot_forge_a_log_line(serve) -> None:
    """A UNIX client bound to a path with a newline in it used to write a record of its
    choosing into the stderr log; now the newline shows escaped in the PEER field."""
    # In /tmp itself: the client's path, a whole log line long, must fit AF_UNIX's 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="sockpool-", dir="/tmp"))
    listen = str(directory / "s.sock")
    forged = "2026-01-01 00:00:00,000 sockpool[1] ERROR: FORGED"
    service = serve(["--workers=1", "apps:boom"], listen=[listen], fdnames=["local"])
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.bind(str(directory / f"c\n{forged}"))
            client.connect(listen)
            client.sendall(b"go\n")
            assert client.recv(10) == b""
        wait_until(lambda: "boom in the handler" in service.output(), "the traceback")
        lines = service.output().splitlines()
        assert not [ln for ln in lines if ln.startswith(forged)]
        [line] = [ln for ln in lines if "about to fail" in ln and "CONN_ID=1 " not in ln]
        assert f"PEER={directory}/c\\n{forged} PEER_PID=" in line  # the trigger was CONN_ID=1
    finally:
        shutil.rmtree(directory)
