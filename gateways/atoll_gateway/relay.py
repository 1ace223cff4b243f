"""Moving bytes between two connections once routing is decided: splice or Protocols.

Two relays, one contract — :meth:`run` returns ``(bytes client→upstream,
bytes upstream→client)`` when both directions are finished (each side sent
EOF, which is propagated as a half-close, or either side failed), and leaves
every file descriptor closed. Cancelling :meth:`run` tears the connection down.

:class:`SpliceRelay` (passthrough, Linux) never copies payload into Python:
each direction owns a pipe, and ``splice(2)`` moves bytes socket → pipe →
socket inside the kernel. It reads a direction again only once its pipe is
drained, so a slow receiver back-pressures the sender through TCP.

:class:`StreamRelay` (terminated TLS, egress, or ``relay: stream``) joins two
asyncio transports with :class:`Half` protocols: ``data_received`` writes to
the other side; flow control is ``pause_writing`` on one side pausing
*reading* on the other.

File-descriptor hygiene (the fd leak seen with uvloop and splice under churn in
the peer baselines): every reader/writer registered on the loop is removed
*before* its fd is closed, and sockets are closed through their ``socket``
objects (which forget their fd number), never by number, so a recycled fd
number is never touched twice. The relay owns both sockets from the moment it
is constructed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
from typing import cast

__all__ = ["Half", "SpliceRelay", "StreamRelay", "pooled_pipes", "splice_supported"]

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_PIPE_SIZE = 1 << 20
_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTUNREACH)


#: drained pipes kept for the next connection (two pipe2 + two fcntl + four
#: close calls saved per connection); a pipe with bytes left in it is closed
_POOL: list[tuple[int, int, int]] = []
_POOL_MAX = 256


def _take_pipe() -> tuple[int, int, int]:
    if _POOL:
        return _POOL.pop()
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        size = 1 << 16
    return r, w, size


def _give_pipe(r: int, w: int, size: int, *, empty: bool) -> None:
    if empty and len(_POOL) < _POOL_MAX:
        _POOL.append((r, w, size))
        return
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def pooled_pipes() -> int:
    """How many idle pipes the pool holds (two fds each)."""
    return len(_POOL)


def splice_supported() -> bool:
    return hasattr(os, "splice")


class _Direction:
    __slots__ = (
        "chunk",
        "dst",
        "eof",
        "finished",
        "loop",
        "owner",
        "pending",
        "pipe_r",
        "pipe_w",
        "reading",
        "src",
        "total",
        "writing",
    )

    def __init__(
        self, owner: SpliceRelay, loop: asyncio.AbstractEventLoop, src: int, dst: int
    ) -> None:
        self.pending = 0
        self.owner = owner
        self.loop = loop
        self.src = src
        self.dst = dst
        self.pipe_r, self.pipe_w, self.chunk = _take_pipe()
        self.pending = 0
        self.total = 0
        self.eof = False
        self.finished = False
        self.reading = False
        self.writing = False

    def start(self) -> None:
        self.loop.add_reader(self.src, self._readable)
        self.reading = True

    def _readable(self) -> None:
        try:
            n = os.splice(self.src, self.pipe_w, self.chunk, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            self.owner._fail(exc)
            return
        if n == 0:
            self.eof = True
            self._stop_reading()
        else:
            self.pending += n
            self.total += n
        self._flush()

    def _writable(self) -> None:
        self._flush()

    def _flush(self) -> None:
        while self.pending:
            try:
                n = os.splice(self.pipe_r, self.dst, self.pending, flags=_FLAGS)
            except BlockingIOError:
                if self.reading:
                    self._stop_reading()
                if not self.writing:
                    self.loop.add_writer(self.dst, self._writable)
                    self.writing = True
                return
            except OSError as exc:
                self.owner._fail(exc)
                return
            self.pending -= n
        if self.writing:
            self.loop.remove_writer(self.dst)
            self.writing = False
        if self.eof:
            self._finish()
        elif not self.reading:
            self.loop.add_reader(self.src, self._readable)
            self.reading = True

    def _stop_reading(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src)
            self.reading = False

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        with contextlib.suppress(OSError):
            self.owner._socket(self.dst).shutdown(socket.SHUT_WR)
        self.owner._direction_done()

    def close(self) -> None:
        self._stop_reading()
        if self.writing:
            self.loop.remove_writer(self.dst)
            self.writing = False
        if self.pipe_r >= 0:
            _give_pipe(self.pipe_r, self.pipe_w, self.chunk, empty=self.pending == 0)
        self.pipe_r = self.pipe_w = -1


class SpliceRelay:
    """Zero-copy relay between two connected non-blocking TCP sockets (see module doc)."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self._done: asyncio.Future[None] | None = None
        self._dirs: tuple[_Direction, _Direction] | None = None
        self._finished = 0
        self.error: OSError | None = None

    def _socket(self, fd: int) -> socket.socket:
        return self.client if fd == self.client.fileno() else self.upstream

    def _fail(self, exc: OSError) -> None:
        if self.error is None and exc.errno not in _GONE:
            self.error = exc
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _direction_done(self) -> None:
        self._finished += 1
        if self._finished == 2 and self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def run(self) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        try:
            cfd, ufd = self.client.fileno(), self.upstream.fileno()
            up = _Direction(self, loop, cfd, ufd)
            try:
                down = _Direction(self, loop, ufd, cfd)
            except OSError:
                up.close()
                raise
            self._dirs = (up, down)
            up.start()
            down.start()
            await self._done
            return up.total, down.total
        finally:
            if self._dirs is not None:
                for d in self._dirs:
                    d.close()
            self.client.close()
            self.upstream.close()


class Half(asyncio.Protocol):
    """One side of a :class:`StreamRelay`; reading stays paused until it is paired."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.received = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._eof = False
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:  # not paired yet (uvloop may deliver before pause_reading takes effect)
            self._early.append(data)

    def flush_early(self) -> None:
        """Hand bytes that arrived before pairing to the peer, in order."""
        early, self._early = self._early, []
        if early and self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(b"".join(early))

    def eof_received(self) -> bool | None:
        self._eof = True
        if self.peer is None:
            return True  # propagated when paired
        keep = self._propagate_eof()
        if self.transport is not None and self.transport.get_extra_info("sslcontext") is not None:
            return None  # TLS transports close on EOF whatever we return
        return keep

    def _propagate_eof(self) -> bool:
        """Half-close the peer's write side; False when the connection is finished."""
        peer = self.peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return False
        if peer._eof or not peer.transport.can_write_eof():
            peer.transport.close()  # both directions done (or no half-close): flush and close
            return False
        peer.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.peer is not None:
            self.peer.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class StreamRelay:
    """Relay between two asyncio transports driven by :class:`Half` protocols."""

    def __init__(self, client: Half, upstream: Half) -> None:
        self.client = client
        self.upstream = upstream

    async def run(self) -> tuple[int, int]:
        c, u = self.client, self.upstream
        c.peer, u.peer = u, c
        try:
            c.flush_early()
            u.flush_early()
            for h in (c, u):
                if h._eof and not h._propagate_eof() and h.transport is not None:
                    h.transport.close()
            for h in (c, u):
                if h.transport is not None and not h.transport.is_closing():
                    h.transport.resume_reading()
            # a side that closed before pairing closes the other
            for h in (c, u):
                if h.closed.done() and h.peer is not None:
                    h.peer.close()
            await asyncio.gather(c.closed, u.closed)
        finally:
            c.close()
            u.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.gather(c.closed, u.closed), 1.0)
        return c.received, u.received
