"""A handler module whose import waits until the file $GATE exists (test_faults.py): the
test decides what happens while its workers import."""

from __future__ import annotations

import os
import time

from sockpool.handlers import echo as handle  # noqa: F401

while not os.path.exists(os.environ["GATE"]):
    time.sleep(0.01)
