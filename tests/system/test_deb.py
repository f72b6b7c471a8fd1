"""The Debian package, as an admin meets it: `apt-get install ./sockpool_…deb` on a systemd machine.

A machine of its own (not the session's, which has sockpool copied in by hand): the package
is installed, used, reinstalled under load and purged, in that order. The .deb comes from
`make deb` (run here too, a no-op when dist/ is up to date).

The echo socket is moved off the shipped 127.0.0.1:7007 by an admin's drop-in placed before
the installation, as the other system tests do: the machines share the host's network, where
7007 may belong to `make run` and 7107 to the session's machine.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nspawn import Container, unavailable_reason
from sockpool.events import Event
from support import REPO, Unit, listen_on, request, steady_load, wait_until

pytestmark = pytest.mark.system

PORT = 7207
ADDRESS = ("127.0.0.1", PORT)
SHIPPED_LISTEN = "ListenStream=127.0.0.1:7007"
DROP_IN = "/etc/systemd/system/sockpool-echo.socket.d/port.conf"
IN_MACHINE_DEB = "/tmp/sockpool.deb"
POLICY_RC_D = "/usr/sbin/policy-rc.d"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
CATALOG = REPO / "packaging" / "sockpool.catalog"
FLASK_EXAMPLE = REPO / "examples" / "flask_app"
FLASK_ADDRESS = ("127.0.0.1", 7208)
# Flask and what it imports, copied from the tests' own environment into the example's
# venv: the machine has no route to PyPI (all pure Python but MarkupSafe's optional C part,
# built for CPython 3.11 as Debian's python3 is).
FLASK_PACKAGES = ("flask", "werkzeug", "jinja2", "markupsafe", "itsdangerous", "click", "blinker")


def _version() -> str:
    changelog = (REPO / "packaging" / "debian" / "changelog").read_text()
    match = re.match(r"sockpool \(([^)]+)\)", changelog)
    assert match, "packaging/debian/changelog does not start with a sockpool entry"
    return match.group(1)


@pytest.fixture(scope="module")
def deb() -> Path:
    """dist/sockpool_VERSION_all.deb, built (or found up to date) by `make deb`."""
    if reason := unavailable_reason():
        pytest.skip(f"no systemd container here: {reason}")
    built = subprocess.run(
        ["make", "-s", "deb"], cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )
    assert built.returncode == 0, f"make deb failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}"
    path = REPO / "dist" / f"sockpool_{_version()}_all.deb"
    assert path.is_file(), f"make deb did not produce {path}"
    return path


@pytest.fixture(scope="module")
def machine(deb: Path) -> Iterator[Container]:
    with Container(f"sockpool-deb-{os.getpid()}") as container:
        container.put_files({IN_MACHINE_DEB: deb.read_bytes()})
        # The host's tree is a Docker image's: its policy-rc.d (exit 101) forbids maintainer
        # scripts to start anything. A booted machine has none; this one must not either.
        container.remove(POLICY_RC_D)
        container.put_files({DROP_IN: listen_on(("127.0.0.1", PORT))})
        yield container


@pytest.fixture(scope="module")
def installed(machine: Container) -> str:
    """apt's output from installing the package."""
    done = apt(machine, "install", IN_MACHINE_DEB)
    return done.stdout + done.stderr


@pytest.fixture
def echo(machine: Container) -> Unit:
    return Unit(machine, "sockpool-echo")


def apt(machine: Container, *args: str) -> subprocess.CompletedProcess[str]:
    return machine.run("apt-get", "-y", "-q", *args, env=APT_ENV, timeout=300)


def answers(data: bytes) -> bytes:
    return request(ADDRESS, data)


def refused() -> bool:
    try:
        with socket.create_connection(ADDRESS, timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def tail_journal(machine: Container) -> str:
    unit = "sockpool-echo.service"
    return machine.run("journalctl", "--no-pager", "-n", "25", "-u", unit, check=False).stdout


def socket_state(machine: Container) -> dict[str, str]:
    out = machine.systemctl(
        "show", "-p", "ActiveState", "-p", "InvocationID", "-p", "NRefused", "sockpool-echo.socket"
    )
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def catalog_entry(message_id: str, identifier: str = "sockpool-echo") -> list[str]:
    """The non-blank lines of the catalog entry, as journalctl -x shows them for the unit."""
    blocks = re.split(r"^-- ", CATALOG.read_text(), flags=re.MULTILINE)
    (entry,) = [b for b in blocks if b.startswith(message_id)]
    lines = entry.splitlines()[1:]
    text = [line.replace("@SYSLOG_IDENTIFIER@", identifier).strip() for line in lines]
    return [line for line in text if line]


def test_install_enables_and_starts_the_socket_only(
    machine: Container, installed: str, echo: Unit
) -> None:
    status = machine.run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Version}", "sockpool")
    assert status.stdout == f"ii {_version()}"
    assert machine.systemctl("is-enabled", echo.socket).strip() == "enabled"
    assert machine.systemctl("is-active", echo.socket).strip() == "active"
    assert machine.show(echo.service, "ActiveState") == "inactive", "installing started it"
    # The package's own unit says 7007; the admin's drop-in (kept by the install) moved it.
    assert SHIPPED_LISTEN in machine.run("cat", "/lib/systemd/system/sockpool-echo.socket").stdout
    assert machine.show(echo.socket, "Listen") == f"127.0.0.1:{PORT} (Stream)"
    # The templates are installed, and nothing of theirs is enabled.
    for template in ("sockpool@.socket", "sockpool@.service"):
        state = machine.systemctl("is-enabled", template, check=False).strip()
        # "indirect": the service template's [Install] only has Also= its socket.
        assert state in ("disabled", "indirect"), f"{template}: {state}"
    wants = machine.run("ls", "/etc/systemd/system/sockets.target.wants").stdout.split()
    assert [w for w in wants if w.startswith("sockpool")] == ["sockpool-echo.socket"]


def test_the_socket_answers_and_the_service_appears_on_first_use(
    installed: str, echo: Unit
) -> None:
    assert echo.state() == "inactive"
    assert answers(b"hello from the package\n") == b"hello from the package\n"
    echo.wait_running()
    assert "path=/usr/bin/sockpool " in echo.prop("ExecStart")
    assert answers(b"again\n") == b"again\n"


def test_journalctl_x_explains_records_with_the_catalog(
    machine: Container, installed: str, echo: Unit
) -> None:
    if echo.state() != "active":
        answers(b"wake up\n")
        echo.wait_running()
    machine.run("journalctl", "--sync")
    out = machine.run("journalctl", "--no-pager", "-x", "-u", echo.service).stdout
    explained = [line.removeprefix("░░").strip() for line in out.splitlines()]
    for event in (Event.STARTED, Event.READY):
        for line in catalog_entry(event.value):
            assert line in explained, f"journalctl -x does not show {line!r} for {event.name}"


def test_reinstall_under_load_restarts_the_service_and_refuses_nothing(
    machine: Container, installed: str, echo: Unit
) -> None:
    answers(b"warm up\n")
    old_pid = echo.wait_running()
    before = socket_state(machine)
    with steady_load(ADDRESS, seconds=240) as load:
        load.progress(30)
        apt(machine, "install", "--reinstall", IN_MACHINE_DEB)
        load.progress(30)
    assert load.done == load.ok, load.summary()
    assert load.ok >= 60
    new_pid = echo.wait_running()
    assert new_pid != old_pid, "the running service was not restarted by the upgrade"
    after = socket_state(machine)
    assert after["ActiveState"] == "active"
    assert after["InvocationID"] == before["InvocationID"], "the socket was restarted"
    assert after["NRefused"] == "0"


def test_reinstall_leaves_a_stopped_service_stopped(
    machine: Container, installed: str, echo: Unit
) -> None:
    machine.systemctl("stop", echo.service)
    machine.systemctl("reset-failed", echo.service, check=False)  # how it stopped is not the point
    assert echo.state() == "inactive"
    apt(machine, "install", "--reinstall", IN_MACHINE_DEB)
    assert echo.state() == "inactive", "the upgrade started a service that was not running"
    assert machine.systemctl("is-active", echo.socket).strip() == "active"
    assert answers(b"still here\n") == b"still here\n"
    echo.wait_running()


def test_the_flask_example_serves_through_sockpool_web(machine: Container, installed: str) -> None:
    """README's "The Flask example under systemd", as an admin follows it with the package
    installed: the app in /srv/flask_app with a venv that sees the package's sockpool,
    /etc/sockpool/web.toml, the example's drop-ins, `systemctl enable --now`."""
    import flask

    app_dir = "/srv/flask_app"
    machine.put_files(
        {
            f"{app_dir}/app.py": (FLASK_EXAMPLE / "app.py").read_bytes(),
            "/etc/sockpool/web.toml": (FLASK_EXAMPLE / "web.toml").read_bytes(),
        }
    )
    for drop_in in ("sockpool@web.socket.d", "sockpool@web.service.d"):
        machine.put_tree(FLASK_EXAMPLE / drop_in, f"/etc/systemd/system/{drop_in}")
    # Not the example's 8080: the machines share the host's network.
    machine.put_files(
        {"/etc/systemd/system/sockpool@web.socket.d/zz-test.conf": listen_on(FLASK_ADDRESS)}
    )
    machine.run("python3", "-m", "venv", "--system-site-packages", f"{app_dir}/venv")
    purelib = machine.run(
        f"{app_dir}/venv/bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
    ).stdout.strip()
    site = Path(flask.__file__).resolve().parent.parent
    for entry in site.iterdir():
        name = entry.name.lower()
        if any(name == p or name.startswith(p + "-") for p in FLASK_PACKAGES):
            machine.put_tree(entry, f"{purelib}/{entry.name}")
    machine.systemctl("daemon-reload")
    try:
        machine.systemctl("enable", "--now", "sockpool@web.socket")
        web = Unit(machine, "sockpool@web")
        answer = request(FLASK_ADDRESS, b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        assert answer.startswith((b"HTTP/1.0 200 ", b"HTTP/1.1 200 ")), answer
        assert answer.endswith(b"hello from Flask under sockpool\n")
        web.wait_running()
        assert f"path={app_dir}/venv/bin/python " in web.prop("ExecStart")
    finally:  # the admin takes the example away again: the purge test counts what is left
        machine.systemctl("disable", "--now", "sockpool@web.socket", "sockpool@web.service")
        machine.run("rm", "-rf", app_dir, "/etc/sockpool/web.toml")
        machine.run("sh", "-c", "rm -rf /etc/systemd/system/sockpool@web.*.d")
        machine.systemctl("daemon-reload")


def test_purge_stops_and_removes_everything(machine: Container, installed: str, echo: Unit) -> None:
    if echo.state() != "active":
        answers(b"wake up\n")
    echo.wait_running()
    listed = machine.run("dpkg-query", "-L", "sockpool").stdout.split("\n")
    files = [f for f in listed if f and machine.run("test", "-d", f, check=False).returncode != 0]
    assert "/usr/bin/sockpool" in files
    assert "/usr/lib/systemd/catalog/sockpool.catalog" in files
    assert Event.READY.value in machine.run("journalctl", "--list-catalog").stdout

    apt(machine, "purge", "sockpool")

    status = machine.run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "sockpool", check=False)
    assert status.stdout.strip() in ("", "un", "pn"), status.stdout
    wait_until(refused, "the echo port to refuse connections", timeout=10)
    for unit in (echo.socket, echo.service):
        state = machine.show(unit, "ActiveState")
        assert state == "inactive", f"{unit} is {state} after the purge:\n{tail_journal(machine)}"
        assert machine.show(unit, "LoadState") == "not-found", unit
    processes = machine.run("ps", "-eo", "args=").stdout.splitlines()
    assert not [p for p in processes if "sockpool" in p], processes
    existing = 'for f; do if [ -e "$f" ] || [ -L "$f" ]; then echo "$f"; fi; done'
    left = machine.run("sh", "-c", existing, "sh", *files).stdout.split()
    assert left == [], f"purge left package files behind: {left}"
    # ...nor the byte code py3compile made at installation.
    package_dir = "/usr/lib/python3/dist-packages/sockpool"
    assert machine.run("test", "-e", package_dir, check=False).returncode != 0, package_dir
    # Enablement symlinks and deb-systemd-helper's state: gone. Only the admin's drop-in stays.
    search = "/etc/systemd /var/lib/systemd/deb-systemd-helper-enabled"
    found = machine.run(
        "sh", "-c", f"find {search} -name '*sockpool*' -print", check=False
    ).stdout.split()
    assert found == [os.path.dirname(DROP_IN)], found
    # The systemd package's trigger dropped the catalog's entries from journalctl's database.
    catalog = machine.run("journalctl", "--list-catalog").stdout
    assert Event.READY.value not in catalog
