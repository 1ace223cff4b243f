"""Moving bytes between two connections once routing is decided.

Two relays, one contract — :meth:`run` returns ``(bytes client→upstream,
bytes upstream→client)`` once both directions are finished (each side's EOF
is propagated as a half-close), or either side failed, or the connection sat
idle for ``idle_timeout``; every file descriptor is closed when it returns,
and cancelling :meth:`run` tears the connection down.

* :class:`SpliceRelay` (passthrough of plain TCP, Linux) never copies payload
  into Python: each direction owns a pipe, and ``splice(2)`` moves bytes
  socket → pipe → socket inside the kernel. A direction reads again only once
  its pipe is drained, so a slow receiver back-pressures the sender through TCP.
* :class:`CopyRelay` (terminated TLS, egress tunnels, or ``relay: copy``) works
  on sockets directly, plain or :class:`ssl.SSLSocket` on either side: one
  ``recv_into`` (decrypting, for TLS) into a fixed 16 KiB buffer per direction
  and one ``send`` (encrypting) — no asyncio transports, protocols or memory
  BIOs in the path, which is what made terminated connections 3x dearer than
  HAProxy's. A blocked receiver stops the sender's reads (back-pressure); a
  TLS side that needs the opposite readiness (``SSLWantWrite`` on read,
  ``SSLWantRead`` on write) waits for exactly that.

**Half-close across TLS.** CPython's only shutdown call for TLS sends
close_notify and then *reads* for the peer's, discarding application data
still in flight, so a TLS side is half-closed with a TCP FIN (``SHUT_WR``)
instead; gateway contexts set :data:`ssl.OP_IGNORE_UNEXPECTED_EOF`
(:mod:`atoll_gateway.identity`) so the receiving gateway reads that FIN as
end of stream and keeps writing the other direction. The trade-off: a TLS
stream cut by an on-path FIN looks like a clean end, as it would in plain TCP.

**Accounting and idleness** (:class:`RelayWatch`, both relays): every
``tick`` the totals are compared with the last report; progress goes to
``on_progress`` (live byte counters), and ``idle_timeout`` seconds without a
byte in either direction end the relay with :attr:`timed_out` set — checked
at tick granularity, so the close happens between ``idle_timeout`` and
``idle_timeout + tick``. Nothing runs per chunk.

File-descriptor hygiene (the fd leak seen with uvloop and splice under churn in
the peer baselines): every reader/writer registered on the loop is removed
*before* its fd is closed, and sockets are closed through their ``socket``
objects (which forget their fd number), never by number, so a recycled fd
number is never touched twice. A relay owns both sockets from the moment it
is constructed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import os
import socket
import ssl
import struct
from collections.abc import Callable

__all__ = [
    "BUFFER_SIZE",
    "CopyRelay",
    "ProgressCallback",
    "RelayWatch",
    "SpliceRelay",
    "pooled_pipes",
    "splice_supported",
]

#: per direction of a :class:`CopyRelay` (one TLS record's plaintext, HAProxy's bufsize)
BUFFER_SIZE = 16 * 1024
#: reads per wake-up before yielding to other connections
_BATCH = 16
#: ``(new bytes client→upstream, new bytes upstream→client)`` since the last call
ProgressCallback = Callable[[int, int], None]

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_PIPE_SIZE = 1 << 20
_LINGER_RESET = struct.pack("ii", 1, 0)
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


def _abort(*socks: socket.socket) -> None:
    """Make the coming close a reset: a failed side is passed on as a failure, not an EOF."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def splice_supported() -> bool:
    return hasattr(os, "splice")


class RelayWatch:
    """Tick-driven byte accounting and idle timeout, shared by both relays (module doc)."""

    def __init__(
        self,
        *,
        idle_timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        tick: float = 5.0,
    ) -> None:
        if idle_timeout is not None:
            tick = min(tick, idle_timeout)
        self.idle_timeout = idle_timeout
        self.on_progress = on_progress
        self.tick = tick
        self.timed_out = False
        self._reported = (0, 0)
        self._idle = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[None] | None = None
        self._totals: Callable[[], tuple[int, int]] = lambda: (0, 0)

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[None],
        totals: Callable[[], tuple[int, int]],
    ) -> None:
        self._done, self._totals = done, totals
        if self.idle_timeout is not None or self.on_progress is not None:
            self._timer = loop.call_later(self.tick, self._on_tick, loop)

    def _on_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        totals = self._totals()
        self._idle = self._idle + self.tick if totals == self._reported else 0.0
        self.report(totals)
        if self.idle_timeout is not None and self._idle >= self.idle_timeout:
            self.timed_out = True
            if self._done is not None and not self._done.done():
                self._done.set_result(None)
            return
        self._timer = loop.call_later(self.tick, self._on_tick, loop)

    def report(self, totals: tuple[int, int]) -> None:
        """Hand the bytes moved since the last report to ``on_progress``."""
        up, down = totals
        last_up, last_down = self._reported
        if self.on_progress is not None and (up != last_up or down != last_down):
            self.on_progress(up - last_up, down - last_down)
        self._reported = totals

    def stop(self, totals: tuple[int, int]) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.report(totals)


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

    def __init__(
        self, client: socket.socket, upstream: socket.socket, watch: RelayWatch | None = None
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.watch = watch or RelayWatch()
        self._done: asyncio.Future[None] | None = None
        self._dirs: tuple[_Direction, _Direction] | None = None
        self._finished = 0
        self.error: OSError | None = None
        #: a side failed (reset, error): the other side is reset too, not closed
        self.failed = False

    def _socket(self, fd: int) -> socket.socket:
        return self.client if fd == self.client.fileno() else self.upstream

    def _fail(self, exc: OSError) -> None:
        if self.error is None and exc.errno not in _GONE:
            self.error = exc
        self.failed = True
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
            self.watch.start(loop, self._done, self.totals)
            await self._done
            return up.total, down.total
        finally:
            self.watch.stop(self.totals())
            if self._dirs is not None:
                for d in self._dirs:
                    d.close()
            if self.failed:
                _abort(self.client, self.upstream)
            self.client.close()
            self.upstream.close()

    def totals(self) -> tuple[int, int]:
        if self._dirs is None:
            return 0, 0
        return self._dirs[0].total, self._dirs[1].total


# -- CopyRelay ------------------------------------------------------------------------

#: what a :class:`_Pump` waits for before it can go on
_IDLE, _SRC_READABLE, _SRC_WRITABLE, _DST_WRITABLE, _DST_READABLE, _DONE = range(6)
_WANT_READ = (BlockingIOError, InterruptedError, ssl.SSLWantReadError)
_WANT_WRITE = (BlockingIOError, InterruptedError, ssl.SSLWantWriteError)


class _End:
    """One socket of a :class:`CopyRelay` and its loop registrations.

    ``outgoing`` reads from this socket, ``incoming`` writes to it; the socket
    wants readability when ``outgoing`` waits to read (or ``incoming``'s TLS
    write needs a read), writability in the mirror cases.
    """

    __slots__ = (
        "fd",
        "incoming",
        "loop",
        "outgoing",
        "pending",
        "reader",
        "recv_into",
        "send",
        "sock",
        "writer",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        # the C methods, without ssl.SSLSocket's Python wrappers (a third of a
        # terminated connection's CPU); the public ones where CPython differs
        obj = getattr(sock, "_sslobj", None) if isinstance(sock, ssl.SSLSocket) else None
        self.recv_into: Callable[[bytearray], int]
        self.send: Callable[[memoryview], int]
        self.pending: Callable[[], int] | None
        if obj is not None and hasattr(obj, "read") and hasattr(obj, "write"):
            self.recv_into = functools.partial(obj.read, BUFFER_SIZE)
            self.send, self.pending = obj.write, obj.pending
        else:
            self.recv_into, self.send = sock.recv_into, sock.send
            self.pending = getattr(sock, "pending", None)
        self.reader = False
        self.writer = False
        self.outgoing: _Pump | None = None
        self.incoming: _Pump | None = None

    def sync(self) -> None:
        out, inc = self.outgoing, self.incoming
        assert out is not None and inc is not None
        read = out.wait == _SRC_READABLE or inc.wait == _DST_READABLE
        write = out.wait == _SRC_WRITABLE or inc.wait == _DST_WRITABLE
        if read != self.reader:
            if read:
                self.loop.add_reader(self.fd, self._readable)
            else:
                self.loop.remove_reader(self.fd)
            self.reader = read
        if write != self.writer:
            if write:
                self.loop.add_writer(self.fd, self._writable)
            else:
                self.loop.remove_writer(self.fd)
            self.writer = write

    def _readable(self) -> None:
        out, inc = self.outgoing, self.incoming
        if out is not None and out.wait == _SRC_READABLE:
            out.step()
        if inc is not None and inc.wait == _DST_READABLE:
            inc.step()

    def _writable(self) -> None:
        out, inc = self.outgoing, self.incoming
        if inc is not None and inc.wait == _DST_WRITABLE:
            inc.step()
        if out is not None and out.wait == _SRC_WRITABLE:
            out.step()

    def unregister(self) -> None:
        if self.reader:
            self.loop.remove_reader(self.fd)
            self.reader = False
        if self.writer:
            self.loop.remove_writer(self.fd)
            self.writer = False

    def half_close(self) -> None:
        """No more bytes to this socket: a FIN (for TLS too — see the module doc)."""
        with contextlib.suppress(OSError):
            # socket.socket's own shutdown: SSLSocket.shutdown would drop the TLS state
            socket.socket.shutdown(self.sock, socket.SHUT_WR)


class _Pump:
    """One direction of a :class:`CopyRelay`: read ``src`` into a buffer, send it to ``dst``."""

    __slots__ = ("buf", "dst", "owner", "pending", "src", "total", "view", "wait")

    def __init__(self, owner: CopyRelay, src: _End, dst: _End, prefix: bytes) -> None:
        self.owner = owner
        self.src = src
        self.dst = dst
        self.buf = bytearray(BUFFER_SIZE)
        self.view = memoryview(self.buf)
        #: bytes read but not yet accepted by ``dst`` (same object retried for TLS)
        self.pending: memoryview | None = memoryview(prefix) if prefix else None
        self.total = 0
        self.wait = _IDLE
        src.outgoing = self
        dst.incoming = self

    def _set(self, wait: int) -> None:
        if wait != self.wait:
            self.wait = wait
            self.src.sync()
            self.dst.sync()

    def step(self) -> None:
        """Flush what is pending, then read and forward until something would block."""
        if self.wait == _DONE or self.owner.closed:
            return
        if self.pending is not None and not self._flush():
            return
        src = self.src
        recv_into, buf = src.recv_into, self.buf
        for _ in range(_BATCH):
            try:
                n = recv_into(buf)
            except _WANT_READ:
                self._set(_SRC_READABLE)
                return
            except ssl.SSLWantWriteError:
                self._set(_SRC_WRITABLE)
                return
            except ssl.SSLZeroReturnError:
                n = 0
            except OSError as exc:  # ssl.SSLError included; a reset under TLS is SSLEOFError
                self.owner.fail(exc)
                return
            if n == 0:
                self._set(_DONE)
                self.dst.half_close()
                self.owner.direction_done()
                return
            self.total += n
            self.pending = self.view[:n]
            if not self._flush():
                return
            if n < BUFFER_SIZE and not (src.pending is not None and src.pending()):
                # a short read drained the socket (a TLS read returns one record, and
                # a full record fills the buffer): wait for readiness rather than pay
                # for a read that fails
                self._set(_SRC_READABLE)
                return
        # a busy sender: let other connections run, then carry on
        self._set(_IDLE)
        src.loop.call_soon(self.step)

    def _flush(self) -> bool:
        """Send ``pending``; False when ``dst`` would block (the wait is set) or failed."""
        send = self.dst.send
        pending = self.pending
        while pending is not None:
            try:
                sent = send(pending)
            except _WANT_WRITE:
                self._set(_DST_WRITABLE)
                return False
            except ssl.SSLWantReadError:
                self._set(_DST_READABLE)
                return False
            except OSError as exc:
                self.owner.fail(exc)
                return False
            pending = None if sent >= len(pending) else pending[sent:]
            self.pending = pending
        return True


class CopyRelay:
    """Relay between two connected non-blocking sockets, plain or TLS (see module doc).

    TLS sockets must have completed their handshake. ``prefix`` is sent to the
    upstream before anything relayed (a PROXY protocol header).
    """

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        watch: RelayWatch | None = None,
        *,
        prefix: bytes = b"",
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.watch = watch or RelayWatch()
        self.prefix = prefix
        self.error: OSError | None = None
        self.closed = False
        #: a side failed (reset, error): the other side is reset too, not closed
        self.failed = False
        self._done: asyncio.Future[None] | None = None
        self._pumps: tuple[_Pump, _Pump] | None = None
        self._finished = 0

    def fail(self, exc: OSError) -> None:
        if self.error is None and exc.errno not in _GONE and not _benign_tls(exc):
            self.error = exc
        self.closed = self.failed = True  # both pumps stop at once
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def direction_done(self) -> None:
        self._finished += 1
        if self._finished == 2 and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def totals(self) -> tuple[int, int]:
        if self._pumps is None:
            return 0, 0
        return self._pumps[0].total, self._pumps[1].total

    async def run(self) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        ends: tuple[_End, _End] | None = None
        try:
            ends = (_End(loop, self.client), _End(loop, self.upstream))
            up = _Pump(self, ends[0], ends[1], self.prefix)
            down = _Pump(self, ends[1], ends[0], b"")
            self._pumps = (up, down)
            self.watch.start(loop, self._done, self.totals)
            up.step()
            down.step()
            await self._done
            return self.totals()
        finally:
            self.closed = True
            self.watch.stop(self.totals())
            if ends is not None:
                for end in ends:
                    end.unregister()
            if self.failed:
                _abort(self.client, self.upstream)
            self.client.close()
            self.upstream.close()


def _benign_tls(exc: OSError) -> bool:
    """A TLS peer that vanished (OpenSSL reports a reset as an EOF without close_notify;
    a FIN without it reads as end of stream, see the module doc) is a reset, not an error."""
    return isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
