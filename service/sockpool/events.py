"""Lifecycle events and their journal MESSAGE_IDs.

Each id is fixed forever: admins filter on them (`journalctl MESSAGE_ID=...`) and the
catalog in packaging/sockpool.catalog explains them. Never reuse or change one.
"""

from __future__ import annotations

from enum import Enum


class Event(Enum):
    """A lifecycle event; its value is the MESSAGE_ID (32 hex digits)."""

    STARTED = "36f08e4571ea4223b5c91b4b51c8bfd6"
    READY = "9ea61c33ee2a4202a6f01775830c0e34"
    WORKER_STARTED = "58d355f03b0a488eb5076c1c5f2a91b4"
    WORKER_EXITED = "8a216e3be8254f1fb1d12a85ce767569"
    RELOADING = "39191fc93f9d4a0bbd8f83e97deb11a4"
    RELOAD_FAILED = "91af5921b8da4d80baeb38f31188bc6e"
    STOPPING = "659b930615b74a8d8c87a470b1377223"
    OVERLOAD = "d71e899e9e4647b3a121f816ebcdd590"
    WORKERS_FAILING = "884d0a1c2327409f9fc970dc93dbec4e"
    HANDLER_ERROR = "3d76ff58b995427fae7b2af903c6fb8a"
    WORKER_HUNG = "39b5993085fa48828d58081094872dec"
    ACCEPT_ERROR = "376098a914c643b88e08eca20332d402"
    WORKER_RECYCLED = "7cab86b40a3a440cb0433f5c47573bd8"
    CLOSED_WAITING = "f68c39215ba741c2972ef6c0e40c24aa"

    @property
    def message_id(self) -> str:
        return self.value


# Fail at import, not in the journal, if an id is ever mistyped: 128 bits in 32 lowercase
# hex digits, as `systemd-id128 new` prints them (checked without the uuid module, which
# would add platform and its regexes to every start).
_HEX = frozenset("0123456789abcdef")
for _event in Event:
    assert len(_event.value) == 32 and _HEX.issuperset(_event.value), _event
