"""Several sockets, each named by FileDescriptorName=, routed to their own handlers."""

from __future__ import annotations

import pytest

from conftest import MakeInstance
from sockpool.events import Event
from support import request

pytestmark = pytest.mark.system

MAIN_V4, MAIN_V6, ADMIN = ("127.0.0.1", 7108), ("::1", 7108), ("127.0.0.1", 7109)
CONFIG = """\
handler = "sockpool.handlers:echo"
workers = 2

[listeners.admin]  # async, beside a sync one: asyncio runs under MemoryDenyWriteExecute= too
handler = "sockpool.handlers:http_hello_async"
"""
# The instance's own socket gets two addresses; both carry its name (FileDescriptorName=%i).
SOCKET = f"""\
[Socket]
ListenStream=
ListenStream={MAIN_V4[0]}:{MAIN_V4[1]}
ListenStream=[{MAIN_V6[0]}]:{MAIN_V6[1]}
"""
# A name of its own needs a socket unit of its own, which feeds the same service.
ADMIN_SOCKET = f"""\
[Socket]
ListenStream={ADMIN[0]}:{ADMIN[1]}
FileDescriptorName=admin
Service=sockpool@dual.service
IPAddressAllow=localhost
IPAddressDeny=any
"""
SERVICE = """\
[Unit]
Requires=sockpool-dual-admin.socket
After=sockpool-dual-admin.socket
"""
HTTP = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def test_each_named_socket_gets_its_own_handler(instance: MakeInstance) -> None:
    unit = instance(
        "dual",
        CONFIG,
        socket=SOCKET,
        service=SERVICE,
        units={"sockpool-dual-admin.socket": ADMIN_SOCKET},
    )
    unit.machine.systemctl("start", unit.socket, "sockpool-dual-admin.socket")

    assert request(ADMIN, HTTP).endswith(b"\r\n\r\nhello\n")
    assert request(MAIN_V4, HTTP) == HTTP
    assert request(MAIN_V6, b"over IPv6\n") == b"over IPv6\n"
    assert request(ADMIN, HTTP).startswith(b"HTTP/1.1 200 OK\r\n")

    started = unit.journal(f"MESSAGE_ID={Event.STARTED.value}")
    assert "admin on" in started[-1]["MESSAGE"]


def test_unix_clients_credentials_reach_the_handler(instance: MakeInstance) -> None:
    """The default listener is AF_UNIX: a handler sees who connected (uid, gid, pid)."""
    unit = instance("peer", 'handler = "sockpool_systemtest:peer"\nworkers = 1\n')
    unit.start_socket()
    client = (
        "import os, socket\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect('/run/sockpool/peer.sock')\n"
        "print(os.getpid(), s.recv(100).decode(), end='')\n"
    )
    as_www_data = ["setpriv", "--reuid=33", "--regid=33", "--clear-groups"]
    out = unit.machine.run(*as_www_data, "/usr/bin/python3", "-c", client).stdout
    pid, answer = out.split(" ", 1)
    assert answer == f"pid={pid} uid=33 gid=33\n"
