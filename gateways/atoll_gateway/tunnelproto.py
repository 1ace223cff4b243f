"""The pooled tunnel protocol between gateways (ALPN ``atoll-tunnel/2``): frames, pure.

A pooled tunnel is one mTLS connection from a cluster's egress to a peer
gateway that carries many client connections ("streams") **one after
another**: when a stream ends cleanly the tunnel goes back to the egress's
pool and the next local connection to that peer reuses it — no TCP connect,
no TLS handshake, no certificate verification per connection. Only one
stream is open on a tunnel at a time, so TCP's own flow control is the
stream's (no windows, unlike HTTP/2 CONNECT or Istio's HBONE, which
multiplex); concurrency comes from the pool holding several tunnels.

Every frame is a 4-byte header — ``type`` (1 byte) and payload ``length``
(3 bytes, big-endian) — and the payload::

    OPEN    client → server  payload: the server name of the service (the SNI naming
                             scheme, :mod:`atoll_gateway.naming`), ASCII, ≤ 253 bytes
    ACCEPT  server → client  empty: the endpoint is connected, relay from now on
    REFUSE  server → client  "<reason>:<detail>": no stream (the tunnel stays usable)
    DATA    both             1 ..  2^24-1 bytes of the stream
    FIN     both             empty: this direction of the stream is finished
    RESET   both             empty: the sender's side of the stream failed (its client
                             or endpoint reset): abort the stream, send nothing more

A stream is ``OPEN`` → ``ACCEPT`` | ``REFUSE``, then ``DATA``* and exactly one
*ending* — ``FIN`` or ``RESET`` — in each direction; it is over once both
endings have passed, and the next ``OPEN`` may follow. The client waits for
``ACCEPT`` before it relays (one round trip, instead of TCP's and TLS's two),
which is what lets it fail over to the next cluster when a peer cannot serve
the stream.

**Resets keep the tunnel.** A side whose own socket fails (the client went
away mid-request, the endpoint reset) ends its direction with ``RESET``
instead of ``FIN`` and resets that socket; the peer resets its socket too (a
failure must not look like a clean end) and ends its own direction with
``RESET`` if it has not ended it yet. A side that has already sent its ``FIN``
cannot send ``RESET``: one ending per direction, so no stray frame can cross
into the next stream. Bytes still in flight towards a failed side are read
and dropped until the peer's ending, up to :data:`DISCARD_LIMIT` bytes, past
which the tunnel is reset instead. Clients that abort in-flight requests
(timeouts, cancelled requests, a load generator stopping) therefore cost no
new handshake. Anything else — an unknown type, a control frame with a bad
payload, bytes after an ending, the tunnel closing inside a stream — is a
protocol error or a failure of the tunnel itself, and the tunnel is reset.

Parsing here is pure (:class:`FrameReader`, fuzzed by the tests); the I/O is
:mod:`atoll_gateway.tunnelio` and :mod:`atoll_gateway.tunnelrelay`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from atoll_gateway.errors import GatewayError

__all__ = [
    "ACCEPT",
    "DATA",
    "DISCARD_LIMIT",
    "FIN",
    "FIN_FRAME",
    "HEADER",
    "MAX_CONTROL",
    "OPEN",
    "REFUSE",
    "RESET",
    "RESET_FRAME",
    "Frame",
    "FrameReader",
    "TunnelProtocolError",
    "accept_frame",
    "header",
    "open_frame",
    "refuse_frame",
]

OPEN, ACCEPT, REFUSE, DATA, FIN, RESET = 1, 2, 3, 4, 5, 6
_NAMES = {
    OPEN: "OPEN",
    ACCEPT: "ACCEPT",
    REFUSE: "REFUSE",
    DATA: "DATA",
    FIN: "FIN",
    RESET: "RESET",
}
#: bytes of a frame header
HEADER = 4
#: largest payload of a control frame (OPEN, REFUSE)
MAX_CONTROL = 1024
MAX_LENGTH = (1 << 24) - 1
#: bytes dropped for a failed stream before the tunnel is reset instead (draining a
#: big download nobody reads costs more than a new handshake)
DISCARD_LIMIT = 1 << 20
_HEADER = struct.Struct(">I")
_SERVER_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_REASON = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_DETAIL = 300
#: per control frame: a longer one fails at its header, without waiting for the payload
_MAX_PAYLOAD = {OPEN: 253, ACCEPT: 0, REFUSE: MAX_CONTROL}


class TunnelProtocolError(GatewayError):
    """The peer broke the tunnel protocol; the tunnel is reset (reason ``tunnel_protocol``)."""

    def __init__(self, message: str) -> None:
        super().__init__("tunnel_protocol", message)


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    payload: bytes = b""

    @property
    def name(self) -> str:
        return _NAMES.get(self.type, str(self.type))

    def server_name(self) -> str:
        """An OPEN frame's server name."""
        return self.payload.decode("ascii")

    def refusal(self) -> tuple[str, str]:
        """A REFUSE frame's ``(reason, detail)``."""
        reason, _, detail = self.payload.decode("ascii").partition(":")
        return reason, detail


def header(kind: int, length: int) -> bytes:
    return _HEADER.pack(kind << 24 | length)


FIN_FRAME = header(FIN, 0)
RESET_FRAME = header(RESET, 0)


def open_frame(server_name: str) -> bytes:
    name = server_name.lower()
    if not _SERVER_NAME.fullmatch(name):
        raise ValueError(f"not a server name: {server_name!r}")
    return header(OPEN, len(name)) + name.encode("ascii")


def accept_frame() -> bytes:
    return header(ACCEPT, 0)


def refuse_frame(reason: str, detail: str) -> bytes:
    if not _REASON.fullmatch(reason):
        raise ValueError(f"not a reason label: {reason!r}")
    text = detail.encode("ascii", "replace")[:_MAX_DETAIL].replace(b"\n", b" ")
    payload = reason.encode("ascii") + b":" + text
    return header(REFUSE, len(payload)) + payload


def _check(kind: int, payload: bytes) -> Frame:
    """A control frame, validated (DATA, FIN and RESET are handled by the relay)."""
    if kind == OPEN:
        try:
            name = payload.decode("ascii")
        except UnicodeDecodeError:
            raise TunnelProtocolError("OPEN: the server name is not ASCII") from None
        if not _SERVER_NAME.fullmatch(name):
            raise TunnelProtocolError(f"OPEN: {name[:80]!r} is not a lower-case server name")
    elif kind == REFUSE:
        reason, sep, detail = payload.partition(b":")
        if not sep or not _REASON.fullmatch(reason.decode("ascii", "replace")):
            raise TunnelProtocolError("REFUSE: the payload is not '<reason>:<detail>'")
        try:
            detail.decode("ascii")
        except UnicodeDecodeError:
            raise TunnelProtocolError("REFUSE: the detail is not ASCII") from None
    elif kind == ACCEPT:
        if payload:
            raise TunnelProtocolError("ACCEPT carries no payload")
    else:
        raise TunnelProtocolError(f"expected a control frame, got {_NAMES.get(kind, kind)}")
    return Frame(kind, payload)


class FrameReader:
    """Control frames out of bytes as they arrive (between streams, where a stream
    opens). :meth:`feed` returns the next complete frame, ``None`` until one is
    complete; a frame that cannot be valid raises :class:`TunnelProtocolError` as
    soon as its header shows it. Bytes after the frame stay buffered until
    :meth:`take_rest` (the first frames of the stream, read along with ACCEPT)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def take_rest(self) -> bytes:
        """The bytes received after the last frame returned (they belong to the stream)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    def feed(self, data: bytes | bytearray | memoryview) -> Frame | None:
        buf = self._buf
        buf += data
        if len(buf) < HEADER:
            return None
        (word,) = _HEADER.unpack_from(buf)
        kind, length = word >> 24, word & MAX_LENGTH
        if kind not in (OPEN, ACCEPT, REFUSE):
            raise TunnelProtocolError(f"expected a control frame, got {_NAMES.get(kind, kind)}")
        if length > _MAX_PAYLOAD[kind]:
            raise TunnelProtocolError(
                f"{_NAMES[kind]}: {length} bytes is over {_MAX_PAYLOAD[kind]}"
            )
        if len(buf) < HEADER + length:
            return None
        payload = bytes(buf[HEADER : HEADER + length])
        del buf[: HEADER + length]
        return _check(kind, payload)
