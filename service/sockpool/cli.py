"""The `sockpool` command: flags and config in, a running dispatcher out, errors as one line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import resource
import signal
import sys
from typing import Any, NoReturn

from . import __version__, config, log
from .errors import ExitCode, Fatal, cut, quote, whole_number
from .eventloop import SIGNALS
from .importing import HandlerError, check_in_child
from .listeners import MAX_PID, Listener, bind, check_fdnames, from_activation, parse_address

_journal_logging = False


# Resilience flags, each the TOML key of the same name. What 0 means is each key's own
# (config.py's checks; README's table): off for most, refused for start_timeout, whose
# start that cannot time out is what it prevents, and for the HTTP head limits.
_LIMITS = [
    (
        "start_timeout",
        "SECONDS",
        "a worker not ready this long after it was started failed to start; also the limit "
        "for --check's imports (default 30, above 0)",
    ),
    (
        "timeout",
        "SECONDS",
        "a worker holding a connection longer is hung: its stacks go to "
        "the journal, it is killed and replaced; async workers cancel the connection (default 0)",
    ),
    (
        "idle_timeout",
        "SECONDS",
        "built-in handlers close a connection idle this long; sync "
        "handlers get it as their socket timeout (default 60)",
    ),
    (
        "handoff",
        "WHEN",
        "ready: hand a connection to a worker once it has data; immediate: at once "
        "(default: as the handler declares; the built-in handlers wait for data)",
    ),
    ("first_byte_timeout", "SECONDS", "close a new connection silent this long (default 10)"),
    (
        "request_timeout",
        "SECONDS",
        "close a connection whose request is not read whole this long after it began (default 30)",
    ),
    (
        "park_after",
        "SECONDS",
        "a worker waits this long for a keep-alive connection's next request before it "
        "gives the connection back to the dispatcher (default 0.002)",
    ),
    (
        "queue_ahead",
        "N",
        "connections a sync worker holds queued behind the one it serves, 0 to 8 (default 1): "
        "it starts the next without waiting for the dispatcher, and from 2 on reports what it "
        "finished a few at a time; one left waiting behind a long request goes to another "
        "worker",
    ),
    (
        "accept",
        "WHO",
        "who accepts new connections: dispatcher (default), or workers: idle sync workers "
        "accept for themselves and give the dispatcher what is not ready (faster under "
        "churn; not with max_connections or max_connections_per_source; PROXY listeners and "
        "async workers stay with the dispatcher)",
    ),
    (
        "max_carry",
        "BYTES",
        "bytes of a partial request the dispatcher holds for a parked connection; a "
        "connection parked with more is closed (default 16384, at most 65536)",
    ),
    (
        "max_unsent",
        "BYTES",
        "bytes of an answer a sync worker may leave to the dispatcher to send when its client "
        "reads slowly, so the worker goes on to the next connection (default 1048576; 0: off); "
        "a file's rest (wsgi.file_wrapper) goes as the file, whatever its length, unless "
        "the file is in tmpfs or deleted",
    ),
    (
        "max_unsent_total",
        "BYTES",
        "bytes of such answers one dispatcher holds at once; past it, workers send theirs "
        "themselves (default 67108864; 0: no limit but max_unsent's)",
    ),
    (
        "max_buffered_body",
        "BYTES",
        "WSGI apps and http_hello: a request body still to come, up to this many bytes, is "
        "waited for by the dispatcher in the kernel's buffer, so a slow upload holds no sync "
        "worker (TCP; default 1048576; 0: off)",
    ),
    (
        "max_buffered_body_total",
        "BYTES",
        "bytes of such bodies one dispatcher waits for at once; past it, workers read theirs "
        "themselves (default 67108864; 0: no limit but max_buffered_body's)",
    ),
    ("max_request_line", "BYTES", "web apps: a longer request line gets 414 (default 8190)"),
    ("max_header_bytes", "BYTES", "web apps: a larger request head gets 431 (default 16384)"),
    ("max_headers", "N", "web apps: more header fields get 431 (default 100)"),
    ("max_body", "BYTES", "web apps: a larger request body gets 413 (default 16 MiB; 0: none)"),
    ("max_requests", "N", "recycle a worker after N connections (default 0)"),
    ("max_requests_jitter", "N", "plus up to N more, per worker (default a tenth of N)"),
    ("max_memory", "MIB", "recycle a worker above this resident memory (default 0)"),
    ("max_connections", "N", "refuse connections beyond N in flight (default 0)"),
    ("max_connections_per_source", "N", "refuse beyond N in flight from one IP (default 0)"),
    ("overload_reply", "LINE", "send this line to a refused connection first"),
]


class _Parser(argparse.ArgumentParser):
    building = True  # parser() clears it once every flag is added

    def error(self, message: str) -> NoReturn:
        # argparse quotes what it was given whole: a 100 KB argument, or one with a newline.
        raise Fatal(ExitCode.USAGE, f"{cut(message, 300)} (see sockpool --help)")

    def _get_formatter(self) -> argparse.HelpFormatter:
        # add_argument() makes a formatter for each flag only to check its metavar; with no
        # width given, each would ask the terminal's size through shutil (and its bz2 and
        # lzma imports): ~4 ms of every start. --help still gets the terminal's width.
        if self.building:
            return self.formatter_class(prog=self.prog, width=80)
        return super()._get_formatter()


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sockpool",
        description="Serve socket-activated connections from a pre-forked pool of workers.",
        epilog="Flags override the same keys in the --config file. Exit codes: "
        + ", ".join(f"{c.value} {c.name.lower()}" for c in ExitCode),
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "handler",
        nargs="?",
        metavar="HANDLER",
        help="module:callable serving every listener without its own handler",
    )
    p.add_argument(
        "--wsgi", metavar="MODULE:APP", help="serve this WSGI application (sync workers)"
    )
    p.add_argument(
        "--asgi", metavar="MODULE:APP", help="serve this ASGI 3 application (async workers)"
    )
    p.add_argument(
        "--access-log",
        action="store_const",
        const=True,
        help="web apps: one journal record per request (METHOD, PATH, STATUS, ...)",
    )
    p.add_argument(
        "--pull",
        action="store_const",
        const=True,
        help="async workers take a new connection only while their loop waits for I/O, "
        "one per wait; the rest wait in the dispatcher (for handlers that burn CPU)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        type=_file,
        help="TOML file with the same keys as the flags",
    )
    p.add_argument("--workers", metavar="N", help="worker processes (default: CPUs available)")
    p.add_argument(
        "--dispatchers",
        metavar="N",
        help="dispatcher processes sharing the sockets and the workers, or 'auto' (default 1)",
    )
    p.add_argument(
        "--listen",
        metavar="[NAME=]ADDR",
        action="append",
        help="bind HOST:PORT, [V6]:PORT, PORT or /path.sock without systemd (repeatable)",
    )
    p.add_argument(
        "--graceful-timeout",
        metavar="SECONDS",
        help="how long connections may finish on stop or reload (default 30)",
    )
    p.add_argument(
        "--capacity", metavar="N", help="connections per worker for async handlers (default 100)"
    )
    for key, metavar, text in _LIMITS:
        p.add_argument(config.flag_name(key), dest=key, metavar=metavar, help=text)
    p.add_argument("--name", help="SYSLOG_IDENTIFIER in the journal (default sockpool)")
    p.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning, error")
    p.add_argument(
        "--log-target",
        choices=("auto", "journal", "stderr"),
        default="auto",
        help="auto: the journal when started by systemd, else stderr",
    )
    p.add_argument(
        "--check",
        action="store_true",
        default=False,
        help="validate the configuration and import the handlers, then exit",
    )
    p.add_argument(
        "--reload",
        metavar="PID",
        type=_pid,
        help="check as --check does, then send SIGHUP to the sockpool running as PID "
        "(the units' ExecReload=; needs no kill(1))",
    )
    p.add_argument("--version", action="version", version=f"sockpool {__version__}")
    p.building = False
    return p


def _file(text: str) -> str:
    # Empty, as `--config=$CONFIG` with the variable unset: not "no file" without a word.
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return text


def _pid(text: str) -> int:
    # 0, -1 and 1 would signal a process group, every process, or init.
    pid = whole_number(text, MAX_PID)
    if pid is None or pid < 2:
        raise argparse.ArgumentTypeError(f"not a process ID: {quote(text)}")
    return pid


def _runs_sockpool(pid: int | str) -> bool:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return is_sockpool_command(f.read().split(b"\0"))


_PYTHON = re.compile(rb"(?:python|pypy)[0-9.]*[dmt]?")  # python3.11, python3.13t, pypy3


def is_sockpool_command(args: list[bytes]) -> bool:
    """Whether a command line runs sockpool: the console script (the kernel runs its
    interpreter with the script's path), `python [options] -m sockpool`, or a program
    named sockpool. Not a program that only has a file named sockpool for an argument
    (`less /usr/bin/sockpool`), which a SIGHUP would end."""
    program = os.path.basename(args[0]) if args else b""
    if program == b"sockpool":
        return True
    if not _PYTHON.fullmatch(program):
        return False
    rest = iter(args[1:])
    for arg in rest:
        if arg == b"--check-hash-based-pycs":
            next(rest, None)
        elif arg.startswith(b"--"):
            continue  # --help and the like: sockpool would not run
        elif arg.startswith(b"-") and len(arg) > 1:
            for at, flag in enumerate(arg[1:].decode("latin-1"), 2):  # a cluster: -uIm
                if flag in "WXmc":  # each takes the rest, or the next argument
                    value = arg[at:] or next(rest, b"")
                    if flag == "m":
                        return value == b"sockpool"
                    if flag == "c":
                        return False
                    break
        else:
            return os.path.basename(arg) == b"sockpool"  # the script
    return False


def _not_sockpools_main(pid: int) -> bool:
    """True when /proc shows that `pid` is no sockpool's main process: it runs something
    else, or its parent runs sockpool too (a dispatcher or a worker, which a SIGHUP would not
    reload, or would kill). False where /proc cannot tell (hidepid=): then trust the caller."""
    try:
        if not _runs_sockpool(pid):
            return True
        with open(f"/proc/{pid}/stat", "rb") as f:
            parent = f.read().rsplit(b")", 1)[1].split()[1].decode()
        return parent != "0" and _runs_sockpool(parent)
    except (OSError, IndexError):
        return False


def main(argv: list[str] | None = None) -> int:
    # As they were, for a caller running it in-process: the loop takes these signals.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    try:
        return _main(argv)
    except Fatal as exc:
        _report(exc)
        return exc.code
    except KeyboardInterrupt:
        return 130
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _main(argv: list[str] | None) -> int:
    # Until the loop takes them (eventloop.on_signals), a SIGHUP or SIGTERM would end the
    # process by its default action, unlogged, leaving a --listen socket file behind (and
    # systemd counts a death by SIGHUP as a clean exit): blocked, they wait for the loop.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STARTING)
    args = vars(parser().parse_args(argv))
    log_target, check, path = args.pop("log_target"), args.pop("check"), args.pop("config", None)
    reload_pid: int | None = args.pop("reload", None)

    def load() -> config.Config:
        return config.load(path, args)

    cfg = load()
    global _journal_logging
    log.setup(cfg.name, cfg.log_level, log_target)
    _journal_logging = log.journal_wanted(log_target)
    if reload_pid is not None or check:  # no loop to take them: as any command
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STARTING)
    if reload_pid is not None:
        return _check_and_signal(cfg, reload_pid)
    if check:
        _say(_check(cfg))
        return 0

    listeners = _listeners(cfg)
    names = [lst.name for lst in listeners]
    _warn_unmatched(cfg, names)
    # Socket-activated, `listen` means nothing (_listeners()): nor does a reload's change
    # of it, which would be said to wait for a restart.
    activated = not any(lst.owned for lst in listeners)
    if activated:
        cfg = dataclasses.replace(cfg, listen=())

    def reload() -> config.Config:
        new = load()
        if activated:
            new = dataclasses.replace(new, listen=())
        config.check_handlers(new, names)
        config.check_kinds(cfg, new, names)
        return new

    from .dispatcher import Dispatcher
    from .notify import Notifier

    _raise_descriptor_limit()

    if (dispatchers := config.dispatcher_count(cfg)) > 1:
        from .supervisor import Supervisor  # its module only when there are several

        return Supervisor(listeners, cfg, reload, dispatchers, _report).run()
    return Dispatcher(listeners, cfg, reload, Notifier()).run()


_STARTING = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


def _raise_descriptor_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one, as systemd advises for programs that do not
    use select(): the default soft 1024 would cap an async pool's connections early."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(OSError):  # a syscall filter may deny it: keep the soft one
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _listeners(cfg: config.Config) -> list[Listener]:
    """systemd's sockets, else --listen's, each with a handler to serve it: checked before
    anything is bound, as a UNIX socket file bound for nothing would outlive the error.
    Under socket activation the socket units say where to listen, as gunicorn does with
    its binds: a `listen` left in a file from development would open a port that no socket
    unit declares (nor its IPAddressAllow=)."""
    listeners = from_activation(os.environ) or []
    addresses = [parse_address(text) for text in cfg.listen]  # validated with the config
    if listeners and addresses:
        log.log.warning(
            "listen ignored (%s): socket activation passed the sockets to serve",
            cut(", ".join(cfg.listen)),
        )
        addresses = []
    if not listeners and not addresses:
        raise Fatal(
            ExitCode.NO_LISTENERS,
            "no sockets: start sockpool from a systemd .socket unit (socket activation) "
            "or give --listen ADDRESS",
        )
    names = [lst.name for lst in listeners] + [a.listener for a in addresses]
    config.check_handlers(cfg, names)
    try:
        for address in addresses:
            listeners.append(bind(address))
    except Fatal:  # one failed: the socket files bound before it go too
        for listener in listeners:
            if listener.owned:
                listener.close()
        raise
    return listeners


def _warn_unmatched(cfg: config.Config, names: list[str]) -> None:
    """One warning for all [listeners.NAME] tables no passed socket has, however many."""
    unmatched = sorted(set(cfg.listeners) - set(names))
    if unmatched:
        log.log.warning(
            "config names %d listener(s) with no socket of that name passed: %s",
            len(unmatched),
            cut(", ".join(map(quote, unmatched[:5])) + (", ..." if len(unmatched) > 5 else "")),
        )


def _check(cfg: config.Config) -> str:
    """Validate what can be without taking the sockets: LISTEN_FDNAMES when set, and the
    handlers, imported in a child as a worker would, within start_timeout. The line that
    says it is good."""
    check_fdnames(os.environ)
    named = {cfg.default_target(), *(cfg.target_for(name) for name in cfg.listeners)}
    targets = sorted(t for t in named if t)
    if not targets:
        raise Fatal(ExitCode.CONFIG, "no handler: give HANDLER, --wsgi, --asgi or 'handler = ...'")
    try:
        check_in_child(targets, cfg.start_timeout)
    except HandlerError as exc:
        raise Fatal(ExitCode.CONFIG, str(exc)) from None
    return f"sockpool: configuration OK ({cut(cfg.path) if cfg.path else 'command line'})"


def _check_and_signal(cfg: config.Config, pid: int) -> int:
    """ExecReload= in one command: a broken configuration fails the reload (78) and the
    running pool never hears of it; only a good one reaches it as SIGHUP."""
    good = _check(cfg)
    if _not_sockpools_main(pid):
        raise Fatal(
            ExitCode.NO_PROCESS, f"--reload: process {pid} is not a sockpool's main process"
        )
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise Fatal(ExitCode.NO_PROCESS, f"--reload: no process {pid}") from None
    except PermissionError:
        raise Fatal(ExitCode.NO_PROCESS, f"--reload: not allowed to signal process {pid}") from None
    _say(good)  # after the signal: a closed stdout cannot stop the reload
    _say(f"sockpool: sent SIGHUP to {pid}")
    return 0


def _say(line: str) -> None:
    """A line on stdout, which may be closed or full (`| true`, /dev/full): what it reports
    is done, and the exit code says so. Then stdout goes to /dev/null, or the exit's own
    flush would print a traceback."""
    try:
        print(line, flush=True)
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def _report(exc: Fatal) -> None:
    """One line: in the journal (with its MESSAGE_ID) when that is where we log, else, or
    when journald did not take it (--log-target=journal with no journald), stderr."""
    if _journal_logging:
        extra: dict[str, Any] = {"EXIT_CODE": int(exc.code)}
        if exc.event:
            extra["MESSAGE_ID"] = exc.event.value
        log.log.critical("%s", exc.message, extra=extra)
        if log.journal is None or log.journal.drain(log.EXIT_DRAIN):
            logging.shutdown()
            return
    print(f"sockpool: {exc.message}", file=sys.stderr)
    logging.shutdown()
