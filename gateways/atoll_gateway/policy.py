"""Who may reach a terminated service: an allow policy over verified SPIFFE IDs.

A policy is evaluated only *after* the peer's certificate has been verified
against the bundle of its own trust domain (:func:`atoll_trust.tls.verify_peer`),
so it decides on an authenticated ID. It allows a peer when

* its trust domain matches one of ``trust_domains`` — an exact name, or
  ``*.<suffix>`` for every domain under a suffix (``*.atoll.lab``: every
  cluster of the lab federation, not ``atoll.lab`` itself); or
* its whole ID matches one of ``ids`` — ``*`` matches within one path segment,
  ``**`` as the last segment matches any remaining path
  (``spiffe://*.atoll.lab/atoll/gateway``, ``spiffe://a.atoll.lab/demo/**``).

An empty policy allows nobody. :func:`authorize` is pure and returns the
reason with the verdict, which goes to the access log and the metrics label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pydantic import Field, field_validator

from atoll.model.base import Frozen
from atoll_trust.spiffe_id import SpiffeId

__all__ = ["AllowPolicy", "Verdict", "authorize"]


class AllowPolicy(Frozen):
    trust_domains: tuple[str, ...] = Field(default=(), max_length=1000)
    ids: tuple[str, ...] = Field(default=(), max_length=1000)

    @field_validator("trust_domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for d in value:
            body = d[2:] if d.startswith("*.") else d
            if not re.fullmatch(r"[a-z0-9._-]{1,255}", body):
                raise ValueError(f"{d!r} is not a trust domain or *.suffix pattern")
        return value

    @field_validator("ids")
    @classmethod
    def _ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for p in value:
            if not p.startswith("spiffe://") or len(p) > 2048:
                raise ValueError(f"{p!r}: an ID pattern starts with spiffe://")
        return value


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str


def _domain_match(pattern: str, domain: str) -> bool:
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    return pattern == domain


@lru_cache(maxsize=1024)
def _id_regex(pattern: str) -> re.Pattern[str]:
    out = []
    body = pattern
    tail_any = body.endswith("/**")
    if tail_any:
        body = body[:-3]
    for piece in re.split(r"(\*)", body):
        out.append("[^/]*" if piece == "*" else re.escape(piece))
    return re.compile("".join(out) + ("(/.*)?" if tail_any else ""))


def authorize(policy: AllowPolicy, peer: SpiffeId) -> Verdict:
    """Whether ``peer`` (already verified) may use a service guarded by ``policy``."""
    domain = peer.trust_domain.name
    for pattern in policy.trust_domains:
        if _domain_match(pattern, domain):
            return Verdict(True, f"trust domain {domain} matches {pattern}")
    text = str(peer)
    for pattern in policy.ids:
        if _id_regex(pattern).fullmatch(text):
            return Verdict(True, f"{text} matches {pattern}")
    return Verdict(False, f"{text} is not allowed by the service's policy")
