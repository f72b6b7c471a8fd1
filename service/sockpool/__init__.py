"""sockpool: socket-activated pre-fork pools for Python network services under systemd."""

from .connection import ConnectionInfo, current_connection

__version__ = "0.1.0"
__all__ = ["ConnectionInfo", "__version__", "current_connection"]
