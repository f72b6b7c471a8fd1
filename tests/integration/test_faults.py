"""Faults the dispatcher must survive (issue 11): fork failure at a real process limit, and
handler modules that fork or block at import. The pool keeps serving, the operator gets one
clear line, and nothing hangs.

The process limit is a real cgroup v1 `pids` controller: sockpool is moved into a child
cgroup of its own by a wrapper before it execs, so its workers are counted there. Sync
workers are single-threaded and the dispatcher is one thread, so a pool of N workers holds
N + 1 tasks.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import Load, Service, free_port, proc_stat, request, wait_until

ECHO = "sockpool.handlers:echo"
PIDS = Path("/sys/fs/cgroup/pids")
FORK_FAILED = "cannot start a worker: fork failed: at a process limit"
GAVE_UP = "workers keep failing to start"
RELOAD_FAILED = "reload failed, still serving the old generation"


def tcp() -> str:
    return f"127.0.0.1:{free_port()}"


# -- a real process limit ----------------------------------------------------------------------


@dataclass
class PidsCgroup:
    path: Path

    def limit(self, tasks: int) -> None:
        (self.path / "pids.max").write_text(f"{tasks}\n")

    def current(self) -> int:
        return int((self.path / "pids.current").read_text())

    def procs(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    @property
    def wrapper(self) -> list[str]:
        """Runs between systemd-socket-activate and sockpool: joins the cgroup, then execs
        sockpool in the same process, so LISTEN_PID still names it."""
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh"]


@pytest.fixture
def pids_cgroup() -> Iterator[PidsCgroup]:
    """A child cgroup of the pids hierarchy, removed afterwards. Ask for it before `serve`,
    so that the services are stopped before it is emptied and removed."""
    if not (PIDS / "cgroup.procs").is_file():
        pytest.skip(f"no cgroup v1 pids hierarchy at {PIDS}")
    path = PIDS / f"sockpool-test-{secrets.token_hex(4)}"
    try:
        path.mkdir()
        cgroup = PidsCgroup(path)
        cgroup.limit(1000)  # writable, or skip
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.rmdir()
        pytest.skip(f"cannot make a pids cgroup under {PIDS}: {exc.strerror}")
    try:
        yield cgroup
    finally:
        for pid in cgroup.procs():  # only this test's processes can be in there
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not cgroup.procs(), f"{path} to empty")
        path.rmdir()


# -- what the user sees ------------------------------------------------------------------------


def live_in_session(sid: int) -> list[int]:
    """Processes of the session systemd-socket-activate started, zombies aside."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = proc_stat(entry.name)
            except OSError:
                continue  # gone meanwhile
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def children(pid: int) -> dict[int, str]:
    """The children of `pid` and their states ("Z": exited, not yet reaped)."""
    try:
        pids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return {}
    found = {}
    for child in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            found[int(child)] = proc_stat(child)[0]
    return found


def gave_up(service: Service) -> str:
    """Exit 70, the reason in one line, no traceback, and no worker left behind."""
    code = service.wait(30)
    log = service.output()
    assert code == 70, log
    assert "Traceback" not in log, log
    assert len([ln for ln in log.splitlines() if GAVE_UP in ln]) == 1, log
    wait_until(lambda: not live_in_session(service.pid), "the workers to be gone")
    assert "READY=1" not in service.read_notifications()
    return log


def reload(service: Service) -> None:
    """SIGHUP, and wait until the dispatcher has read its configuration file: it logs
    "reloading" right after, so the file may be rewritten from then on."""
    begun = service.output().count("reloading: re-reading")
    service.signal(signal.SIGHUP)
    wait_until(
        lambda: service.output().count("reloading: re-reading") > begun, "the reload to begin"
    )


def answered(load: Load) -> None:
    assert load.ok and load.refused == load.reset == load.wrong == 0, load.summary()


# -- 1. fork() fails at a process limit --------------------------------------------------------


def test_fork_failure_at_start_backs_off_then_exits_70(pids_cgroup, serve) -> None:
    pids_cgroup.limit(2)  # the dispatcher and one worker of the three asked for
    service = serve(
        ["--workers=3", ECHO], listen=[tcp()], wrapper=pids_cgroup.wrapper, wait_ready=False
    )
    log = gave_up(service)
    failures = [ln for ln in log.splitlines() if FORK_FAILED in ln]
    assert len(failures) == 1, log  # one line, however often the fork is retried
    assert "pids.max" in failures[0], failures
    assert "worker" in log and "ready (capacity " in log  # the one that fit did start


def test_fork_failure_during_reload_keeps_the_old_generation(pids_cgroup, serve) -> None:
    pids_cgroup.limit(3)
    service = serve(["--workers=2", ECHO], listen=[tcp()], wrapper=pids_cgroup.wrapper)
    assert pids_cgroup.current() == 3, "the serving generation is exactly at the limit"
    serving = set(service.workers())
    with Load(service.address, clients=2, pause=0.01) as load:
        load.progress(20)
        service.signal(signal.SIGHUP)
        wait_until(lambda: FORK_FAILED in service.output(), "the new generation's fork to fail")
        load.progress(20)  # answered while the reload retries
        wait_until(lambda: RELOAD_FAILED in service.output(), "the reload to fail", timeout=20)
        load.progress(20)  # and after
    answered(load)
    log = service.output()
    assert service.alive(), log
    assert "Traceback" not in log, log
    assert set(service.workers()) == serving
    failed = [ln for ln in log.splitlines() if RELOAD_FAILED in ln]
    assert len(failed) == 1 and "fork failed" in failed[0], log
    notes = service.read_notifications()
    assert "READY=1" in notes[notes.index("RELOADING=1") :], notes  # reload over, still ready
    assert request(service.address, b"still serving") == b"still serving"


# -- 2. a handler module that forks at import --------------------------------------------------


def test_module_that_forks_at_import_still_serves(serve) -> None:
    service = serve(["--workers=2", "fork_at_import:handle"], listen=[tcp()])
    wait_until(lambda: any("workers 2/2" in s for s in service.statuses()), "STATUS 2/2")
    with Load(service.address, clients=4, limit=50) as load:
        load.join()
    assert load.ok == 200, load.summary()
    answered(load)
    workers = service.workers()
    assert len(workers) == 2
    copies = {w: children(w) for w in workers}
    assert all(copies.values()), f"the module did not fork: {copies}"
    # The copies the import made have exited: none of them serves beside its worker.
    wait_until(
        lambda: all(set(children(w).values()) == {"Z"} for w in workers), "the copies to exit"
    )
    log = service.output()
    assert "Traceback" not in log, log
    said = "reported ready twice"
    twice = [ln.split(said)[0].split("worker ")[-1] for ln in log.splitlines() if said in ln]
    assert len(twice) == len(set(twice)), log  # if said at all, once per worker


# -- 3. a handler module that blocks forever at import -----------------------------------------


def test_module_that_blocks_at_import_fails_the_start_after_start_timeout(serve) -> None:
    service = serve(
        ["--workers=2", "--start-timeout=2", "block_at_import:handle"],
        listen=[tcp()],
        wait_ready=False,
    )
    log = gave_up(service)
    late = [ln for ln in log.splitlines() if "not ready within start_timeout=2s" in ln]
    assert len(late) > 2, log  # the first two, then retries after backoff
    assert all("block_at_import:handle" in ln for ln in late), late


def test_a_stop_while_imports_block_ends_without_waiting_for_them(serve) -> None:
    """A worker still importing reads its stop only once the import ends, which may be
    never: it gets a SIGTERM too, and dies of it, as it holds nothing. Not the
    graceful_timeout (here 300 s), nor the start_timeout (here 300 s) either."""
    service = serve(
        ["--workers=2", "--start-timeout=300", "--graceful-timeout=300", "block_at_import:handle"],
        listen=[tcp()],
        wait_ready=False,
    )
    wait_until(lambda: len(service.workers()) == 2, "two workers importing")
    service.signal(signal.SIGTERM)
    assert service.wait() == 0, service.output()
    assert service.output().count("killed by signal SIGTERM") == 2


def test_workers_whose_dispatcher_was_killed_while_they_imported_exit_quietly(
    serve, tmp_path: Path
) -> None:
    """Orphaned, they finish importing and find nobody to say READY to: that is no
    'worker failed' with a BrokenPipeError's traceback, one per worker."""
    gate = tmp_path / "gate"
    service = serve(
        ["--workers=2", "gated_import:handle"],
        listen=[tcp()],
        wait_ready=False,
        env={"GATE": str(gate)},
    )
    workers = wait_until(lambda: len(service.workers()) == 2 and service.workers(), "importing")
    os.kill(service.pid, signal.SIGKILL)
    service.wait()
    gate.touch()
    for pid in workers:  # reparented: not our children, so /proc says when they are gone
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), f"worker {pid} to exit")
    assert "Traceback" not in service.output() and "worker failed" not in service.output()


def write_config(path: Path, handler: str, start_timeout: float) -> None:
    path.write_text(f'handler = "{handler}"\nworkers = 2\nstart_timeout = {start_timeout}\n')


def test_reload_to_a_blocking_module_fails_and_a_fixed_one_reloads(serve, tmp_path) -> None:
    config = tmp_path / "sockpool.toml"
    write_config(config, ECHO, 2)
    service = serve([f"--config={config}"], listen=[tcp()])
    with Load(service.address, clients=2, pause=0.01) as load:
        load.progress(20)
        write_config(config, "block_at_import:handle", 2)
        reload(service)
        wait_until(lambda: "not ready within start_timeout=2s" in service.output(), "a timeout")
        load.progress(20)  # answered while the reload hangs
        wait_until(lambda: RELOAD_FAILED in service.output(), "the reload to fail", timeout=25)
        load.progress(20)
        write_config(config, ECHO, 2)
        reload(service)
        wait_until(lambda: "reloaded: generation 3 serves" in service.output(), "generation 3")
        load.progress(20)
    answered(load)
    log = service.output()
    assert "Traceback" not in log, log
    [failed] = [ln for ln in log.splitlines() if RELOAD_FAILED in ln]
    assert "block_at_import:handle" in failed
    assert service.read_notifications().count("READY=1") == 3  # start, failed reload, reload


def test_newer_reload_supersedes_one_still_starting(serve, tmp_path) -> None:
    config = tmp_path / "sockpool.toml"
    write_config(config, ECHO, 60)  # the hung reload would take a minute to time out
    service = serve([f"--config={config}"], listen=[tcp()])
    serving = set(service.workers())
    with Load(service.address, clients=2, pause=0.01) as load:
        load.progress(20)
        write_config(config, "block_at_import:handle", 60)
        reload(service)
        wait_until(lambda: len(service.workers()) == 4, "the new generation's workers")
        hung = set(service.workers()) - serving
        load.progress(20)
        write_config(config, ECHO, 60)
        reload(service)
        wait_until(lambda: "reloaded: generation 3 serves" in service.output(), "generation 3")
        load.progress(20)
    answered(load)
    wait_until(lambda: not hung & set(service.workers()), "the hung generation to be killed")
    wait_until(lambda: not serving & set(service.workers()), "the old generation to drain")
    log = service.output()
    assert "Traceback" not in log, log
    assert "not ready within start_timeout" not in log, log  # superseded, not timed out
    assert request(service.address, b"new generation") == b"new generation"
