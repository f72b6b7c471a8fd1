"""The rest of an answer a slow client has not taken yet: a sync worker's side.

A sync worker serves one connection at a time. An answer longer than the socket's send
buffer, to a client that reads it slowly (a phone on a poor link, a download, a client that
pipelines requests and reads the answers late), would hold the worker until the client had
taken it all: the reason gunicorn's sync workers want a buffering proxy in front. Here, once
the kernel takes no more, the rest goes into a memfd, up to `max_unsent` bytes, and the
connection goes back to the dispatcher with it (giveback.py: a PARK with a second
descriptor). The dispatcher sends it as the client takes it (parking.py), then closes the
connection or holds it for its next request, and the worker is free for the next client.
Past `max_unsent`, or past `max_unsent_total` with what the dispatcher holds already (a
crowd of clients that read nothing must not take all the memory there is), or where the
connection cannot go back (the dispatcher near its descriptor limit, a stop with a
request to serve), the worker sends it itself, as sendall() does.

A file's rest (send_file(): wsgi.file_wrapper, Flask's send_file) is not copied: the
dispatcher gets the file itself, a copy of its descriptor, and the bytes to send of it. It
takes none of our memory, so neither limit counts it, and a download of any length holds
no worker. Not a file whose bytes would be ours to hold (pinned()): one in memory (tmpfs),
or one deleted already (a temporary file), which our descriptor alone would keep; its
rest is copied, as bytes are, while it fits.

    sockpool.send(conn, data)  # in place of conn.sendall(data)
    sockpool.flush(conn)       # before a wait for the client with conn.recv()

The built-in handlers and the WSGI server write with it. It needs the socket's timeout
(idle_timeout, which sync handlers get): a socket in blocking mode is written whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
from collections.abc import Callable

from . import giveback
from .connection import ConnectionInfo, _current

_SHORT = "the file ended before its Content-Length"
_limit = 0  # max_unsent, set by the worker (worker.py); 0: never
_total = 0  # max_unsent_total (worker.py); 0: no limit but each connection's


class Unsent:
    """Bytes of an answer, in order, in a memfd of their own (ConnectionInfo.unsent), of
    which the client has taken the first `sent`; or, `file`, the bytes `sent` to `size` of
    an application's file."""

    __slots__ = ("fd", "file", "sent", "size")

    def __init__(self, file: int | None = None, offset: int = 0, count: int = 0) -> None:
        """An empty memfd; or `count` bytes of the `file` from `offset`, sent from the file
        itself: a copy of its descriptor, which the application may close meanwhile.
        Nothing can be added to that (_behind())."""
        self.file = file is not None
        if file is None:
            self.fd = os.memfd_create("sockpool-unsent", os.MFD_CLOEXEC)
        else:
            self.fd = os.dup(file)
        self.sent, self.size = offset, offset + count

    def add(self, data: bytes | memoryview) -> None:
        """Append all of `data`, or none of it (OSError: no memory for it)."""
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += os.pwrite(self.fd, view[written:], self.size + written)
        except OSError:
            os.ftruncate(self.fd, self.size)
            raise
        self.size += written

    def add_file(self, fd: int, offset: int, count: int) -> None:
        """Append `count` bytes of the file `fd` from `offset`, or none of them: OSError,
        or ValueError when the file ends first (the application's error, as in _sendfile)."""
        start = self.size
        os.lseek(self.fd, start, os.SEEK_SET)  # where sendfile() writes
        try:
            while count > 0:
                copied = os.sendfile(self.fd, fd, offset, count)
                if not copied:
                    raise ValueError(_SHORT)
                offset, count, self.size = offset + copied, count - copied, self.size + copied
        except (OSError, ValueError):
            os.ftruncate(self.fd, start)
            self.size = start
            raise

    def drain(self, conn: socket.socket) -> bool:
        """Send what the client takes now, without waiting: True once it has it all."""
        self.sent = send_what_fits(conn.fileno(), self.fd, self.sent, self.size)
        return self.sent >= self.size

    def flush(self, conn: socket.socket) -> None:
        """Send it all from here, waiting for the client as sendall() would; then close it."""
        try:
            _sendfile(conn, self.fd, self.sent, self.size - self.sent)
        finally:
            self.close()

    def close(self) -> None:
        os.close(self.fd)


def send(conn: socket.socket, data: bytes | memoryview, last: bool = True) -> None:
    """conn.sendall(data) for a sync handler, except that what its client does not take
    now of an answer's `last` part (up to max_unsent bytes) is left to the dispatcher, so
    the worker is not held while the client reads. A part that is not the last (a stream,
    more to come, perhaps much later) goes out whole, as with sendall(): held back, it
    would wait for the next. Errors are sendall()'s: a reset peer is a ConnectionError.

    On every answer's path, so written flat: one write, which nearly always takes it all
    (and a socket with a timeout, non-blocking underneath, saves the poll() sendall()
    makes before it writes)."""
    info = _current.get(None)
    if (
        info is not None
        and info.unsent is not None  # behind what waits already
        and _behind(conn, info, last, len(data), lambda u: u.add(data))
    ):
        return
    try:
        sent = os.write(conn.fileno(), data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        rest = memoryview(data)[sent:]
        if not (last and _leave(info, len(rest), lambda u: u.add(rest))):
            conn.sendall(rest)


def flush(conn: socket.socket) -> None:
    """Send now what the client has not taken yet, waiting for it as sendall() does: for a
    handler about to wait for its client (conn.recv()), which may be waiting for that.
    receive() needs none: it gives the connection back with it instead."""
    info = _current.get(None)
    if info is not None and info.unsent is not None:
        giveback.send_unsent(conn, info)


def _leave(info: ConnectionInfo | None, size: int, fill: Callable[[Unsent], None]) -> bool:
    """What the socket did not take, `size` bytes that fill() writes, into a memfd, to go
    back with the connection. False where it may not go back, or there is no memory or no
    descriptor for it: the worker then waits for the client."""
    if not (_fits(size) and giveback._parkable(info)):
        return False
    try:
        unsent = Unsent()
    except OSError:
        return False
    try:
        fill(unsent)
    except OSError:
        unsent.close()
        return False
    except BaseException:
        unsent.close()
        raise
    info.unsent = unsent  # type: ignore[union-attr]
    return True


def _behind(
    conn: socket.socket,
    info: ConnectionInfo,
    last: bool,
    size: int,
    fill: Callable[[Unsent], None],
) -> bool:
    """More of the answer, `size` bytes that fill() writes, behind what the client has not
    taken: True when it joined it, False when the caller is to send it now. Not a `last`
    part: what waits is sent first, the worker waiting for the client. A last part (a
    handler that wrote its answer in several): what the client takes now goes first; if
    that is all of it, the more goes out as any write does. Else the more joins it, while
    it fits (a file's rest, which takes nothing more, only nothing); once it does not,
    what waits is sent, as for a part that is not the last."""
    unsent = info.unsent
    assert unsent is not None
    if not last:
        giveback.send_unsent(conn, info)
        return False
    try:
        done = unsent.drain(conn)
    except ValueError:  # a file cut short since: what waits can never be whole, and how
        info.unsent = None  # much of it went is lost with the error: nothing more goes
        unsent.close()
        raise
    if done:
        info.unsent = None
        unsent.close()
        return False
    if not size:  # the answer's end is nothing more (a file's Content-Length answer)
        return True
    if not unsent.file and _fits(unsent.size + size):
        try:
            fill(unsent)
            return True
        except OSError:
            pass
    giveback.send_unsent(conn, info)  # too much to leave: the worker sends it all
    return False


def _fits(size: int) -> bool:
    """Whether an answer's rest this long may be left to the dispatcher."""
    return giveback.room_for(giveback.UNSENT, size, _limit, _total)


def send_file(conn: socket.socket, fd: int, offset: int, count: int, last: bool = True) -> None:
    """os.sendfile() of `count` bytes of the file `fd` from `offset`, as send() sends
    bytes: once the client takes no more, the rest of a `last` part goes back with the
    connection as the file itself (_leave_file()), whatever its length; of a pinned()
    file, copied into a memfd while it fits max_unsent. Behind an answer not taken yet,
    it joins that memfd while it fits, as send()'s bytes do."""
    info = _current.get(None)
    if (
        info is not None
        and info.unsent is not None  # behind what waits already
        and _behind(conn, info, last, count, _file_range(fd, offset, count))
    ):
        return
    _sendfile(conn, fd, offset, count, info if last else None)


def _sendfile(
    conn: socket.socket, fd: int, offset: int, count: int, info: ConnectionInfo | None = None
) -> None:
    """TimeoutError when the client takes nothing for the socket's timeout; ValueError
    when the file ends before `count` (the file's error, not the client's). With `info`,
    the rest may be left to the dispatcher once the client takes no more (send_file()):
    tried at each wait (a pinned() file's rest may come to fit max_unsent)."""
    out = conn.fileno()
    timeout = conn.gettimeout()
    while count > 0:
        try:
            sent = os.sendfile(out, fd, offset, min(count, 1 << 30))
        except BlockingIOError:  # a socket with a timeout is non-blocking underneath
            if info is not None and (
                _leave_file(info, fd, offset, count)
                or _leave(info, count, _file_range(fd, offset, count))
            ):
                return
            poller = select.poll()
            poller.register(out, select.POLLOUT)
            if not poller.poll(None if timeout is None else timeout * 1000):
                raise TimeoutError("the client does not read") from None
            continue
        if not sent:
            raise ValueError(_SHORT)
        offset += sent
        count -= sent


def _leave_file(info: ConnectionInfo, fd: int, offset: int, count: int) -> bool:
    """A file's rest the client does not take now, left to the dispatcher as the file
    itself (Unsent(file)): none of our memory, so no limit but max_unsent's `0`
    (never). False where it may not go back, there is no descriptor for it, or the file is
    pinned() (the caller then copies the rest while it fits, as for bytes)."""
    if not (_limit and giveback._parkable(info)) or pinned(fd):
        return False
    try:
        info.unsent = Unsent(fd, offset, count)  # type: ignore[union-attr]
    except OSError:
        return False
    return True


def pinned(fd: int) -> bool:
    """Whether the file's bytes are memory (in_memory()), or would be kept only by
    whoever holds a descriptor to it (deleted): held for a slow client, either is the
    service's to count, not the page cache's."""
    return os.fstat(fd).st_nlink == 0 or in_memory(fd)


def in_memory(fd: int) -> bool:
    """A file in tmpfs or /dev/shm, or a memfd: only shmem (and hugetlbfs) files have
    seals. Not ramfs, nor an overlay on tmpfs: those count as a disk's."""
    try:
        fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:  # EINVAL: a file on a disk
        return False
    return True


def send_what_fits(out: int, fd: int, offset: int, end: int) -> int:
    """sendfile() of the file `fd` from `offset` to `end` on the non-blocking socket `out`,
    as much as it takes now; where that ended (`end` once all is sent). ValueError when the
    file ends first (an application's file cut short since); OSError for the socket's
    errors, and for the file's (a read that failed: EIO, or ESTALE on NFS), which
    sendfile() does not tell apart. The worker's drain() and the dispatcher's sending
    (parking.py)."""
    with contextlib.suppress(BlockingIOError):
        while offset < end:
            if not (sent := os.sendfile(out, fd, offset, end - offset)):
                raise ValueError(_SHORT)
            offset += sent
    return offset


def _file_range(fd: int, offset: int, count: int) -> Callable[[Unsent], None]:
    return lambda unsent: unsent.add_file(fd, offset, count)
