"""SPIFFE trust bundles: the JSON document and the per-domain set a verifier trusts.

Document (SPIFFE Trust Domain and Bundle standard §4; X509-SVID §6; JWT-SVID §6)
----------------------------------------------------------------------------------
A JWK Set with SPIFFE members::

    {"spiffe_sequence": 3, "spiffe_refresh_hint": 300,
     "keys": [{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "..", "y": "..",
               "x5c": ["<base64 DER CA certificate>"]},
              {"use": "jwt-svid", "kid": "..", "kty": "EC", "crv": "P-256", "x": "..", "y": ".."}]}

:func:`parse_bundle` is strict and total — anything that is not a valid document
raises :class:`~atoll_trust.errors.InvalidBundleError` and nothing else:

* ``keys`` is required; ``spiffe_sequence`` and ``spiffe_refresh_hint`` are
  optional non-negative integers (never booleans or floats);
* every entry needs ``use`` and ``kty``; an entry whose ``use`` is neither
  ``x509-svid`` nor ``jwt-svid`` is *ignored*, as §4.2.2 requires ("Clients
  encountering unknown use values MUST ignore the entire JWK element") and counted
  in :attr:`TrustBundle.ignored_entries`. (SPIRE rejects such bundles instead;
  we follow the standard.)
* ``x509-svid``: exactly one certificate in ``x5c`` (standard base64 DER), no
  ``kid``; key parameters, when present, must match the certificate's key;
* ``jwt-svid``: a non-empty ``kid``; an EC (P-256/384/521) or RSA (>= 2048 bit)
  public key; no private members;
* a repeated certificate or ``kid`` is a malformed document, as are duplicate
  JSON member names (an ambiguity attackers like) and documents over 1 MiB.

Set
---
:class:`BundleSet` holds at most one bundle per trust domain and is immutable:
an update returns a new set or raises :class:`~atoll_trust.errors.BundleRejectedError`
and the caller keeps the old one. It never merges domains (a bundle is keyed by
its own domain, and verifiers look up only the peer's domain), never accepts a
lower ``spiffe_sequence`` (a missing sequence counts as 0, unless both are
missing), never accepts different content under the same sequence, and never
accepts a bundle without keys (that would make the domain unverifiable).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from atoll_trust.certload import load_der_certificate
from atoll_trust.errors import (
    CERTIFICATE_DECODE_ERRORS,
    BundleRejectedError,
    BundleRejectReason,
    InvalidBundleError,
)
from atoll_trust.jose import PublicKey, public_key_from_jwk, public_key_to_jwk
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.svid import concat_der

__all__ = [
    "DEFAULT_REFRESH_HINT",
    "MAX_BUNDLE_BYTES",
    "BundleSet",
    "JwtKey",
    "TrustBundle",
    "parse_bundle",
    "render_bundle",
    "render_jwks",
]

MAX_BUNDLE_BYTES = 1 << 20
DEFAULT_REFRESH_HINT = 300
_MAX_UINT64 = (1 << 64) - 1
_KEY_PARAMS = ("kty", "crv", "x", "y", "n", "e")


def _public_key_der(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True, slots=True)
class JwtKey:
    """A JWT-SVID signing key as published in a bundle."""

    key_id: str
    public_key: PublicKey

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JwtKey):
            return NotImplemented
        return self.key_id == other.key_id and _public_key_der(self.public_key) == _public_key_der(
            other.public_key
        )

    def __hash__(self) -> int:
        return hash(self.key_id)


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """The trust anchors of one trust domain (X.509 CA certificates and JWT keys)."""

    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_authorities: tuple[JwtKey, ...] = ()
    sequence: int | None = None
    refresh_hint: int | None = None
    ignored_entries: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.x509_authorities)) != len(self.x509_authorities):
            raise InvalidBundleError(f"bundle for {self.trust_domain}: duplicate x509-svid key")
        kids = [k.key_id for k in self.jwt_authorities]
        if len(set(kids)) != len(kids):
            raise InvalidBundleError(f"bundle for {self.trust_domain}: duplicate jwt-svid kid")
        for name, value in (
            ("spiffe_sequence", self.sequence),
            ("refresh_hint", self.refresh_hint),
        ):
            if value is not None and not 0 <= value <= _MAX_UINT64:
                raise InvalidBundleError(f"bundle for {self.trust_domain}: {name} out of range")

    @property
    def is_empty(self) -> bool:
        return not self.x509_authorities and not self.jwt_authorities

    def jwt_key(self, key_id: str) -> JwtKey | None:
        for key in self.jwt_authorities:
            if key.key_id == key_id:
                return key
        return None

    def same_keys(self, other: TrustBundle) -> bool:
        """True when both bundles hold the same keys (order ignored)."""
        return set(self.x509_authorities) == set(other.x509_authorities) and set(
            self.jwt_authorities
        ) == set(other.jwt_authorities)

    def x509_der(self) -> bytes:
        """Concatenated DER of the CA certificates (the Workload API's bundle encoding)."""
        return concat_der(self.x509_authorities)


# ---------------------------------------------------------------- parsing


def _reject_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise InvalidBundleError(f"duplicate JSON member {k!r}")
        out[k] = v
    return out


def _uint(doc: Mapping[str, Any], name: str) -> int | None:
    if name not in doc:
        return None
    value = doc[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidBundleError(f"{name} must be an integer")
    if not 0 <= value <= _MAX_UINT64:
        raise InvalidBundleError(f"{name} must be between 0 and 2^64-1")
    return value


def _parse_x509_entry(entry: Mapping[str, Any], where: str) -> x509.Certificate:
    if "kid" in entry:
        raise InvalidBundleError(f"{where}: x509-svid entries must not have 'kid'")
    x5c = entry.get("x5c")
    if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
        raise InvalidBundleError(f"{where}: x509-svid entries need exactly one certificate in x5c")
    try:
        der = base64.b64decode(x5c[0], validate=True)
        cert = load_der_certificate(der)
        cert_key = cert.public_key()
    except CERTIFICATE_DECODE_ERRORS as exc:  # binascii.Error is a ValueError
        raise InvalidBundleError(f"{where}: x5c is not a usable base64 DER certificate") from exc
    if not isinstance(cert_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise InvalidBundleError(f"{where}: unsupported certificate key type")
    if any(p in entry for p in _KEY_PARAMS[1:]):
        try:
            declared = public_key_from_jwk(entry)
        except ValueError as exc:
            raise InvalidBundleError(f"{where}: {exc}") from exc
        if _public_key_der(declared) != _public_key_der(cert_key):
            raise InvalidBundleError(f"{where}: key parameters do not match the x5c certificate")
    return cert


def _parse_jwt_entry(entry: Mapping[str, Any], where: str) -> JwtKey:
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidBundleError(f"{where}: jwt-svid entries need a non-empty 'kid'")
    try:
        return JwtKey(kid, public_key_from_jwk(entry))
    except ValueError as exc:
        raise InvalidBundleError(f"{where}: {exc}") from exc


def parse_bundle(data: bytes | str, *, trust_domain: TrustDomain) -> TrustBundle:
    """Parse a SPIFFE bundle document of ``trust_domain`` (see the module docstring).

    The trust domain is not in the document: the caller names it from a
    secure association (configuration, the sync stream's authenticated peer).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > MAX_BUNDLE_BYTES:
        raise InvalidBundleError(f"bundle document larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicate_members)
    except InvalidBundleError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidBundleError(f"bundle document is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidBundleError("bundle document must be a JSON object")
    keys = doc.get("keys")
    if not isinstance(keys, list):
        raise InvalidBundleError("bundle document needs a 'keys' array")
    sequence = _uint(doc, "spiffe_sequence")
    refresh_hint = _uint(doc, "spiffe_refresh_hint")
    certs: list[x509.Certificate] = []
    jwt_keys: list[JwtKey] = []
    ignored = 0
    for i, entry in enumerate(keys):
        where = f"keys[{i}]"
        if not isinstance(entry, dict):
            raise InvalidBundleError(f"{where}: must be a JSON object")
        use = entry.get("use")
        if not isinstance(use, str):
            raise InvalidBundleError(f"{where}: 'use' is required")
        if not isinstance(entry.get("kty"), str):
            raise InvalidBundleError(f"{where}: 'kty' is required")
        if use == "x509-svid":
            certs.append(_parse_x509_entry(entry, where))
        elif use == "jwt-svid":
            jwt_keys.append(_parse_jwt_entry(entry, where))
        else:
            ignored += 1
    return TrustBundle(
        trust_domain=trust_domain,
        x509_authorities=tuple(certs),
        jwt_authorities=tuple(jwt_keys),
        sequence=sequence,
        refresh_hint=refresh_hint,
        ignored_entries=ignored,
    )


# ---------------------------------------------------------------- rendering


def _x509_entry(cert: x509.Certificate) -> dict[str, Any]:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise InvalidBundleError("unsupported certificate key type")
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"use": "x509-svid", **public_key_to_jwk(key), "x5c": [base64.b64encode(der).decode()]}


def _jwt_entry(key: JwtKey) -> dict[str, Any]:
    return {"use": "jwt-svid", "kid": key.key_id, **public_key_to_jwk(key.public_key)}


def render_bundle(bundle: TrustBundle) -> bytes:
    """The bundle as SPIFFE bundle JSON (what the bundle endpoint serves)."""
    doc: dict[str, Any] = {
        "keys": [_x509_entry(c) for c in bundle.x509_authorities]
        + [_jwt_entry(k) for k in bundle.jwt_authorities]
    }
    if bundle.sequence is not None:
        doc["spiffe_sequence"] = bundle.sequence
    if bundle.refresh_hint is not None:
        doc["spiffe_refresh_hint"] = bundle.refresh_hint
    return json.dumps(doc, indent=2).encode()


def render_jwks(bundle: TrustBundle) -> bytes:
    """Only the JWT keys as a JWK Set (the Workload API's JWT bundle encoding)."""
    return json.dumps({"keys": [_jwt_entry(k) for k in bundle.jwt_authorities]}).encode()


# ---------------------------------------------------------------- the per-domain set


class BundleSet:
    """Immutable map trust domain → :class:`TrustBundle`; updates return a new set."""

    __slots__ = ("_bundles",)

    def __init__(self, bundles: Iterable[TrustBundle] = ()) -> None:
        table: dict[TrustDomain, TrustBundle] = {}
        for b in bundles:
            if b.trust_domain in table:
                raise InvalidBundleError(f"two bundles for trust domain {b.trust_domain}")
            table[b.trust_domain] = b
        self._bundles = table

    def __len__(self) -> int:
        return len(self._bundles)

    def __iter__(self) -> Iterator[TrustBundle]:
        return iter(sorted(self._bundles.values(), key=lambda b: b.trust_domain.name))

    def __contains__(self, trust_domain: object) -> bool:
        return trust_domain in self._bundles

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BundleSet) and self._bundles == other._bundles

    def __hash__(self) -> int:
        return hash(frozenset(self._bundles))

    def __repr__(self) -> str:
        inner = ", ".join(f"{b.trust_domain}@{b.sequence}" for b in self)
        return f"BundleSet({inner})"

    @property
    def trust_domains(self) -> tuple[TrustDomain, ...]:
        return tuple(b.trust_domain for b in self)

    def get(self, trust_domain: TrustDomain) -> TrustBundle | None:
        """The bundle of exactly ``trust_domain`` (never another domain's)."""
        return self._bundles.get(trust_domain)

    def with_bundle(self, bundle: TrustBundle) -> BundleSet:
        """A set with ``bundle`` stored for its domain, or ``self`` if nothing changed.

        Raises :class:`BundleRejectedError` (and this set stays as it is) for a
        bundle without keys, a lower sequence, or different content under the
        same sequence.
        """
        td = bundle.trust_domain
        if bundle.is_empty:
            raise BundleRejectedError(
                "it has no keys", reason=BundleRejectReason.NO_KEYS, trust_domain=td.name
            )
        old = self._bundles.get(td)
        if old is not None:
            if old == bundle:
                return self
            both_unsequenced = old.sequence is None and bundle.sequence is None
            new_seq, old_seq = bundle.sequence or 0, old.sequence or 0
            if not both_unsequenced and new_seq < old_seq:
                raise BundleRejectedError(
                    f"sequence {bundle.sequence} is lower than the stored {old.sequence}",
                    reason=BundleRejectReason.LOWER_SEQUENCE,
                    trust_domain=td.name,
                )
            if not both_unsequenced and new_seq == old_seq:
                raise BundleRejectedError(
                    f"sequence {bundle.sequence} is already stored with different content",
                    reason=BundleRejectReason.CONFLICTING_SAME_SEQUENCE,
                    trust_domain=td.name,
                )
        table = dict(self._bundles)
        table[td] = bundle
        return BundleSet(table.values())

    def with_document(self, data: bytes | str, *, trust_domain: TrustDomain) -> BundleSet:
        """Parse ``data`` as ``trust_domain``'s bundle and store it (see :meth:`with_bundle`)."""
        return self.with_bundle(parse_bundle(data, trust_domain=trust_domain))

    def without(self, trust_domain: TrustDomain) -> BundleSet:
        """A set without ``trust_domain`` (federation ended)."""
        if trust_domain not in self._bundles:
            return self
        return BundleSet(b for td, b in self._bundles.items() if td != trust_domain)
