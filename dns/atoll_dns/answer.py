"""The slow, obviously-correct packet path: dnspython parses, decides, renders.

:func:`respond` turns one query packet into one response packet (or ``None``
for silence). It is the reference the fast path (:mod:`atoll_dns.fastpath`)
must agree with byte for byte, and the fallback for every packet the fast path
does not recognise. :func:`render` is also what the fast path uses, once per
snapshot, to produce the bytes it later serves.

Order of checks (first match wins):

1. shorter than a header, or QR set (a response) — silence;
2. opcode other than QUERY — NOTIMP, header only;
3. no well-formed first question (:func:`atoll_dns.wire.question_end`) — silence;
4. dnspython cannot parse the message, QDCOUNT ≠ 1, answer or authority
   records present, two ECS options, or qtype OPT — FORMERR (no OPT);
5. EDNS version > 0 — BADVERS (RFC 6891 §6.1.3) with an OPT of version 0;
6. class other than IN — REFUSED;
7. otherwise the zone answers (:meth:`atoll_dns.zoneview.ZoneView.resolve`);
   before any snapshot is loaded, SERVFAIL inside the zone, REFUSED outside.

EDNS (RFC 6891): a query with OPT gets an OPT advertising
``DnsConfig.edns_udp_payload``, with the DO bit copied (RFC 3225). A UDP
answer must fit in 512 octets without EDNS, or in the requester's payload
size (at least 512) capped by ours; when it does not, the response carries
only the question (and OPT) with TC set, and the client retries over TCP
(RFC 7766), where the limit is 65535.

ECS (RFC 7871): a query with a valid option gets it back with FAMILY, SOURCE
PREFIX-LENGTH and ADDRESS copied, and SCOPE PREFIX-LENGTH set to the prefix
length that decided the answer when the answer depends on the client's region,
0 otherwise. A SOURCE PREFIX-LENGTH of 0 means "do not use my subnet": the
server then locates the resolver's own address, as without ECS, and answers
with scope 0. Malformed options (unknown family, prefix too long, non-zero
padding bits) are FORMERR, as §7.2.1 requires.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import ip_address

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from atoll_dns.geo import Location, Locator
from atoll_dns.strategy import Choice
from atoll_dns.wire import (
    COPIED_FLAGS,
    EDNS_DO,
    FLAG_AA,
    FLAG_QR,
    FLAG_TC,
    error_response,
    question_end,
)
from atoll_dns.zoneview import Resolution, ZoneView

__all__ = ["EdnsReply", "Reply", "SlowContext", "render", "respond", "udp_limit"]

TCP_LIMIT = 65535


@dataclass(frozen=True, slots=True)
class Reply:
    """A response and what metrics need to know about it."""

    wire: bytes
    rcode: int
    qtype: int | None
    strategy: str

    def __post_init__(self) -> None:
        # plain ints for metric keys (IntEnum hashing is slow)
        object.__setattr__(self, "rcode", int(self.rcode))
        if self.qtype is not None:
            object.__setattr__(self, "qtype", int(self.qtype))


@dataclass(frozen=True, slots=True)
class EdnsReply:
    """What the response's OPT record carries."""

    payload: int
    do: bool
    ecs: dns.edns.ECSOption | None = None


@dataclass(frozen=True, slots=True)
class SlowContext:
    """What the slow path needs besides the packet: the zone (None before the first
    snapshot), the locator, the configured apex, and our UDP payload size."""

    view: ZoneView | None
    locator: Locator
    origin: dns.name.Name
    max_udp: int


def udp_limit(edns_payload: int | None, max_udp: int) -> int:
    """Largest UDP response allowed (RFC 1035 §4.2.1, RFC 6891 §6.2.5)."""
    if edns_payload is None:
        return 512
    return max(512, min(edns_payload, max_udp))


def render(
    qid: int,
    query_flags: int,
    qname: dns.name.Name,
    qtype: int,
    qclass: int,
    res: Resolution,
    *,
    edns: EdnsReply | None,
    truncate: bool = False,
) -> bytes:
    """Render a response with dnspython (question echoed with the query's case)."""
    msg = dns.message.Message(id=qid)
    msg.flags = FLAG_QR | (query_flags & COPIED_FLAGS)
    if res.authoritative:
        msg.flags |= FLAG_AA
    if truncate:
        msg.flags |= FLAG_TC
    msg.question = [
        dns.rrset.RRset(
            qname, dns.rdataclass.RdataClass.make(qclass), dns.rdatatype.RdataType.make(qtype)
        )
    ]
    if not truncate:
        msg.answer = list(res.answer)
        msg.authority = list(res.authority)
        msg.additional = list(res.additional)
    if edns is not None:
        options: list[dns.edns.Option] = [edns.ecs] if edns.ecs is not None else []
        msg.use_edns(0, EDNS_DO if edns.do else 0, edns.payload, options=options)
    msg.set_rcode(dns.rcode.Rcode.make(res.rcode))
    # record order is the strategy's (rotation, failover order): never shuffle
    return msg.to_wire(want_shuffle=False)


def _locate(ctx: SlowContext, ecs: dns.edns.ECSOption | None, client: str) -> Location:
    if ecs is not None and ecs.srclen > 0:
        return ctx.locator.locate(ecs.family, int(ip_address(ecs.address)), ecs.srclen, ecs=True)
    return ctx.locator.locate_ip(client)


def respond(
    wire: bytes, *, client: str, ctx: SlowContext, tcp: bool, choice: Choice = Choice()
) -> Reply | None:
    """Answer one packet the slow way; ``None`` means send nothing."""
    if len(wire) < 12:
        return None
    flags = (wire[2] << 8) | wire[3]
    if flags & FLAG_QR:
        return None
    if (flags >> 11) & 0xF != 0:
        return Reply(error_response(wire, dns.rcode.NOTIMP, None), dns.rcode.NOTIMP, None, "none")
    qend = question_end(wire)
    if qend is None:
        return None
    raw_qtype = (wire[qend - 4] << 8) | wire[qend - 3]
    formerr = Reply(
        error_response(wire, dns.rcode.FORMERR, qend), dns.rcode.FORMERR, raw_qtype, "none"
    )
    try:
        msg = dns.message.from_wire(wire)
    except Exception:  # any parse failure of untrusted bytes is FORMERR, by definition
        return formerr
    qd, an, ns, _ = struct.unpack("!HHHH", wire[4:12])
    ecs_options = [o for o in msg.options if isinstance(o, dns.edns.ECSOption)]
    if qd != 1 or an or ns or len(ecs_options) > 1 or raw_qtype == dns.rdatatype.OPT:
        return formerr
    question = msg.question[0]
    qname, qtype, qclass = question.name, question.rdtype, question.rdclass
    if msg.edns > 0:
        res = Resolution(dns.rcode.BADVERS, False)
        bad = EdnsReply(ctx.max_udp, bool(msg.ednsflags & EDNS_DO))
        out = render(msg.id, flags, qname, qtype, qclass, res, edns=bad)
        return Reply(out, dns.rcode.BADVERS, qtype, "none")
    ecs = ecs_options[0] if ecs_options else None
    location: Location | None = None
    if qclass != dns.rdataclass.IN:
        res = Resolution(dns.rcode.REFUSED, False)
    elif ctx.view is None:
        in_zone = qname.is_subdomain(ctx.origin)
        res = Resolution(dns.rcode.SERVFAIL if in_zone else dns.rcode.REFUSED, False)
    else:
        location = _locate(ctx, ecs, client)
        res = ctx.view.resolve(qname, qtype, region=location.region, choice=choice)
    edns: EdnsReply | None = None
    if msg.edns == 0:
        echo = None
        if ecs is not None:
            scope = 0
            if location is not None and res.client_dependent and ecs.srclen > 0:
                scope = location.scope
            echo = dns.edns.ECSOption(ecs.address, ecs.srclen, scope)
        edns = EdnsReply(ctx.max_udp, bool(msg.ednsflags & EDNS_DO), echo)
    out = render(msg.id, flags, qname, qtype, qclass, res, edns=edns)
    limit = TCP_LIMIT if tcp else udp_limit(msg.payload if msg.edns == 0 else None, ctx.max_udp)
    if len(out) > limit:
        out = render(msg.id, flags, qname, qtype, qclass, res, edns=edns, truncate=True)
    return Reply(out, res.rcode, qtype, res.strategy)
