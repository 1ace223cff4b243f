"""PROXY protocol v2 headers: how a terminating gateway tells the backend who called.

After terminating mTLS, the gateway opens a new TCP connection to the local
endpoint; the backend would see only the gateway. With ``proxy_protocol`` on
for a service, the gateway first writes one PROXY v2 header (HAProxy's
*PROXY protocol* specification, version 2, §2.2) carrying the client's
address and these TLVs:

* ``PP2_TYPE_AUTHORITY`` (0x02) — the server name the client asked for (SNI);
* ``0xE0`` (first of the range the spec reserves for custom use,
  ``PP2_TYPE_MIN_CUSTOM``) — the peer's *verified* SPIFFE ID, ASCII.

:func:`encode_v2` is used by the gateway, :func:`parse_v2` by backends (the
lab's demo server); both are pure. :func:`parse_v2` is total: it returns a
:class:`ProxyHeader`, ``None`` when more bytes are needed, or raises
``ValueError``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

__all__ = [
    "SIGNATURE",
    "TLV_AUTHORITY",
    "TLV_SPIFFE_ID",
    "ProxyHeader",
    "encode_v2",
    "parse_v2",
]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
TLV_AUTHORITY = 0x02
TLV_SPIFFE_ID = 0xE0
_HEAD = 16
_MAX = 4096


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    tlvs: dict[int, bytes] = field(default_factory=dict)
    #: header length in bytes (what to skip before the payload)
    size: int = 0

    @property
    def spiffe_id(self) -> str | None:
        raw = self.tlvs.get(TLV_SPIFFE_ID)
        return raw.decode("ascii", "replace") if raw is not None else None

    @property
    def authority(self) -> str | None:
        raw = self.tlvs.get(TLV_AUTHORITY)
        return raw.decode("ascii", "replace") if raw is not None else None


def encode_v2(
    source: tuple[str, int], destination: tuple[str, int], tlvs: dict[int, bytes]
) -> bytes:
    """A ``PROXY`` command header for a TCP connection from ``source`` to ``destination``."""
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    if src.version != dst.version:  # an IPv4-mapped mix: describe the source only as UNSPEC
        fam, addr = 0x00, b""
    elif src.version == 4:
        fam = 0x11
        addr = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    else:
        fam = 0x21
        addr = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    body = addr + b"".join(struct.pack("!BH", t, len(v)) + v for t, v in sorted(tlvs.items()))
    return SIGNATURE + bytes((0x21, fam)) + struct.pack("!H", len(body)) + body


def parse_v2(data: bytes) -> ProxyHeader | None:
    """Parse a v2 header at the start of ``data`` (None: incomplete; ValueError: invalid)."""
    if len(data) < _HEAD:
        if not SIGNATURE.startswith(data[: len(SIGNATURE)]):
            raise ValueError("not a PROXY v2 header")
        return None
    if data[:12] != SIGNATURE:
        raise ValueError("not a PROXY v2 header")
    ver_cmd, fam = data[12], data[13]
    if ver_cmd >> 4 != 2 or ver_cmd & 0x0F not in (0, 1):
        raise ValueError(f"unsupported PROXY version/command {ver_cmd:#x}")
    length = struct.unpack("!H", data[14:16])[0]
    if length > _MAX:
        raise ValueError(f"PROXY header of {length} bytes is too large")
    if len(data) < _HEAD + length:
        return None
    body = data[_HEAD : _HEAD + length]
    pos = 0
    source = destination = None
    if fam == 0x11 and ver_cmd & 0x0F == 1:
        if length < 12:
            raise ValueError("PROXY header too short for IPv4 addresses")
        s, d = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sp, dp = struct.unpack("!HH", body[8:12])
        source, destination, pos = (str(s), sp), (str(d), dp), 12
    elif fam == 0x21 and ver_cmd & 0x0F == 1:
        if length < 36:
            raise ValueError("PROXY header too short for IPv6 addresses")
        s6, d6 = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sp, dp = struct.unpack("!HH", body[32:36])
        source, destination, pos = (str(s6), sp), (str(d6), dp), 36
    elif fam != 0x00:
        raise ValueError(f"unsupported PROXY address family {fam:#x}")
    tlvs: dict[int, bytes] = {}
    while pos < length:
        if length - pos < 3:
            raise ValueError("truncated PROXY TLV")
        t, n = body[pos], struct.unpack("!H", body[pos + 1 : pos + 3])[0]
        if pos + 3 + n > length:
            raise ValueError("PROXY TLV runs past the header")
        tlvs[t] = bytes(body[pos + 3 : pos + 3 + n])
        pos += 3 + n
    return ProxyHeader(source=source, destination=destination, tlvs=tlvs, size=_HEAD + length)
