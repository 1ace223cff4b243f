"""Batched UDP I/O: ``recvmmsg``/``sendmmsg`` driven by the event loop (Linux).

With one ``datagram_received`` callback and one ``sendto`` per packet, the
event loop's per-packet machinery costs as much as answering the query. On
Linux, :class:`BatchUdp` instead registers the socket with ``loop.add_reader``
and, each time it is readable, drains it with ``recvmmsg(2)`` — up to
``batch`` datagrams per system call — answers them, and sends every answer
with one ``sendmmsg(2)``. The calls go through :mod:`ctypes` into preallocated
buffers: per packet, Python only copies the query out, calls the handler and
copies the answer in (lengths and addresses are set through memoryviews over
the ``mmsghdr`` arrays, no ctypes objects are created per packet).

Latency sampling: about once per ``sample_every`` packets, a whole batch is
timed (answering and sending) and its time per packet is observed.

It runs on the event loop thread, so the zone-swap argument of
:mod:`atoll_dns.server` holds unchanged: a packet is answered between two
awaits, from one compiled zone. Each readable event handles at most
``rounds`` batches before yielding, so TCP connections and snapshot applies
are not starved under load. A datagram larger than the slot (``MSG_TRUNC``)
is dropped; an answer that cannot be sent now (``EAGAIN``) is dropped, as a
full socket buffer would drop it anyway.

:func:`batch_supported` says whether this platform has the two calls; the
server falls back to a ``DatagramProtocol`` otherwise.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import socket
import sys
import time
from typing import TYPE_CHECKING

from atoll_dns.fastpath import GeoMemo, MemoEntry

if TYPE_CHECKING:
    from atoll_dns.server import PacketHandler

__all__ = ["BatchUdp", "batch_supported"]

log = logging.getLogger("atoll.dns.udp")

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
_NAME = 32  # one sockaddr slot: room for a sockaddr_in6 (28 octets), 8-aligned
_MMSG = 64  # sizeof(struct mmsghdr) on LP64 Linux


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint))


def _libc() -> ctypes.CDLL | None:
    if sys.platform != "linux" or ctypes.sizeof(_Mmsghdr) != _MMSG:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "recvmmsg") or not hasattr(libc, "sendmmsg"):
        return None
    for fn in (libc.recvmmsg, libc.sendmmsg):
        fn.restype = ctypes.c_int
    libc.recvmmsg.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    )
    libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    return libc


_LIBC = _libc()


def batch_supported() -> bool:
    return _LIBC is not None


class BatchUdp:
    """Answer a UDP socket in batches through a :class:`~atoll_dns.server.PacketHandler`.

    Memo hits (see :mod:`atoll_dns.fastpath`: a repeated query, the common case)
    are served inline from the engine's memo, without the two Python calls of
    the full path; everything else goes through ``handler.answer(query, client_ip)``.
    """

    def __init__(
        self,
        sock: socket.socket,
        handler: PacketHandler,
        *,
        batch: int = 64,
        slot: int = 4096,
        rounds: int = 8,
    ) -> None:
        if _LIBC is None:
            raise OSError("recvmmsg/sendmmsg are not available on this platform")
        self.sock = sock
        self.handler = handler
        self.batch = batch
        self.slot = slot
        self.rounds = rounds
        self.send_failures = 0
        self._budget = handler.sample_every
        self._loop: asyncio.AbstractEventLoop | None = None
        self._v6 = sock.family == socket.AF_INET6
        # sockaddr_in / sockaddr_in6 size: the kernel writes back exactly this for
        # every datagram of this socket's family, so it never needs resetting
        namelen = 28 if self._v6 else 16
        self._src: dict[bytes, str] = {}
        # receive side: one slot per datagram, one sockaddr per datagram
        self._rbuf = bytearray(batch * slot)
        self._names = bytearray(batch * _NAME)
        self._sbuf = bytearray(batch * slot)
        rbuf_addr = ctypes.addressof((ctypes.c_char * len(self._rbuf)).from_buffer(self._rbuf))
        sbuf_addr = ctypes.addressof((ctypes.c_char * len(self._sbuf)).from_buffer(self._sbuf))
        self._names_addr = ctypes.addressof(
            (ctypes.c_char * len(self._names)).from_buffer(self._names)
        )
        self._riov = (_Iovec * batch)()
        self._siov = (_Iovec * batch)()
        self._rmsgs = (_Mmsghdr * batch)()
        self._smsgs = (_Mmsghdr * batch)()
        for i in range(batch):
            self._riov[i].iov_base = rbuf_addr + i * slot
            self._riov[i].iov_len = slot
            self._siov[i].iov_base = sbuf_addr + i * slot
            hdr = self._rmsgs[i].msg_hdr
            hdr.msg_name = self._names_addr + i * _NAME
            hdr.msg_namelen = namelen
            hdr.msg_iov = ctypes.addressof(self._riov) + i * ctypes.sizeof(_Iovec)
            hdr.msg_iovlen = 1
            shdr = self._smsgs[i].msg_hdr
            # reply i goes to sender i; only a dropped query shifts the mapping
            shdr.msg_name = self._names_addr + i * _NAME
            shdr.msg_namelen = namelen
            shdr.msg_iov = ctypes.addressof(self._siov) + i * ctypes.sizeof(_Iovec)
            shdr.msg_iovlen = 1
        # 32-bit and 64-bit views over the header arrays (fields by index, no ctypes objects)
        self._r32 = memoryview(self._rmsgs).cast("B").cast("I")
        self._s64 = memoryview(self._smsgs).cast("B").cast("Q")
        self._siov64 = memoryview(self._siov).cast("B").cast("Q")
        self._rview = memoryview(self._rbuf)
        self._sview = memoryview(self._sbuf)
        # 16-bit views: the query ID is copied as one item, slots are even-sized
        self._r16 = self._rview.cast("H")
        self._s16 = self._sview.cast("H")
        self._nview = memoryview(self._names)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sock.setblocking(False)
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()

    def _client(self, nb: int) -> str:
        """The sender's address text for the sockaddr at offset ``nb`` (memoised)."""
        raw = (
            self._nview[nb + 8 : nb + 24] if self._v6 else self._nview[nb + 4 : nb + 8]
        ).tobytes()
        src = self._src.get(raw)
        if src is None:
            src = socket.inet_ntop(socket.AF_INET6 if self._v6 else socket.AF_INET, raw)
            if len(self._src) > 65536:
                self._src.clear()
            self._src[raw] = src
        return src

    def _readable(self) -> None:
        try:
            self._drain()
        except Exception:  # never let the reader callback die: log, keep serving
            self.handler.metrics.errors += 1
            log.exception("udp batch failed")

    def _drain(self) -> None:
        assert _LIBC is not None
        fd = self.sock.fileno()
        recvmmsg, sendmmsg = _LIBC.recvmmsg, _LIBC.sendmmsg
        rmsgs, smsgs = ctypes.addressof(self._rmsgs), ctypes.addressof(self._smsgs)
        r32, s64, siov64 = self._r32, self._s64, self._siov64
        r16, s16, half = self._r16, self._s16, self.slot // 2
        rview, sview, slot = self._rview, self._sview, self.slot
        handler, names_addr = self.handler, self._names_addr
        answer = handler.answer
        engine, metrics = handler.engine, handler.metrics
        client = self._client
        nview, v6 = self._nview, self._v6
        for _ in range(self.rounds):
            n = recvmmsg(fd, rmsgs, self.batch, MSG_DONTWAIT, None)
            if n <= 0:
                if n < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EINTR):
                    log.warning("recvmmsg failed", extra={"errno": ctypes.get_errno()})
                return
            # one zone for the whole batch: no await happens until it is sent
            zone = engine.zone
            memo = zone.memo if zone is not None and engine.fast else None
            timed = False
            if handler.sample_every:
                self._budget -= n
                if self._budget <= 0:
                    self._budget = handler.sample_every
                    timed = True
                    t0 = time.perf_counter()
            out = 0
            for i in range(n):
                size = r32[16 * i + 14]  # msg_len
                if size >= slot:  # filled the slot: possibly truncated (MSG_TRUNC), drop
                    metrics.dropped += 1
                    continue
                base = i * slot
                tail = None
                if memo is not None and size >= 12:
                    hit = memo.get(rview[base + 2 : base + size].tobytes())
                    if hit is not None:
                        if hit.__class__ is MemoEntry:
                            tail = hit.tail
                            hit.n += 1
                        else:
                            nb = i * _NAME
                            raw = (
                                nview[nb + 8 : nb + 24] if v6 else nview[nb + 4 : nb + 8]
                            ).tobytes()
                            tail = hit.by_address.get(raw)  # type: ignore[union-attr]
                            if tail is not None:
                                hit.n += 1
                            else:
                                tail = hit.tails.get(engine.region_of(client(nb)))  # type: ignore[union-attr]
                                if tail is not None:
                                    hit.n += 1  # counted before a reset below flushes it
                                    by_address = hit.by_address  # type: ignore[union-attr]
                                    if len(by_address) >= GeoMemo.MAX_ADDRESSES:
                                        by_address.clear()
                                    by_address[raw] = tail
                                    zone.address_budget -= 1  # type: ignore[union-attr]
                                    if zone.address_budget <= 0:  # type: ignore[union-attr]
                                        engine.reset_memo(zone)  # type: ignore[arg-type]
                                        memo = zone.memo  # type: ignore[union-attr]
                if tail is not None:
                    length = len(tail) + 2
                    sb = out * slot
                    s16[out * half] = r16[i * half]  # the query ID
                    sview[sb + 2 : sb + length] = tail
                else:
                    reply = answer(rview[base : base + size].tobytes(), client(i * _NAME))
                    if reply is None:
                        continue
                    length = len(reply)
                    if length > slot:
                        continue
                    sb = out * slot
                    sview[sb : sb + length] = reply
                siov64[2 * out + 1] = length
                if out != i:  # an earlier query got no reply: point at this sender
                    s64[8 * out] = names_addr + i * _NAME
                out += 1
            sent = 0
            while sent < out:
                r = sendmmsg(fd, smsgs + sent * _MMSG, out - sent, 0)
                if r <= 0:
                    self.send_failures += out - sent
                    break
                sent += r
            if out != n:  # some query got no reply: restore the identity mapping
                for j in range(out):
                    s64[8 * j] = names_addr + j * _NAME
            if timed:  # one sample per ~sample_every packets: this batch's time per packet
                metrics.observe_latency((time.perf_counter() - t0) / n)
            if n < self.batch:
                return
