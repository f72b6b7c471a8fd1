"""sockpool: socket-activated pre-fork pools for Python network services under systemd."""

from .connection import ConnectionInfo, current_connection
from .giveback import Parked, client_speaks_first, park, park_async, read, receive
from .unsent import flush, send

__version__ = "0.1.0"
__all__ = [
    "ConnectionInfo",
    "Parked",
    "__version__",
    "client_speaks_first",
    "current_connection",
    "flush",
    "park",
    "park_async",
    "read",
    "receive",
    "send",
]
