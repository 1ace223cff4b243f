"""Moving bytes between two connections once routing is decided.

Two relays, one contract — :meth:`run` returns ``(bytes client→upstream,
bytes upstream→client)`` once both directions are finished (each side's EOF
is propagated as a half-close), or either side failed (the other side is then
reset, not closed: a failure must not look like a clean end), or the
connection sat idle for ``idle_timeout``; every file descriptor is closed when
it returns, and cancelling :meth:`run` tears the connection down.

* :class:`SpliceRelay` (passthrough of plain TCP, Linux) never copies payload
  into Python: each direction owns a pipe, and ``splice(2)`` moves bytes
  socket → pipe → socket inside the kernel. A direction reads again only once
  its pipe is drained, so a slow receiver back-pressures the sender through TCP.
* :class:`CopyRelay` (terminated TLS, egress tunnels, or ``relay: copy``) works
  on sockets directly, plain or :class:`ssl.SSLSocket` on either side: one
  ``recv_into`` (decrypting, for TLS) into a 16 KiB buffer per direction (64
  KiB once a plain source has filled it: a bulk stream) and one ``send``
  (encrypting) — no asyncio transports, protocols or memory
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

**Accounting and idleness**: :class:`~atoll_gateway.relaywatch.RelayWatch`
(a timer, nothing per chunk). **Readiness**: both relays are driven by the
loop's :class:`~atoll_gateway.poller.Poller` (one epoll set for all
connection sockets), each direction a small state machine — a pump — that
moves bytes until something would block and then waits for exactly that.

File-descriptor hygiene (the fd leak seen with uvloop and splice under churn in
the peer baselines): the poller forgets every socket *before* its fd is
closed (without a syscall: the close itself drops it from the epoll set, and
the last EOF skips its half-close for the same reason), and sockets are
closed through their ``socket`` objects (which forget their fd number), never
by number, so a recycled fd number is never touched twice. A relay owns both
sockets from the moment it is constructed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import logging
import os
import socket
import ssl
import struct
from collections.abc import Callable

from atoll_gateway.poller import Poller, poller
from atoll_gateway.relaywatch import RelayWatch

__all__ = [
    "BUFFER_SIZE",
    "BULK_SIZE",
    "CopyRelay",
    "SpliceRelay",
    "abort",
    "pooled_pipes",
    "splice_supported",
]

log = logging.getLogger("atoll.gateway.relay")

#: per direction of a :class:`CopyRelay` (one TLS record's plaintext, HAProxy's bufsize)
BUFFER_SIZE = 16 * 1024
#: the buffer of a direction whose plain source filled the first one (a bulk stream)
BULK_SIZE = 4 * BUFFER_SIZE
#: reads per wake-up before a busy direction yields to other connections
_BATCH = 16
#: ``TCP_NOTSENT_LOWAT`` of a splice relay's sockets: a socket takes more only while
#: less than this is queued unsent. Without it a bulk direction spliced up to the whole
#: send buffer (MiBs) at once, and the kernel then sent it piecemeal as ACKs came back —
#: in the *receiver's* softirq, on its CPU: on a shared box the client or backend paid
#: for the gateway's transmits (passthrough bulk 0.92x HAProxy's MB/s; 1.06x with
#: 64 KiB). The copy relays send at most 64 KiB per call already.
NOTSENT_LOWAT = 64 * 1024
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_PIPE_SIZE = 1 << 20
_LINGER_RESET = struct.pack("ii", 1, 0)
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's number
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


def abort(*socks: socket.socket) -> None:
    """Make the coming close a reset: a failed side is passed on as a failure, not an EOF."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def splice_supported() -> bool:
    return hasattr(os, "splice")


# -- ends and pumps ---------------------------------------------------------------------

#: what a pump waits for before it can go on
_IDLE, _SRC_READABLE, _SRC_WRITABLE, _DST_WRITABLE, _DST_READABLE, _DONE = range(6)
_WANT_READ = (BlockingIOError, InterruptedError, ssl.SSLWantReadError)
_WANT_WRITE = (BlockingIOError, InterruptedError, ssl.SSLWantWriteError)


class _End:
    """One socket of a relay and its interest in the :class:`~atoll_gateway.poller.Poller`.

    ``outgoing`` reads from this socket, ``incoming`` writes to it; the socket
    is watched for readability when ``outgoing`` waits to read (or
    ``incoming``'s TLS write needs a read), for writability in the mirror cases.
    """

    __slots__ = (
        "buffered",
        "fd",
        "incoming",
        "outgoing",
        "poller",
        "recv_into",
        "send",
        "sock",
    )

    def __init__(self, poller: Poller, sock: socket.socket) -> None:
        self.poller = poller
        self.sock = sock
        self.fd = sock.fileno()
        # the C methods, without ssl.SSLSocket's Python wrappers (a third of a
        # terminated connection's CPU); the public ones where CPython differs
        obj = getattr(sock, "_sslobj", None) if isinstance(sock, ssl.SSLSocket) else None
        self.recv_into: Callable[[bytearray | memoryview], int]
        self.send: Callable[[memoryview], int]
        self.buffered: Callable[[], int] | None
        if obj is not None and hasattr(obj, "read") and hasattr(obj, "write"):
            self.recv_into = functools.partial(obj.read, BUFFER_SIZE)
            self.send, self.buffered = obj.write, obj.pending
        else:
            self.recv_into, self.send = sock.recv_into, sock.send
            self.buffered = getattr(sock, "pending", None)  # SSLSocket.pending(), if any
        self.outgoing: _Pump | None = None
        self.incoming: _Pump | None = None

    def sync(self) -> None:
        out, inc = self.outgoing, self.incoming
        assert out is not None and inc is not None
        self.poller.watch(
            self.fd,
            self,
            read=out.wait == _SRC_READABLE or inc.wait == _DST_READABLE,
            write=out.wait == _SRC_WRITABLE or inc.wait == _DST_WRITABLE,
        )

    def readable(self) -> None:
        out, inc = self.outgoing, self.incoming
        if out is not None and out.wait == _SRC_READABLE:
            out.step()
        if inc is not None and inc.wait == _DST_READABLE:
            inc.step()

    def writable(self) -> None:
        out, inc = self.outgoing, self.incoming
        if inc is not None and inc.wait == _DST_WRITABLE:
            inc.step()
        if out is not None and out.wait == _SRC_WRITABLE:
            out.step()

    def crashed(self, exc: Exception) -> None:
        owner = self.outgoing.owner if self.outgoing is not None else None
        if owner is not None:
            owner.crash(exc)

    def forget(self) -> None:
        """Before the socket closes: the close takes it out of the epoll set (no dup exists)."""
        self.poller.forget_closing(self.fd)

    def half_close(self) -> None:
        """No more bytes to this socket: a FIN (for TLS too — see the module doc)."""
        with contextlib.suppress(OSError):
            # socket.socket's own shutdown: SSLSocket.shutdown would drop the TLS state
            socket.socket.shutdown(self.sock, socket.SHUT_WR)


class _Pump:
    """One direction of a relay: ``step`` moves bytes from ``src`` to ``dst`` until
    something would block, then sets ``wait`` to what it needs."""

    __slots__ = ("dst", "owner", "src", "total", "wait")

    def __init__(self, owner: _Relay, src: _End, dst: _End) -> None:
        self.owner = owner
        self.src = src
        self.dst = dst
        self.total = 0
        self.wait = _IDLE
        src.outgoing = self
        dst.incoming = self

    def _set(self, wait: int) -> None:
        if wait != self.wait:
            self.wait = wait
            self.src.sync()
            self.dst.sync()

    def _eof(self, *, half_close: bool = True) -> None:
        """This direction is finished; ``half_close``: pass the EOF on to ``dst``."""
        if self.owner.one_done:
            # the last EOF: the relay ends now — its close sends the FIN and drops the
            # fds from the epoll set, so no shutdown and no unregistering first
            self.wait = _DONE
        else:
            self._set(_DONE)
            if half_close:
                self.dst.half_close()
        self.owner.direction_done()

    def _yield(self) -> None:
        """A busy sender: let other connections run, then carry on."""
        self._set(_IDLE)
        asyncio.get_running_loop().call_soon(self.step)

    def step(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Give back what the pump holds (called once, when the relay ends)."""


class _CopyPump(_Pump):
    """Read into a buffer (decrypting, for TLS), send from it (encrypting).

    A subclass may keep ``room`` bytes free at the head of the buffer and
    ``stamp`` a header into them for each chunk read (the tunnel's frames,
    :mod:`atoll_gateway.tunnelrelay`), and say what the source's end means
    (:meth:`_source_done`)."""

    __slots__ = ("body", "buf", "pending", "room", "stamp", "view")

    def __init__(self, owner: _Relay, src: _End, dst: _End, prefix: bytes) -> None:
        super().__init__(owner, src, dst)
        self.buf = bytearray(BUFFER_SIZE)
        self.view = memoryview(self.buf)
        #: bytes kept free at the head of ``buf`` for ``stamp`` (0: none)
        self.room = 0
        self.stamp: Callable[[bytearray, int], None] | None = None
        #: where reads land: ``buf`` after ``room``
        self.body = self.view
        #: bytes read but not yet accepted by ``dst`` (same object retried for TLS)
        self.pending: memoryview | None = memoryview(prefix) if prefix else None

    def step(self) -> None:
        if self.wait == _DONE or self.owner.closed:
            return
        if self.pending is not None and not self._flush():
            return
        src = self.src
        recv_into, buf, view, body = src.recv_into, self.buf, self.view, self.body
        send, tls_buffered, room, stamp = self.dst.send, src.buffered, self.room, self.stamp
        for _ in range(_BATCH):
            try:
                n = recv_into(body)
            except OSError as exc:
                n = self._read_failed(exc)
                if n < 0:
                    return
            if n == 0:
                self._source_done()
                return
            self.total += n
            if stamp is not None:
                stamp(buf, n)
            size = n + room
            chunk = view[:size]
            # the common case inline (all of it sent at once); the rest in _flush
            try:
                sent = send(chunk)
            except OSError:  # would block, TLS wants the other readiness, or failed
                sent = 0
            if sent < size and not self._send_rest(chunk, sent):
                return
            if n == len(body):
                if tls_buffered is None and len(buf) < BULK_SIZE:
                    self._grow()
                    buf, view, body = self.buf, self.view, self.body
            elif tls_buffered is None or not tls_buffered():
                # a short read drained the socket (a TLS read returns one record, and
                # a full record fills the buffer): wait for readiness rather than pay
                # for a read that fails
                if self.wait != _SRC_READABLE:
                    self._set(_SRC_READABLE)
                return
        self._yield()

    def _source_done(self) -> None:
        """The source ended (EOF): pass it on."""
        self._eof()

    def _grow(self) -> None:
        """A plain source filled the buffer (nothing is pending in it): a bulk stream,
        read four records' worth at a time from now on — one read and one send (or
        TLS write of four records) instead of four of each. Streams that stay small
        keep :data:`BUFFER_SIZE`."""
        self.buf = bytearray(BULK_SIZE)
        self.view = memoryview(self.buf)
        self.body = self.view[self.room :]

    def _read_failed(self, exc: OSError) -> int:
        """A read of ``src`` raised (the uncommon path, kept out of the loops): 0 for a
        clean TLS end of stream, -1 once the pump waits for readiness or has failed."""
        if isinstance(exc, _WANT_READ):
            self._set(_SRC_READABLE)
        elif isinstance(exc, ssl.SSLWantWriteError):
            self._set(_SRC_WRITABLE)
        elif isinstance(exc, ssl.SSLZeroReturnError):
            return 0
        else:  # ssl.SSLError included; a reset under TLS is SSLEOFError
            self._src_failed(exc)
        return -1

    def _src_failed(self, exc: OSError) -> None:
        """Reading ``src`` failed: the relay fails (a subclass may contain it)."""
        self.owner.fail(exc)

    def _dst_failed(self, exc: OSError) -> None:
        """Sending to ``dst`` failed: the relay fails (a subclass may contain it)."""
        self.owner.fail(exc)

    def _send_rest(self, chunk: memoryview, sent: int) -> bool:
        """``dst`` took only ``sent`` bytes of ``chunk``: keep the rest and flush it;
        False when ``dst`` would block (the wait is set) or failed."""
        self.pending = chunk[sent:] if sent else chunk
        return self._flush()

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
                self._dst_failed(exc)
                return False
            pending = None if sent >= len(pending) else pending[sent:]
            self.pending = pending
        return True


class _SplicePump(_Pump):
    """socket → pipe → socket with ``splice(2)``; the bytes never enter Python."""

    __slots__ = ("chunk", "pending", "pipe_r", "pipe_w")

    def __init__(self, owner: _Relay, src: _End, dst: _End) -> None:
        super().__init__(owner, src, dst)
        self.pipe_r, self.pipe_w, self.chunk = _take_pipe()
        #: bytes in the pipe, not yet spliced to ``dst``
        self.pending = 0

    def step(self) -> None:
        if self.wait == _DONE or self.owner.closed:
            return
        if self.pending and not self._flush():
            return
        src_fd, pipe_w, chunk = self.src.fd, self.pipe_w, self.chunk
        for _ in range(_BATCH):
            try:
                n = os.splice(src_fd, pipe_w, chunk, flags=_FLAGS)
            except BlockingIOError:
                self._set(_SRC_READABLE)
                return
            except OSError as exc:
                self.owner.fail(exc)
                return
            if n == 0:
                self._eof()
                return
            self.pending += n
            self.total += n
            if not self._flush():
                return
            if n < chunk:  # drained: wait rather than pay for a failing splice
                self._set(_SRC_READABLE)
                return
        self._yield()

    def _flush(self) -> bool:
        while self.pending:
            try:
                n = os.splice(self.pipe_r, self.dst.fd, self.pending, flags=_FLAGS)
            except BlockingIOError:
                self._set(_DST_WRITABLE)
                return False
            except OSError as exc:
                self.owner.fail(exc)
                return False
            self.pending -= n
        return True

    def release(self) -> None:
        if self.pipe_r >= 0:
            _give_pipe(self.pipe_r, self.pipe_w, self.chunk, empty=self.pending == 0)
        self.pipe_r = self.pipe_w = -1


# -- relays -----------------------------------------------------------------------------


class _Relay:
    """What both relays share: the run loop, failure and end-of-stream bookkeeping."""

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        watch: RelayWatch | None = None,
        *,
        on_finish: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.watch = watch or RelayWatch()
        self.on_finish = on_finish
        self.error: OSError | None = None
        self.closed = False
        #: a side failed (reset, error): the other side is reset too, not closed
        self.failed = False
        self._done: asyncio.Future[None] | None = None
        self._pumps: tuple[_Pump, _Pump] | None = None
        self._finished = 0

    def _make_pumps(self, client: _End, upstream: _End) -> tuple[_Pump, _Pump]:
        raise NotImplementedError

    def note(self, exc: OSError) -> None:
        """Keep ``exc`` as the relay's error unless it is a peer going away (or one
        is kept already)."""
        if self.error is None and exc.errno not in _GONE and not _benign_tls(exc):
            self.error = exc

    def fail(self, exc: OSError) -> None:
        self.note(exc)
        self.closed = self.failed = True  # both pumps stop at once
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def crash(self, exc: Exception) -> None:
        """A bug, not a network event: end the connection (reset), keep the error."""
        self.fail(exc if isinstance(exc, OSError) else OSError(f"{type(exc).__name__}: {exc}"))

    @property
    def reset(self) -> bool:
        """The connection ended in a reset (one side failed) rather than cleanly."""
        return self.failed

    @property
    def one_done(self) -> bool:
        """One direction has already finished."""
        return self._finished > 0

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
            ends = self._make_ends(poller(loop))
            self._pumps = self._make_pumps(*ends)
            self.watch.start(loop, self._done, self.totals)
            for pump in self._pumps:
                pump.step()
            await self._done
            return self.totals()
        finally:
            self.closed = True
            self.watch.stop(self.totals())
            if self.on_finish is not None:
                try:
                    self.on_finish()
                except Exception:  # a hook's bug must not keep the sockets open
                    log.exception("relay on_finish hook failed")
            if self._pumps is not None:
                for pump in self._pumps:
                    pump.release()
            self._close(ends)

    def _make_ends(self, p: Poller) -> tuple[_End, _End]:
        return _End(p, self.client), _End(p, self.upstream)

    def _close(self, ends: tuple[_End, _End] | None) -> None:
        """Close both sockets (reset them if the relay failed)."""
        if ends is not None:
            for end in ends:
                end.forget()  # before the close: a recycled fd must not inherit it
        if self.failed:
            abort(self.client, self.upstream)
        self.client.close()
        self.upstream.close()


class SpliceRelay(_Relay):
    """Zero-copy relay between two connected non-blocking TCP sockets (module doc)."""

    def _make_pumps(self, client: _End, upstream: _End) -> tuple[_Pump, _Pump]:
        for end in (client, upstream):
            with contextlib.suppress(OSError):  # not TCP
                end.sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
        up = _SplicePump(self, client, upstream)
        try:
            return up, _SplicePump(self, upstream, client)
        except OSError:
            up.release()
            raise


class CopyRelay(_Relay):
    """Relay between two connected non-blocking sockets, plain or TLS (module doc).

    TLS sockets must have completed their handshake. ``prefix`` is sent to the
    upstream before anything relayed (a PROXY protocol header); ``on_finish``
    runs once the relay is over, while the sockets are still open (to keep a
    TLS session for resumption).
    """

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        watch: RelayWatch | None = None,
        *,
        prefix: bytes = b"",
        on_finish: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(client, upstream, watch, on_finish=on_finish)
        self.prefix = prefix

    def _make_pumps(self, client: _End, upstream: _End) -> tuple[_Pump, _Pump]:
        return _CopyPump(self, client, upstream, self.prefix), _CopyPump(
            self, upstream, client, b""
        )


def _benign_tls(exc: OSError) -> bool:
    """A TLS peer that vanished (OpenSSL reports a reset as an EOF without close_notify;
    a FIN without it reads as end of stream, see the module doc) is a reset, not an error."""
    return isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
