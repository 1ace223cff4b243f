"""DNS wire-format constants and the few hand-built messages (RFC 1035 §4.1).

Shared by both packet paths. Everything here works on raw bytes and never
raises on any input: functions return ``None`` when bytes do not have the
shape they need.

Strict question rule. A packet *carries a question* when it has a 12-byte
header with QDCOUNT ≥ 1 and its first question is a well-formed, uncompressed
name (labels of 1 to 63 octets, at most 255 octets in all) followed by type and
class. Such a packet gets an answer — FORMERR if anything else is wrong;
anything less is garbage and gets silence (no amplification of junk, no error
storms towards spoofed sources). A compression pointer in the first question
can only point into the header, so it is garbage too.
"""

from __future__ import annotations

import struct

__all__ = [
    "FLAG_AA",
    "FLAG_CD",
    "FLAG_QR",
    "FLAG_RD",
    "FLAG_TC",
    "OPTION_ECS",
    "OPT_TYPE",
    "build_opt",
    "error_response",
    "question_end",
]

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_CD = 0x0010
#: RD and CD are copied from the query into the response (RFC 1035 §4.1.1, RFC 4035 §3.2.2)
COPIED_FLAGS = FLAG_RD | FLAG_CD
OPT_TYPE = 41
OPTION_ECS = 8
#: DO bit in the OPT TTL's flags (RFC 3225); copied from the query (RFC 3225 §3)
EDNS_DO = 0x8000

_HEADER = struct.Struct("!HHHHHH")


def question_end(wire: bytes) -> int | None:
    """Offset just past the first question (name, type, class), or None if there is none."""
    n = len(wire)
    if n < 12 or (wire[4] == 0 and wire[5] == 0):
        return None
    i = 12
    while True:
        if i >= n:
            return None
        length = wire[i]
        if length == 0:
            break
        if length > 63:
            return None
        i += length + 1
        if i - 12 > 255:
            return None
    end = i + 5
    return end if end <= n else None


def error_response(wire: bytes, rcode: int, qend: int | None) -> bytes:
    """A header-only (plus echoed first question) error response: FORMERR, NOTIMP...

    Keeps the ID and opcode, copies RD/CD, and carries no OPT record.
    """
    qid = (wire[0] << 8) | wire[1]
    flags = (wire[2] << 8) | wire[3]
    out_flags = FLAG_QR | (flags & 0x7800) | (flags & COPIED_FLAGS) | (rcode & 0xF)
    if qend is None:
        return _HEADER.pack(qid, out_flags, 0, 0, 0, 0)
    return _HEADER.pack(qid, out_flags, 1, 0, 0, 0) + wire[12:qend]


def build_opt(payload: int, do: bool, options: bytes = b"", ext_rcode: int = 0) -> bytes:
    """An OPT pseudo-RR (RFC 6891 §6.1.2): root owner, version 0."""
    ttl_flags = EDNS_DO if do else 0
    return (
        b"\x00"
        + struct.pack("!HHBBHH", OPT_TYPE, payload, ext_rcode, 0, ttl_flags, len(options))
        + options
    )
