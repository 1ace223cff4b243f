"""Relaying one stream of a pooled tunnel (:mod:`atoll_gateway.tunnelproto`).

:class:`TunnelRelay` joins a *stream* socket (the local client at the egress,
the endpoint at the serving gateway; plain or TLS) to a *tunnel* (an mTLS
``SSLSocket`` to the peer gateway) with the relay contract of
:mod:`atoll_gateway.relay`, except for the ending:

* the stream → tunnel direction (:class:`_FramePump`) reads at most
  ``BUFFER_SIZE - 4`` bytes behind a 4-byte gap, writes the DATA header into
  the gap and sends header and payload with one TLS write — one frame is one
  TLS record, so the other side usually reads exactly one frame per read (a
  bulk stream moves to frames of four records); the stream's EOF becomes a
  FIN frame (not a TCP FIN: the tunnel lives on);
* the tunnel → stream direction (:class:`_DeframePump`) reads records,
  forwards DATA payloads (slices of its buffer, no copy; a record that is
  whole frame, or wholly inside one, takes a short path), and turns the
  peer's FIN frame into a half-close of the stream;
* a failure of the stream socket (read or write) ends the stream → tunnel
  direction with a RESET frame (after the frame in flight, if it has not sent
  its FIN yet) and the other direction drops what still arrives; a RESET from
  the peer does the same from the other side. The stream socket is reset, the
  tunnel lives on (the protocol's "Resets keep the tunnel");
* when both directions have ended — FIN or RESET each way — the stream socket
  is closed (reset, after a RESET) and the tunnel is left **open** and out of
  the poller, ready for the next stream (:attr:`TunnelRelay.reusable`); when
  the tunnel itself failed — it closed or broke inside a stream, the peer
  broke the protocol, the idle timeout, more than ``DISCARD_LIMIT`` bytes to
  drop — both are reset, as a plain relay would do.

``prefix`` (a PROXY header at the serving gateway) goes to the stream socket
before anything from the tunnel; ``read`` holds tunnel bytes that arrived with
the control frame that opened the stream (parsed first).
"""

from __future__ import annotations

import errno
import socket
import ssl
import struct

from atoll_gateway.poller import Poller
from atoll_gateway.relay import (
    _BATCH,
    _DONE,
    _SRC_READABLE,
    BUFFER_SIZE,
    _CopyPump,
    _End,
    _Relay,
    abort,
)
from atoll_gateway.relaywatch import RelayWatch
from atoll_gateway.tunnelproto import (
    DATA,
    DISCARD_LIMIT,
    FIN,
    FIN_FRAME,
    HEADER,
    MAX_LENGTH,
    RESET,
    RESET_FRAME,
    Frame,
)

__all__ = ["TunnelRelay"]

_WORD = struct.Struct(">I")
_ENDINGS = (FIN, RESET)
_PACK = _WORD.pack_into
_DATA_BITS = DATA << 24


class _TunnelEnd(_End):
    """The tunnel's end: a finished direction sends a FIN *frame* (the pump does), never
    a TCP half-close — the connection carries the next stream."""

    __slots__ = ()

    def half_close(self) -> None:
        pass


class _FramePump(_CopyPump):
    """stream → tunnel: each read becomes one DATA frame, the EOF a FIN frame, a failed
    read a RESET frame.

    The copy pump's loop, reading behind a 4-byte gap into which each chunk's
    DATA header is stamped. The first buffer makes a frame of one TLS record
    (16 KiB of plaintext, header included); a plain stream that fills it moves
    to frames of four records (:meth:`_CopyPump._grow`)."""

    __slots__ = ("ending", "queued", "relay")

    def __init__(self, owner: TunnelRelay, src: _End, dst: _End) -> None:
        super().__init__(owner, src, dst, b"")
        #: ``owner`` as what it is (its stream-reset calls)
        self.relay = owner
        self.room = HEADER
        self.body = self.view[HEADER:]
        self.stamp = _stamp
        #: the direction's ending (FIN or RESET frame), once decided
        self.ending: bytes | None = None
        #: the ending is in ``pending`` (the frame before it has gone)
        self.queued = False

    def step(self) -> None:
        if self.ending is not None:
            if self.wait != _DONE and not self.owner.closed:
                self._finish()
            return
        super().step()

    def end_with(self, frame: bytes) -> None:
        """End the direction with ``frame`` (FIN or RESET), unless it has an ending."""
        if self.ending is None:
            self.ending = frame
            self._finish()

    def _finish(self) -> None:
        # a frame TLS has partly sent goes first (a TLS retry must repeat it whole)
        if self.pending is not None and not self._flush():
            return
        if not self.queued:
            self.queued = True
            assert self.ending is not None
            self.pending = memoryview(self.ending)
            if not self._flush():
                return
        self._eof()

    def _source_done(self) -> None:
        self.end_with(FIN_FRAME)

    def _src_failed(self, exc: OSError) -> None:
        self.relay.stream_failed(exc)


def _stamp(buf: bytearray, n: int) -> None:
    """The DATA header of an ``n``-byte chunk, into the gap before it."""
    _PACK(buf, 0, _DATA_BITS | n)


class _DeframePump(_CopyPump):
    """tunnel → stream: DATA payloads to the stream, the FIN frame as its half-close, a
    RESET frame as the stream's reset; once the stream failed, payloads are dropped."""

    __slots__ = ("discarded", "end", "head", "pos", "relay", "remaining")

    def __init__(
        self, owner: TunnelRelay, src: _End, dst: _End, prefix: bytes, read: bytes
    ) -> None:
        super().__init__(owner, src, dst, prefix)
        self.relay = owner
        #: the unparsed part of the buffer is ``buf[pos:end]`` (``read``: frames that
        #: arrived with the control frame before the relay started)
        self.buf[: len(read)] = read
        self.pos, self.end = 0, len(read)
        #: payload bytes of the current DATA frame still to come
        self.remaining = 0
        #: a header split across two reads
        self.head = bytearray()
        #: payload bytes dropped since the stream failed (-1: it has not)
        self.discarded = -1

    def discard(self) -> None:
        """The stream failed: drop what it was sent and everything still to come (the
        pump carries on reading the tunnel up to the peer's ending)."""
        if self.discarded >= 0:
            return
        self.discarded = 0
        self.pending = None
        self.dst.send = self._drop  # the stream end's sender: only this pump uses it
        if self.wait != _DONE and not self.owner.closed:
            self._yield()  # frames may wait in the buffer: parse them on a fresh step

    def _drop(self, chunk: memoryview) -> int:
        self.discarded += len(chunk)
        if self.discarded > DISCARD_LIMIT:
            raise ConnectionResetError(errno.ECONNRESET, "a failed stream's data kept coming")
        return len(chunk)

    def _dst_failed(self, exc: OSError) -> None:
        if self.discarded >= 0:  # past the discard limit: the tunnel goes too
            self.owner.fail(exc)
        else:
            self.relay.stream_failed(exc)

    def step(self) -> None:
        if self.wait == _DONE or self.owner.closed:
            return
        if self.pending is not None and not self._flush():
            return
        if self.pos < self.end and not self._parse():
            return
        src = self.src
        recv_into, buf, view, tls_buffered = src.recv_into, self.buf, self.view, src.buffered
        send, head, unpack = self.dst.send, self.head, _WORD.unpack_from
        for _ in range(_BATCH):
            try:
                n = recv_into(buf)
            except OSError as exc:
                n = self._read_failed(exc)
                if n < 0:
                    return
            if n == 0:
                self.owner.fail(ConnectionResetError(errno.ECONNRESET, "tunnel closed mid-stream"))
                return
            # the short paths: where the read's payload starts, if it is payload only
            start = -1
            remaining = self.remaining
            if head:
                pass
            elif remaining >= n:  # inside a frame larger than a record
                self.remaining = remaining - n
                start = 0
            elif not remaining and n > HEADER and unpack(buf)[0] == _DATA_BITS | (n - HEADER):
                start = HEADER  # the common case: exactly one DATA frame (one record)
            if start < 0:
                self.pos, self.end = 0, n
                if not self._parse():
                    return
            else:
                size = n - start
                self.total += size
                chunk = view[start:n]
                try:
                    sent = send(chunk)
                except OSError:
                    sent = 0
                if sent < size and not self._send_rest(chunk, sent):
                    return
            if n < BUFFER_SIZE and (tls_buffered is None or not tls_buffered()):
                if self.wait != _SRC_READABLE:
                    self._set(_SRC_READABLE)
                return
        self._yield()

    def _parse(self) -> bool:
        """Forward the frames in ``buf[pos:end]``; False when the pump must stop here
        (the stream would block, the FIN arrived, or the peer broke the protocol)."""
        view, pos, end = self.view, self.pos, self.end
        send = self.dst.send
        while pos < end:
            remaining = self.remaining
            if remaining:
                take = min(remaining, end - pos)
                self.remaining = remaining - take
                self.total += take
                chunk = view[pos : pos + take]
                pos += take
                self.pos = pos
                try:
                    sent = send(chunk)
                except OSError:
                    sent = 0
                if sent < take and not self._send_rest(chunk, sent):
                    return False
                continue
            head = self.head
            if head or end - pos < HEADER:
                part = view[pos : min(pos + HEADER - len(head), end)]
                head += part
                pos += len(part)
                if len(head) < HEADER:
                    break
                (word,) = _WORD.unpack(head)
                head.clear()
            else:
                (word,) = _WORD.unpack_from(self.buf, pos)
                pos += HEADER
            kind, length = word >> 24, word & MAX_LENGTH
            if kind == DATA and length:
                self.remaining = length
            elif kind in _ENDINGS and not length and pos == end:
                self.pos = self.end = 0
                if kind == RESET:
                    self.relay.stream_failed(
                        ConnectionResetError(errno.ECONNRESET, "the peer reset the stream")
                    )
                self._eof(half_close=self.discarded < 0)  # a failed stream gets no FIN
                return False
            else:
                self.pos = self.end = 0
                what = (
                    f"bytes after {Frame(kind).name}"
                    if kind in _ENDINGS and not length
                    else f"frame type {kind}"
                )
                self.owner.fail(OSError(errno.EPROTO, f"tunnel protocol: {what} in a stream"))
                return False
        self.pos = self.end = 0
        return True


class TunnelRelay(_Relay):
    """One stream over a pooled tunnel (module doc). ``stream_is_client``: the stream
    socket is the connection's client (egress) rather than its upstream (the serving
    gateway's endpoint) — it only orients the byte totals."""

    def __init__(
        self,
        stream: socket.socket,
        tunnel: ssl.SSLSocket,
        watch: RelayWatch | None = None,
        *,
        stream_is_client: bool,
        prefix: bytes = b"",
        read: bytes = b"",
    ) -> None:
        if len(read) > BUFFER_SIZE:  # the relay owns the sockets already: close them
            stream.close()
            tunnel.close()
            raise ValueError("more than a buffer of tunnel bytes read ahead")
        super().__init__(stream, tunnel, watch)
        self.stream_is_client = stream_is_client
        self.prefix = prefix
        self.read = read
        #: both directions ended (FIN or RESET): the tunnel is open and may carry the
        #: next stream
        self.reusable = False
        #: the stream socket failed, or the peer reset its side: the stream is reset
        self.stream_reset = False

    @property
    def reset(self) -> bool:
        return self.failed or self.stream_reset

    def stream_failed(self, exc: OSError) -> None:
        """The stream socket failed, or the peer's side did (its RESET): end the stream →
        tunnel direction with RESET unless it has ended, and drop what still comes
        for the stream (module doc)."""
        self.note(exc)
        self.stream_reset = True
        if self._pumps is not None:
            frame, deframe = self._pumps
            assert isinstance(frame, _FramePump) and isinstance(deframe, _DeframePump)
            frame.end_with(RESET_FRAME)
            deframe.discard()

    def _make_ends(self, p: Poller) -> tuple[_End, _End]:
        return _End(p, self.client), _TunnelEnd(p, self.upstream)

    def _make_pumps(self, client: _End, upstream: _End) -> tuple[_FramePump, _DeframePump]:
        return _FramePump(self, client, upstream), _DeframePump(
            self, upstream, client, self.prefix, self.read
        )

    def totals(self) -> tuple[int, int]:
        out, back = super().totals()  # stream → tunnel, tunnel → stream
        return (out, back) if self.stream_is_client else (back, out)

    def _close(self, ends: tuple[_End, _End] | None) -> None:
        stream, tunnel = self.client, self.upstream
        if ends is not None:
            ends[0].forget()
        if self.failed or ends is None or self._finished < 2:  # failed, timed out, cancelled
            if ends is not None:
                ends[1].forget()
            abort(stream, tunnel)
            stream.close()
            tunnel.close()
            return
        ends[1].poller.watch(ends[1].fd, None, read=False, write=False)  # it stays open
        if self.stream_reset:
            abort(stream)
        stream.close()
        self.reusable = True
