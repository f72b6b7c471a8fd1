"""Behind a real HAProxy (Debian's 2.6): two instances, `sockpool@a` and `sockpool@b`, set up
as README's "More than one machine" says, with HAProxy's configuration from there too.

The README's example has one instance `sockpool@web` on each of two machines; here the two
machines are two instances on one, so only addresses change: each instance's own socket is
named `web` (FileDescriptorName=) for the README's `[listeners.web]`, and HAProxy's servers
`web1` and `web2` become `a` and `b` on loopback ports.

Under client load through HAProxy, restarting and reloading each instance in turn fails no
request, and HAProxy drains an instance that is stopping. SIGKILLing a whole instance fails
at most the requests that instance held, with and without HAProxy's retries and redispatch
(a second frontend and backend without them): the counts are printed.

PROXY: with PROXY True, HAProxy sends `send-proxy-v2`, the instances read it
(`proxy_protocol = "v2"`), and every answer must name the client's own address and port.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import harness
from conftest import MakeInstance
from harness import Load, readme_block, replaced
from nspawn import Container
from support import CLIENT_TIMEOUT, Held, Unit, wait_until

pytestmark = pytest.mark.system

# The PROXY protocol end to end: send-proxy-v2 on HAProxy's server lines, proxy_protocol = "v2"
# in sockpool. False runs the same test without it (the README's blocks less those words).
PROXY = True
PROXY_V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"  # a v2 header, LOCAL command

HOST = "127.0.0.1"
# name: (traffic port, agent port, the README's server it stands for)
INSTANCES = {"a": (7301, 7302, "web1 10.0.0.11:8080"), "b": (7303, 7304, "web2 10.0.0.12:8080")}
FRONTEND = (HOST, 7305)  # retries 3, option redispatch (the README's)
BARE = (HOST, 7306)  # the same without either
STATS = (HOST, 7307)
HAPROXY_CFG = "/etc/haproxy/sockpool-test.cfg"
HAPROXY_UNIT = "sockpool-test-haproxy"
POLICY_RC_D = "/usr/sbin/policy-rc.d"


# -- the README's configuration, on loopback -----------------------------------------------


def instance_files(name: str) -> dict[str, str]:
    """config, socket drop-in, service drop-in and the agent's socket unit of one instance."""
    web, agent, _ = INSTANCES[name]
    config = replaced(
        readme_block("web.toml"),
        {
            '"myapp.server:handle"': '"sockpool_systemtest:whoami"',
            "workers = 4": "workers = 2",
            '["10.0.0.5"]': f'["{HOST}"]',
        },
    )
    if not PROXY:
        config = "".join(ln for ln in config.splitlines(True) if not ln.startswith("proxy_"))
    allow = {"IPAddressAllow=10.0.0.5": "IPAddressAllow=localhost"}
    socket_drop_in = replaced(
        readme_block("web.socket drop-in"), {"ListenStream=8080": f"ListenStream={HOST}:{web}"}
    )
    agent_socket = replaced(
        readme_block("agent socket"),
        {
            "instance web,": f"instance {name},",
            "ListenStream=8081": f"ListenStream={HOST}:{agent}",
            "sockpool@web.service": f"sockpool@{name}.service",
            **allow,
        },
    )
    return {
        "config": config,
        "socket": replaced(socket_drop_in, allow) + "FileDescriptorName=web\n",
        "service": replaced(
            readme_block("web.service drop-in"),
            {"sockpool-web-agent.socket": f"sockpool-{name}-agent.socket"},
        ),
        "agent": agent_socket,
    }


def haproxy_cfg() -> str:
    """The README's text with loopback addresses, and a copy of its frontend and backend
    without retries and redispatch, and a stats socket to watch the servers."""
    text = readme_block("haproxy.cfg")
    if not PROXY:
        text = replaced(text, {" send-proxy-v2": ""})
    text = replaced(text, {"bind 10.0.0.5:80": f"bind {HOST}:{FRONTEND[1]}"})
    for name, (web, agent, server) in INSTANCES.items():
        ours = {server: f"{name} {HOST}:{web}", "agent-port 8081": f"agent-port {agent}"}
        (line,) = [ln for ln in text.splitlines(True) if server in ln]
        text = text.replace(line, replaced(line, ours))
    balancing = text[text.index("frontend web\n") :]
    bare = replaced(
        balancing,
        {
            "frontend web\n": "frontend bare\n",
            f"bind {HOST}:{FRONTEND[1]}": f"bind {HOST}:{BARE[1]}",
            "default_backend sockpool\n": "default_backend bare\n",
            "backend sockpool\n": "backend bare\n    retries 0\n    no option redispatch\n",
        },
    )
    return f"global\n    stats socket ipv4@{HOST}:{STATS[1]} level admin\n\n{text}\n{bare}"


# -- HAProxy's view ------------------------------------------------------------------------


def servers() -> dict[tuple[str, str], dict[str, str]]:
    """HAProxy's `show stat`, by (backend, server)."""
    with harness.connect(STATS, CLIENT_TIMEOUT) as sock:
        sock.sendall(b"show stat\n")
        lines = harness.read_to_eof(sock).decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {(r["pxname"], r["svname"]): r for r in rows if r.get("svname") in INSTANCES}


def seen_as(name: str, status: str) -> bool:
    """Both backends see the server so: UP with a weight above 0, or DRAIN (which HAProxy
    shows as "DRAIN (agent)" when the agent said it)."""
    rows = [r for (_, server), r in servers().items() if server == name]
    if status == "UP":
        return len(rows) == 2 and all(r["status"] == "UP" and int(r["weight"]) for r in rows)
    return len(rows) == 2 and all(r["status"].split()[0] == status for r in rows)


# -- clients -------------------------------------------------------------------------------


@dataclass
class Whoami(Load):
    """Load's clients through HAProxy: each answer names the unit that served it and the
    address it saw, then echoes the line. With PROXY, that address must be the client's own."""

    def _exchange(self, payload: bytes) -> bytes:
        with harness.connect(self.address, self.timeout) as sock:
            own = f"{HOST}:{sock.getsockname()[1]}".encode()
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = harness.read_to_eof(sock)
        unit, peer, echoed = [*answer.split(b" ", 2), b"", b""][:3]
        if PROXY and answer and peer != own:  # (no answer: a failure of its own kind)
            return b"peer " + peer + b" is not " + own
        self._served_by(unit.decode(errors="replace"))
        return echoed

    @property
    def failed(self) -> int:
        return self.done - self.ok


def steady(address: tuple[str, int]) -> Whoami:
    return Whoami(address, clients=4, seconds=120, pause=0.005, timeout=CLIENT_TIMEOUT)


def held_in(name: str) -> Held:
    """A request in flight in a worker of instance `name`, straight to its socket."""
    held = Held((HOST, INSTANCES[name][0]))
    held.send((PROXY_V2_LOCAL if PROXY else b"") + b"hold\n")
    assert held.receive(5) == b"held\n"
    return held


def in_flight(name: str) -> int:
    """Connections instance `name` holds (accepted, not yet closed by it): the established
    ones on its port that a process of it has a descriptor for. One still in the listening
    socket's queue, which outlives the instance, has none yet (inode 0). (Not the queue's
    length subtracted: it also counts a connection reset while queued, such as a health
    check that gave up on the frozen instance, which is in no state listed here.) Exact
    only while the instance is frozen."""
    local = f"0100007F:{INSTANCES[name][0]:04X}"
    held = 0
    with open("/proc/net/tcp") as table:  # the machine shares this host's network
        for line in list(table)[1:]:
            fields = line.split()
            # ESTABLISHED, CLOSE_WAIT (the client sent all); fields[9]: the socket's inode
            if fields[1] == local and fields[3] in ("01", "08"):
                held += fields[9] != "0"
    return held


# -- the test ------------------------------------------------------------------------------


@pytest.fixture
def balanced(machine: Container, instance: MakeInstance) -> Iterator[dict[str, Unit]]:
    if machine.run("test", "-x", "/usr/sbin/haproxy", check=False).returncode != 0:
        pytest.skip("haproxy is not installed (scripts/ensure-deps system)")
    machine.remove(POLICY_RC_D)  # the host image's: no service may start while it is there
    units = {}
    for name in INSTANCES:
        files = instance_files(name)
        units[name] = instance(
            name,
            files["config"],
            socket=files["socket"],
            service=files["service"],
            units={f"sockpool-{name}-agent.socket": files["agent"]},
        )
        machine.systemctl("start", units[name].socket, f"sockpool-{name}-agent.socket")
    machine.put_files({HAPROXY_CFG: haproxy_cfg()})
    machine.run("haproxy", "-c", "-q", "-f", HAPROXY_CFG)
    machine.run(
        "systemd-run", f"--unit={HAPROXY_UNIT}", "-p", "Type=notify",
        "/usr/sbin/haproxy", "-Ws", "-f", HAPROXY_CFG,
    )  # fmt: skip
    try:
        # The agent checks' first connections start both instances (socket activation).
        for name in INSTANCES:
            wait_until(lambda name=name: seen_as(name, "UP"), f"HAProxy to see {name} up")
        yield units
    finally:
        machine.systemctl("stop", f"{HAPROXY_UNIT}.service", check=False)
        machine.systemctl("reset-failed", f"{HAPROXY_UNIT}.service", check=False)


def test_restarts_reloads_and_a_killed_instance_behind_haproxy(
    machine: Container, balanced: dict[str, Unit]
) -> None:
    # The agent's maxconn (max_connections in the README's TOML) reached HAProxy.
    wait_until(lambda: {r["slim"] for r in servers().values()} == {"400"}, "maxconn 400")
    with steady(FRONTEND) as load, steady(BARE) as bare:
        load.progress(30)
        bare.progress(30)
        # A restart, with a request of its own in flight: HAProxy drains the instance while
        # it stops (the agent says so), and the request in flight is answered in full.
        for name, unit in balanced.items():
            old = unit.main_pid()
            held = held_in(name)
            machine.systemctl("restart", "--no-block", unit.service)
            wait_until(lambda name=name: seen_as(name, "DRAIN"), f"HAProxy to drain {name}")
            held.send(b"last words\n")
            assert held.finish().endswith(b" last words\n")
            wait_until(lambda unit=unit, old=old: unit.main_pid() not in (0, old), "a new pid")
            wait_until(lambda name=name: seen_as(name, "UP"), f"HAProxy to see {name} back")
            load.progress(30)
        for name, unit in balanced.items():
            machine.systemctl("reload", unit.service)
            wait_until(lambda name=name: seen_as(name, "UP"), f"HAProxy to see {name} up")
            load.progress(30)
    print(
        f"\nrestart a, b and reload a, b under load: with retries+redispatch "
        f"{load.failed} failed of {load.done} ({dict(load.served)}); without "
        f"{bare.failed} failed of {bare.done} ({dict(bare.served)})"
    )
    for clients in (load, bare):
        assert clients.failed == 0, clients.summary()
        assert set(clients.served) == {"sockpool@a.service", "sockpool@b.service"}

    # SIGKILL to the whole of instance a, once through each frontend. It is frozen first
    # (SIGSTOP to all its processes) to count what it holds; what waits in its socket's
    # queue is served by its successor (Restart=on-failure).
    unit = balanced["a"]
    for address, how in ((FRONTEND, "retries 3, redispatch"), (BARE, "no retries, no redispatch")):
        with steady(address) as clients:
            clients.progress(30)
            old = unit.main_pid()
            machine.systemctl("kill", "-s", "STOP", unit.service)
            held = in_flight("a")
            machine.systemctl("kill", "-s", "KILL", unit.service)
            wait_until(lambda old=old: unit.main_pid() not in (0, old), "a restarted", 60)
            wait_until(lambda: seen_as("a", "UP"), "HAProxy to see a back")
            clients.progress(30)
        print(
            f"SIGKILL of sockpool@a ({how}): {clients.failed} failed of {clients.done}, "
            f"{held} in flight in a; {clients.summary()}"
        )
        assert clients.failed <= held, clients.summary()
