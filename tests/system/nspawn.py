"""A disposable systemd machine for tests and benchmarks.

The host's PID 1 is not systemd, and booting systemd on the host's own tree would let its
boot-time cleanup loose on the host. So the container boots the host's root read-through:
a private mount namespace holds a tmpfs with an overlay (lower: the host's ``/``, upper: the
tmpfs), and ``systemd-nspawn -b`` boots that. Everything the container writes dies with the
namespace. It shares the host's network, so tests reach its sockets on 127.0.0.1 directly.

Used by tests/system (one container per session) and by bench/ (imported by path), so it
depends on nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import io
import os
import re
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["Container", "ContainerError", "NotTheContainer", "unavailable_reason"]

NSPAWN = "/usr/bin/systemd-nspawn"
PROPAGATE_DIR = Path("/run/systemd/nspawn/propagate")
PACKAGE_DIR = "/usr/lib/python3/dist-packages"
UNIT_DIR = "/usr/lib/systemd/system"
ADMIN_UNIT_DIR = "/etc/systemd/system"
CATALOG_DIR = "/usr/lib/systemd/catalog"
MAN_DIR = "/usr/share/man"

# Units the host's tree has enabled that have no business in a test machine: postgres
# would take port 5432 on the shared network, nginx port 80 (haproxy and nginx are there for
# the tests that run them themselves), timers would run apt and fstrim.
DEFAULT_MASKS = (
    "postgresql.service",
    "haproxy.service",
    "nginx.service",
    "postgresql@.service",
    "getty@.service",
    "console-getty.service",
    "systemd-timesyncd.service",
    "e2scrub_reap.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "man-db.timer",
    "systemd-tmpfiles-clean.timer",
)

# Runs as root in a fresh private mount namespace (unshare --mount --propagation private),
# so neither the tmpfs nor the overlay is visible to, or left behind on, the host.
# It first moves itself into cgroups of its own: with --keep-unit, nspawn builds the
# container's tree (payload/, supervisor/) below its current cgroup, and two containers
# started from the same one would share system.slice/*: each one's systemd would see the
# other's processes in its units ("Failed to dump process list: Input/output error") and
# stop or kill them with its own. Masks, the default target and the marker (a random token
# that only this container's tree has, see Container.run) go into the upper layer before the
# overlay is mounted.
_BOOT_SCRIPT = r"""#!/bin/bash
set -euo pipefail
base=$1 name=$2 uuid=$3 cgroups=$4; shift 4
for cgroup in $cgroups; do echo $$ > "$cgroup/cgroup.procs"; done
mount -t tmpfs -o mode=0755 sockpool-nspawn "$base"
mkdir "$base/upper" "$base/work" "$base/root"
marker=$base/upper$SOCKPOOL_NSPAWN_MARKER
mkdir -p "$(dirname "$marker")"
printf '%s\n' "$SOCKPOOL_NSPAWN_TOKEN" > "$marker"
etc="$base/upper/etc/systemd/system"
mkdir -p "$etc"
ln -s /usr/lib/systemd/system/multi-user.target "$etc/default.target"
for unit in "$@"; do ln -s /dev/null "$etc/$unit"; done
mount -t overlay overlay \
  -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
exec systemd-nspawn -D "$base/root" --register=no --keep-unit --uuid="$uuid" \
  -M "$name" --console=pipe -b
"""

# Every command runs behind this guard, in the very namespaces nsenter put it in: unless the
# root there holds this container's token, it is not the container (nsenter can land in the
# host's namespaces, as it did in a chroot), and the command is refused, not run.
MARKER = "/etc/sockpool-nspawn.token"
_REFUSED = 97
_GUARD = (
    'read -r token 2>/dev/null < "$SOCKPOOL_NSPAWN_MARKER" '
    '&& [ "$token" = "$SOCKPOOL_NSPAWN_TOKEN" ] '
    '|| { echo "not the container: $SOCKPOOL_NSPAWN_MARKER lacks its token" >&2; '
    f"exit {_REFUSED}; }}; "
    'unset SOCKPOOL_NSPAWN_MARKER SOCKPOOL_NSPAWN_TOKEN; exec "$@"'
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")
_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_LOG_COLOR": "0",
}


class ContainerError(RuntimeError):
    """The container could not be booted or a command in it failed."""


class NotTheContainer(ContainerError):
    """A command would have run somewhere other than the container (the host, say): refused."""


def unavailable_reason() -> str | None:
    """Why no container can boot here, or None when one can.

    Checks the prerequisites only; a boot that fails despite them is an error, not a skip.
    """
    if not Path("/proc/self/ns/mnt").exists():
        return "not Linux"
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, mount namespaces)"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not found (util-linux)"
    if not os.access(NSPAWN, os.X_OK):
        return "systemd-nspawn not installed (scripts/ensure-deps system)"
    if not Path("/lib/systemd/systemd").exists():
        return "systemd is not installed on this tree"
    cgroups = _our_cgroups()
    if not cgroups or not all(os.access(c, os.W_OK) for c in cgroups):
        return "cannot make cgroups (no writable cgroup hierarchy)"
    filesystems = Path("/proc/filesystems").read_text()
    if "\toverlay\n" not in filesystems and not Path("/sys/module/overlay").exists():
        return "the kernel has no overlay filesystem"
    if _in_chroot():
        return "in a chroot (/ is not PID 1's root): nsenter could not reach the container's tree"
    return _probe_overlay()


def _in_chroot() -> bool:
    """/ is not PID 1's root (systemd's own test), or is no mount point at all."""
    try:
        ours, init = os.stat("/"), os.stat("/proc/1/root/")
        if (ours.st_dev, ours.st_ino) != (init.st_dev, init.st_ino):
            return True
    except OSError:  # PID 1 hidden or not ours to look at: judge by the mount table alone
        pass
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    return not any(line.split()[4] == "/" for line in mountinfo)


# The boot script's first steps, in a namespace that dies with it: what a chroot, a container
# without CAP_SYS_ADMIN or a kernel without overlay-on-this-root makes fail.
_PROBE = r"""set -e
mount -t tmpfs -o mode=0755 sockpool-probe "$1"
mkdir "$1/upper" "$1/work" "$1/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$1/upper,workdir=$1/work" "$1/root"
test -x "$1/root/lib/systemd/systemd"
"""


def _probe_overlay() -> str | None:
    with tempfile.TemporaryDirectory(prefix="sockpool-nspawn-probe-") as tmp:
        argv = ["unshare", "--mount", "--propagation", "private", "bash", "-c", _PROBE, "-", tmp]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return "a private mount namespace with an overlay of / took over 30 s"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return f"cannot make an overlay of / in a private mount namespace ({why})"
    return None


_PR_SET_PDEATHSIG = 1


def _poweroff_with_parent() -> Callable[[], None]:
    """A preexec_fn: if the process that booted the container dies (a killed test run),
    nspawn gets SIGTERM and powers the container off instead of leaking it. The signal
    survives the execs of unshare, bash and nspawn (none is setuid)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


def _is_container_init(pid: int) -> bool:
    """pid is still a systemd in a PID namespace other than ours (not a recycled pid)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        return comm == "systemd" and os.readlink(f"/proc/{pid}/ns/pid") != os.readlink(
            "/proc/self/ns/pid"
        )
    except OSError:
        return False


def _our_cgroups() -> list[Path]:
    """Our cgroup in each hierarchy systemd uses: cgroup2, and name=systemd (if mounted).

    Covers the unified, hybrid and legacy layouts.
    """
    v2 = Path("/sys/fs/cgroup/unified")
    if not (v2 / "cgroup.procs").exists():
        v2 = Path("/sys/fs/cgroup")
    mounts = {"0": v2, "name=systemd": Path("/sys/fs/cgroup/systemd")}
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        mount = mounts.get("0" if number == "0" else controllers)
        if mount is not None and (mount / "cgroup.procs").exists():
            found.append(mount / path.lstrip("/"))
    return found


def _remove_cgroup(top: Path) -> None:
    """rmdir a cgroup tree, leaves first; a cgroup still in use stays."""
    for path, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(path)


class Container:
    """A booted systemd in a throw-away overlay of the host's root (see the module doc).

    Use as a context manager, or call start() and stop(); stop() always cleans up. If the
    process dies without stop(), the container powers itself off: call start() from a
    thread that lives as long as the container (the kernel's parent-death signal is tied
    to the thread that forked).
    """

    def __init__(self, name: str, *, masks: Iterable[str] = DEFAULT_MASKS) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad machine name {name!r}")
        self.name = name
        self.masks = tuple(masks)
        self.console = ""  # what the container printed; kept after stop() for diagnosis
        self._proc: subprocess.Popen[bytes] | None = None
        self._leader: int | None = None
        self._dir: Path | None = None
        self._cgroups: list[Path] = []
        self._token = secrets.token_hex(16)

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def leader(self) -> int:
        """PID (in the host's namespace) of the container's systemd."""
        if self._leader is None:
            raise ContainerError(f"container {self.name} is not running")
        return self._leader

    def start(self, timeout: float = 30) -> Self:
        """Boot, and return once systemd reports running or degraded."""
        if self._proc is not None:
            raise ContainerError(f"container {self.name} already started")
        if reason := unavailable_reason():
            raise ContainerError(f"cannot boot a container here: {reason}")
        if (PROPAGATE_DIR / self.name).exists():
            raise ContainerError(
                f"{PROPAGATE_DIR / self.name} exists: a container named {self.name} "
                "is running, or one was not cleaned up"
            )
        self._dir = Path(tempfile.mkdtemp(prefix=f"sockpool-nspawn-{self.name}-"))
        script = self._dir / "boot.sh"
        script.write_text(_BOOT_SCRIPT)
        (self._dir / "fs").mkdir()
        try:
            unshare = ["unshare", "--mount", "--propagation", "private", "bash", str(script)]
            for parent in _our_cgroups():  # the boot script moves in before it execs nspawn
                (parent / self._dir.name).mkdir()
                self._cgroups.append(parent / self._dir.name)
            cgroups = " ".join(map(str, self._cgroups))
            args = [str(self._dir / "fs"), self.name, secrets.token_hex(16), cgroups, *self.masks]
            with open(self._dir / "console.log", "wb") as console:
                # A session of its own: the container must not get the terminal's signals.
                self._proc = subprocess.Popen(
                    [*unshare, *args],
                    env={**os.environ, **self._marker()},
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_poweroff_with_parent(),
                )
            self._wait_booted(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _marker(self) -> dict[str, str]:
        """Where the boot script writes the token, and what the guard expects there."""
        return {"SOCKPOOL_NSPAWN_MARKER": MARKER, "SOCKPOOL_NSPAWN_TOKEN": self._token}

    def _wait_booted(self, deadline: float) -> None:
        state = "no systemd yet"
        while time.monotonic() < deadline:
            self._check_alive()
            if self._leader is None:
                self._leader = self._find_leader()
            else:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
                if state in ("maintenance", "stopping", "offline"):
                    break
            time.sleep(0.2)
        raise ContainerError(f"container {self.name} did not boot: {state}\n{self._console()}")

    def _check_alive(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise ContainerError(
                f"systemd-nspawn exited with {self._proc.returncode}\n{self._console()}"
            )

    def _find_leader(self) -> int | None:
        """The nspawn child that has become systemd (nspawn execs it in a new PID namespace)."""
        assert self._proc is not None
        for task in Path(f"/proc/{self._proc.pid}/task").glob("*/children"):
            for pid in task.read_text().split():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
        return None

    def _console(self) -> str:
        if self._dir is not None:
            with contextlib.suppress(OSError):
                self.console = (self._dir / "console.log").read_text(errors="replace")
        return self.console[-4000:]

    def stop(self, timeout: float = 30) -> None:
        """Power the container off (SIGTERM to nspawn), harder if needed; remove its traces."""
        proc, leader, self._proc, self._leader = self._proc, self._leader, None, None
        if proc is not None:
            # nspawn: first SIGTERM = orderly poweroff, second = immediate termination.
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGTERM, 5)):
                if proc.poll() is None:
                    proc.send_signal(sig)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(wait)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if leader is not None and _is_container_init(leader):
                # nspawn died without it; SIGKILL to a PID namespace's init ends them all.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leader, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while _is_container_init(leader) and time.monotonic() < deadline:
                    time.sleep(0.05)
        # nspawn refuses to remove this itself when /run is not a tmpfs.
        shutil.rmtree(PROPAGATE_DIR / self.name, ignore_errors=True)
        for cgroup in self._cgroups:
            _remove_cgroup(cgroup)
        self._cgroups = []
        if self._dir is not None:
            self._console()
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- commands ---------------------------------------------------------------------

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container (all its namespaces, its root) with a clean environment.

        stdout and stderr come back as text; with check, a failure raises ContainerError
        carrying both. Wherever nsenter lands, argv runs only if the root there has this
        container's token (see _GUARD); otherwise NotTheContainer, check or not.
        """
        data = input.encode() if isinstance(input, str) else input
        guard = ["/bin/sh", "-c", _GUARD, "sh"]
        proc = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *guard, *argv],
            input=data,
            capture_output=True,
            timeout=timeout,
            env={**_ENV, **(env or {}), **self._marker()},
            check=False,
        )
        if proc.returncode == _REFUSED and b"not the container" in proc.stderr:
            raise NotTheContainer(
                f"refused to run {' '.join(argv)} in the namespaces of PID {self.leader}: "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        done = subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if check and done.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv)} exited with {done.returncode}\n"
                f"stdout: {done.stdout.strip()}\nstderr: {done.stderr.strip()}"
            )
        return done

    def systemctl(self, *args: str, check: bool = True) -> str:
        """`systemctl ARGS` in the container; its stdout."""
        return self.run("systemctl", "--no-pager", *args, check=check).stdout

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit, e.g. show("x.service", "MainPID")."""
        return self.systemctl("show", "--value", "-p", prop, unit).strip()

    def host_path(self, path: str) -> Path:
        """The host's view of a path in the container (for reading, or AF_UNIX connect())."""
        return Path(f"/proc/{self.leader}/root") / path.lstrip("/")

    # -- files --------------------------------------------------------------------------

    def put_files(self, files: Mapping[str, bytes | str], mode: int = 0o644) -> None:
        """Create files (absolute container paths), their directories, all root-owned."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path, content in files.items():
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        self._untar(buf.getvalue())

    def put_tree(self, src: Path, dest: str) -> None:
        """Copy a directory into the container as dest (replacing it), minus bytecode caches."""

        def clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            if "__pycache__" in Path(info.name).parts or info.name.endswith(".pyc"):
                return None
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
            return info

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(src, arcname=dest.lstrip("/"), filter=clean)
        self.run("rm", "-rf", "--", dest)
        self._untar(buf.getvalue())

    def _untar(self, data: bytes) -> None:
        self.run("tar", "-x", "-C", "/", "--no-same-owner", "-f", "-", input=data)

    def remove(self, *paths: str) -> None:
        """rm -rf the given container paths."""
        self.run("rm", "-rf", "--", *paths)

    # -- units ----------------------------------------------------------------------------

    def install_units(self, *unit_files: Path, dest: str = UNIT_DIR) -> None:
        """Copy unit files in (the distro's directory by default) and reload systemd."""
        self.put_files({f"{dest}/{f.name}": f.read_bytes() for f in unit_files})
        self.daemon_reload()

    def drop_in(self, unit: str, name: str, text: str) -> None:
        """What `systemctl edit UNIT` leaves behind: /etc/systemd/system/UNIT.d/NAME.conf."""
        self.put_files({f"{ADMIN_UNIT_DIR}/{unit}.d/{name}.conf": text})
        self.daemon_reload()

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def install_sockpool(self, repo: Path, extra_modules: Iterable[Path] = ()) -> None:
        """Install sockpool as a distro package would, from the repository's working tree.

        The package goes to the distro python's dist-packages (byte-compiled, as dpkg's
        postinst would: the sandboxed service cannot write caches), the launcher to
        /usr/bin/sockpool, the units to /usr/lib/systemd/system, the journal catalog to
        /usr/lib/systemd/catalog, the manual page to /usr/share/man. extra_modules (single
        .py files, e.g. test handlers) go beside the package.
        """
        modules = {f"{PACKAGE_DIR}/{m.name}": m.read_bytes() for m in extra_modules}
        self.put_tree(repo / "service" / "sockpool", f"{PACKAGE_DIR}/sockpool")
        files: dict[str, bytes | str] = dict(modules)
        catalog = repo / "packaging" / "sockpool.catalog"
        if catalog.exists():
            files[f"{CATALOG_DIR}/sockpool.catalog"] = catalog.read_bytes()
        manual = repo / "packaging" / "sockpool.1"
        if manual.exists():  # the units' Documentation=; systemd-analyze verify checks it
            files[f"{MAN_DIR}/man1/sockpool.1.gz"] = gzip.compress(manual.read_bytes(), mtime=0)
        if files:
            self.put_files(files)
        self.put_files(
            {"/usr/bin/sockpool": '#!/bin/sh\nexec /usr/bin/python3 -m sockpool "$@"\n'},
            mode=0o755,
        )
        self.run("/usr/bin/python3", "-m", "compileall", "-q", f"{PACKAGE_DIR}/sockpool", *modules)
        if catalog.exists():
            self.run("journalctl", "--update-catalog")
        units = (repo / "units").iterdir()
        self.install_units(*sorted(u for u in units if u.suffix in (".socket", ".service")))
