"""A handler module whose import never finishes: a worker that can never be ready (issue 11)."""

import threading

threading.Event().wait()  # nothing ever sets it


def handle(conn, info) -> None:  # never reached
    raise AssertionError("block_at_import was imported after all")
