"""The `sockpool` command: flags and config in, a running dispatcher out, errors as one line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, NoReturn

from . import __version__, config, log
from .errors import ExitCode, Fatal
from .importing import HandlerError, load_handler
from .listeners import Listener, bind, from_activation, parse_address

_journal_logging = False


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise Fatal(ExitCode.USAGE, f"{message} (see sockpool --help)")


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
    p.add_argument("--config", metavar="FILE", help="TOML file with the same keys as the flags")
    p.add_argument("--workers", metavar="N", help="worker processes (default: CPUs available)")
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
    p.add_argument("--version", action="version", version=f"sockpool {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except Fatal as exc:
        _report(exc)
        return exc.code
    except KeyboardInterrupt:
        return 130


def _main(argv: list[str] | None) -> int:
    args = vars(parser().parse_args(argv))
    log_target, check, path = args.pop("log_target"), args.pop("check"), args.pop("config", None)

    def load() -> config.Config:
        return config.load(path, args)

    cfg = load()
    global _journal_logging
    log.setup(cfg.name, cfg.log_level, log_target)
    _journal_logging = log.journal_wanted(log_target)
    if check:
        return _check(cfg)

    listeners = _listeners(cfg)
    names = [lst.name for lst in listeners]
    config.check_handlers(cfg, names)
    for name in set(cfg.listeners) - set(names):
        log.log.warning("config names listener %r, but no socket of that name was passed", name)

    def reload() -> config.Config:
        new = load()
        config.check_handlers(new, names)
        return new

    from .dispatcher import Dispatcher
    from .notify import Notifier

    return Dispatcher(listeners, cfg, reload, Notifier()).run()


def _listeners(cfg: config.Config) -> list[Listener]:
    listeners = from_activation(os.environ) or []
    for text in cfg.listen:
        address = parse_address(text)  # validated with the config already
        listeners.append(bind(address, default_name=address.text))
    if not listeners:
        raise Fatal(
            ExitCode.NO_LISTENERS,
            "no sockets: start sockpool from a systemd .socket unit (socket activation) "
            "or give --listen ADDRESS",
        )
    return listeners


def _check(cfg: config.Config) -> int:
    targets = {cfg.handler, *(lc.handler for lc in cfg.listeners.values())} - {None}
    for target in sorted(t for t in targets if t):
        try:
            load_handler(target)
        except HandlerError as exc:
            raise Fatal(ExitCode.CONFIG, str(exc)) from None
    if not targets:
        raise Fatal(ExitCode.CONFIG, "no handler: give HANDLER or 'handler = ...'")
    print(f"sockpool: configuration OK ({cfg.path or 'command line'})")
    return 0


def _report(exc: Fatal) -> None:
    """One line: in the journal (with its MESSAGE_ID) when that is where we log, else stderr."""
    if _journal_logging:
        extra: dict[str, Any] = {"EXIT_CODE": int(exc.code)}
        if exc.event:
            extra["MESSAGE_ID"] = exc.event.value
        log.log.critical("%s", exc.message, extra=extra)
    else:
        print(f"sockpool: {exc.message}", file=sys.stderr)
    logging.shutdown()
