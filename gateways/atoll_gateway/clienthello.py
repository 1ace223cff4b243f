"""A sans-IO parser of the TLS ClientHello: just enough to route by SNI.

:func:`parse_client_hello` takes the bytes received so far (the gateway
*peeks* them, so they stay in the socket for the backend) and returns either a
:class:`ClientHello` or :class:`NeedMore` — how many bytes in total it needs
before it can say more. Anything else raises
:class:`~atoll_gateway.errors.ClientHelloError` with a ``reason``; nothing else
ever escapes (the module is fuzzed with hypothesis).

Wire format, with the bounds checked at every step:

* TLS record (RFC 8446 §5.1): ``type(1)=22 handshake``, ``legacy_record_version(2)``
  with major 3, ``length(2)`` of 1..2^14. A ClientHello may be split over several
  handshake records (§5.1 allows fragmentation); they are concatenated, up to
  ``max_size`` bytes of records in total.
* Handshake (RFC 8446 §4): ``msg_type(1)=1 client_hello``, ``length(3)``.
* ClientHello body (§4.1.2; TLS 1.2 is the same shape, RFC 5246 §7.4.1.2):
  ``legacy_version(2)``, ``random(32)``, ``legacy_session_id<0..32>``,
  ``cipher_suites<2..2^16-2>`` (even length), ``legacy_compression_methods<1..2^8-1>``,
  then ``extensions<8..2^16-1>`` — optional only for pre-TLS-1.2 clients.
* Each extension: ``type(2)``, ``length(2)``, data; a type may appear once (§4.2).
* ``server_name`` (RFC 6066 §3): ``ServerNameList<1..2^16-1>`` of
  ``name_type(1)`` + ``HostName<1..2^16-1>``; at most one name per type;
  ``host_name`` (0) is an ASCII DNS name without a trailing dot. We also reject
  names over 253 bytes and characters outside LDH, '_' and '.', since they
  would never route.
* ``application_layer_protocol_negotiation`` (RFC 7301 §3.1):
  ``ProtocolNameList<2..2^16-1>`` of ``ProtocolName<1..2^8-1>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from atoll_gateway.errors import ClientHelloError

__all__ = [
    "DEFAULT_MAX_SIZE",
    "RECORD_HEADER",
    "ClientHello",
    "NeedMore",
    "parse_client_hello",
    "tls_alert",
]

RECORD_HEADER = 5
MAX_RECORD = 1 << 14
#: the most record bytes we read for one ClientHello (headers included)
DEFAULT_MAX_SIZE = 16 * 1024 + 4 * RECORD_HEADER
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_HOST_NAME = re.compile(rb"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


@dataclass(frozen=True, slots=True)
class ClientHello:
    #: the host_name of the server_name extension, lowercased; None if absent
    server_name: str | None
    #: ALPN protocols offered, in the client's order
    alpn: tuple[str, ...]
    legacy_version: int
    #: record bytes the ClientHello occupied
    size: int


@dataclass(frozen=True, slots=True)
class NeedMore:
    """Not enough bytes yet: at least ``total`` bytes are needed in all."""

    total: int


def _bad(message: str) -> ClientHelloError:
    return ClientHelloError("malformed", f"malformed ClientHello: {message}")


class _Reader:
    """A bounded cursor over ``data[pos:end]``; every read checks the bound.

    Hot path (every new connection): lengths are read by indexing, and error
    texts are only formatted when an error is raised.
    """

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        pos = self.pos
        if pos + n > self.end:
            raise _bad(f"{what} runs past its enclosing structure")
        self.pos = pos + n
        return self.data[pos : pos + n]

    def skip(self, n: int, what: str) -> None:
        if self.pos + n > self.end:
            raise _bad(f"{what} runs past its enclosing structure")
        self.pos += n

    def uint(self, n: int, what: str) -> int:
        pos, data = self.pos, self.data
        if pos + n > self.end:
            raise _bad(f"{what} runs past its enclosing structure")
        self.pos = pos + n
        if n == 1:
            return data[pos]
        if n == 2:
            return (data[pos] << 8) | data[pos + 1]
        return int.from_bytes(data[pos : pos + n], "big")

    def vector(self, len_bytes: int, what: str, lo: int = 0, hi: int | None = None) -> _Reader:
        pos, data = self.pos, self.data
        start = pos + len_bytes
        if start > self.end:
            raise _bad(f"{what} length runs past its enclosing structure")
        n = data[pos] if len_bytes == 1 else int.from_bytes(data[pos:start], "big")
        if n < lo or (hi is not None and n > hi):
            raise _bad(f"{what} length {n} outside {lo}..{hi}")
        stop = start + n
        if stop > self.end:
            raise _bad(f"{what} runs past its enclosing structure")
        self.pos = stop
        return _Reader(data, start, stop)


def _reassemble(data: bytes, max_size: int) -> tuple[bytes, int] | NeedMore:
    """Concatenate handshake-record payloads until the handshake message is whole."""
    payload = bytearray()
    pos = 0
    while True:
        if len(data) < pos + RECORD_HEADER:
            return NeedMore(pos + RECORD_HEADER)
        ctype, major, minor = data[pos], data[pos + 1], data[pos + 2]
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if ctype != _HANDSHAKE or major != 3 or minor > 4:
            if pos == 0:
                raise ClientHelloError("not_tls", "the connection does not start with TLS")
            raise _bad("a non-handshake record interrupts the ClientHello")
        if length == 0 or length > MAX_RECORD:
            raise _bad(f"record length {length} outside 1..{MAX_RECORD}")
        end = pos + RECORD_HEADER + length
        if end > max_size:
            raise ClientHelloError("oversized", f"ClientHello exceeds {max_size} bytes")
        if len(data) < end:
            return NeedMore(end)
        payload += data[pos + RECORD_HEADER : end]
        pos = end
        if len(payload) >= 4:
            if payload[0] != _CLIENT_HELLO:
                raise _bad(f"first handshake message is type {payload[0]}, not client_hello")
            body = int.from_bytes(payload[1:4], "big")
            if 4 + body + RECORD_HEADER > max_size:
                raise ClientHelloError("oversized", f"ClientHello of {body} bytes is too large")
            if len(payload) >= 4 + body:
                return bytes(payload[: 4 + body]), pos


def _server_name(ext: _Reader) -> str:
    names = ext.vector(2, "server_name_list", 1)
    if ext.left():
        raise _bad("trailing bytes after server_name_list")
    seen: set[int] = set()
    host: str | None = None
    while names.left():
        name_type = names.uint(1, "name_type")
        value = names.vector(2, "server name", 1)
        if name_type in seen:
            raise _bad(f"server_name lists name_type {name_type} twice")
        seen.add(name_type)
        if name_type == 0:
            raw = value.take(value.left(), "host_name")
            if len(raw) > 253 or not _HOST_NAME.fullmatch(raw) or b".." in raw:
                raise _bad("host_name is not a DNS name")
            host = raw.decode("ascii").lower()
    if host is None:
        raise _bad("server_name has no host_name")
    return host


def _alpn(ext: _Reader) -> tuple[str, ...]:
    names = ext.vector(2, "protocol_name_list", 2)
    if ext.left():
        raise _bad("trailing bytes after protocol_name_list")
    out: list[str] = []
    while names.left():
        proto = names.vector(1, "protocol name", 1)
        out.append(proto.take(proto.left(), "protocol name").decode("latin-1"))
    return tuple(out)


def parse_client_hello(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> ClientHello | NeedMore:
    """Parse a ClientHello from the first bytes of a connection (see the module docstring)."""
    assembled = _reassemble(data, max_size)
    if isinstance(assembled, NeedMore):
        return assembled
    message, size = assembled
    r = _Reader(message, 4)
    version = r.uint(2, "legacy_version")
    if version >> 8 != 3:
        raise _bad(f"legacy_version {version:#06x} is not TLS")
    r.skip(32, "random")
    r.vector(1, "legacy_session_id", 0, 32)
    suites = r.vector(2, "cipher_suites", 2, (1 << 16) - 2)
    if suites.left() % 2:
        raise _bad("cipher_suites has an odd length")
    r.vector(1, "legacy_compression_methods", 1)
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if r.left():
        exts = r.vector(2, "extensions")
        if r.left():
            raise _bad("trailing bytes after the extensions")
        seen: set[int] = set()
        data, pos, end = message, exts.pos, exts.end
        while pos < end:  # ~15 extensions per hello: indexed, no cursor per extension
            if pos + 4 > end:
                raise _bad("extension header runs past its enclosing structure")
            ext_type = (data[pos] << 8) | data[pos + 1]
            start = pos + 4
            stop = start + ((data[pos + 2] << 8) | data[pos + 3])
            if stop > end:
                raise _bad(f"extension {ext_type} runs past its enclosing structure")
            if ext_type in seen:
                raise _bad(f"extension {ext_type} appears twice")
            seen.add(ext_type)
            if ext_type == _EXT_SERVER_NAME:
                server_name = _server_name(_Reader(data, start, stop))
            elif ext_type == _EXT_ALPN:
                alpn = _alpn(_Reader(data, start, stop))
            pos = stop
    return ClientHello(server_name=server_name, alpn=alpn, legacy_version=version, size=size)


#: TLS AlertDescription values we send (RFC 8446 §6)
ALERTS = {"handshake_failure": 40, "internal_error": 80, "unrecognized_name": 112}


def tls_alert(description: str) -> bytes:
    """A plaintext fatal alert record, sent to refuse a client before any handshake."""
    return bytes((21, 3, 3, 0, 2, 2, ALERTS[description]))
