"""Verify X.509-SVIDs and JWT-SVIDs against the bundle of the peer's own trust domain.

Why per-domain and not one pooled trust store
---------------------------------------------
A federated verifier trusts several domains. Pooling all their CA certificates
into one store (what ``spiffe-tls`` 0.4.0 and a naive ``SSLContext`` do) lets
domain B's CA vouch for ``spiffe://A/...``: a chain is "valid" if it reaches
*any* root. SPIFFE's rule (X509-SVID standard §5) is to read the SPIFFE ID from
the leaf first, then validate the chain against the bundle of *that* ID's trust
domain only. :func:`verify_x509_svid` does exactly this:

1. structural leaf checks (X509-SVID §§4-5): exactly one URI SAN holding a valid
   SPIFFE ID with a non-root path; ``cA`` false; ``keyUsage`` present, critical,
   with digitalSignature and without keyCertSign/cRLSign; ``extKeyUsage``, if
   present, with both serverAuth and clientAuth; an empty subject requires a
   critical SAN extension;
2. intermediates and anchors may carry a SPIFFE URI SAN only of the same domain;
3. RFC 5280 path validation with ``cryptography``'s verifier
   (``PolicyBuilder().store(Store(bundle roots)).time(now).build_client_verifier()``),
   which checks signatures, validity windows, CA basic constraints and key usage
   of every certificate on the path.

:func:`verify_jwt_svid` follows JWT-SVID §§3-7: compact form only; header
members only ``alg``, ``kid``, ``typ``; ``alg`` in an allowlist (default: the
nine RS/ES/PS algorithms the standard allows — never ``none`` or HMAC); the
``kid`` is looked up in the bundle of the ``sub``'s trust domain only; then
signature, ``exp`` (required), ``nbf`` (if present) and ``aud`` (required, must
contain the expected audience).

Both return a verified value or raise :class:`~atoll_trust.errors.SvidVerificationError`
/ :class:`~atoll_trust.errors.JwtSvidError`; no other exception escapes for bad input.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from atoll_trust.bundle import TrustBundle
from atoll_trust.certload import load_der_certificate
from atoll_trust.clock import utc
from atoll_trust.errors import (
    CERTIFICATE_DECODE_ERRORS,
    InvalidSpiffeIdError,
    JwtSvidError,
    SvidVerificationError,
)
from atoll_trust.jose import JWT_SVID_ALGORITHMS, b64url_decode, jws_verify
from atoll_trust.spiffe_id import SpiffeId, TrustDomain, parse_spiffe_id

__all__ = [
    "MAX_JWT_BYTES",
    "BundleSource",
    "JsonValue",
    "VerifiedJwtSvid",
    "VerifiedX509Svid",
    "check_x509_svid_leaf",
    "parse_der_chain",
    "verify_jwt_svid",
    "verify_x509_svid",
]

MAX_JWT_BYTES = 64 * 1024
JsonValue: TypeAlias = str | int | float | bool | list["JsonValue"] | dict[str, "JsonValue"] | None


class BundleSource(Protocol):
    """Where a verifier finds the bundle of one trust domain (a :class:`BundleSet`)."""

    def get(self, trust_domain: TrustDomain) -> TrustBundle | None: ...


@dataclass(frozen=True, slots=True)
class VerifiedX509Svid:
    """A peer authenticated by its X.509-SVID; ``chain`` is leaf .. trust anchor."""

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class VerifiedJwtSvid:
    """A validated JWT-SVID and its claims."""

    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expiry: dt.datetime
    key_id: str
    claims: Mapping[str, JsonValue]


# ---------------------------------------------------------------- X.509-SVID


def _ext(cert: x509.Certificate, cls: type[Any]) -> x509.Extension[Any] | None:
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None
    except CERTIFICATE_DECODE_ERRORS as exc:  # duplicate or undecodable extension
        raise SvidVerificationError(f"certificate has malformed extensions: {exc}") from exc


def _uri_sans(cert: x509.Certificate) -> tuple[x509.Extension[Any] | None, list[str]]:
    san = _ext(cert, x509.SubjectAlternativeName)
    if san is None:
        return None, []
    return san, list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def check_x509_svid_leaf(leaf: x509.Certificate) -> SpiffeId:
    """Structural X.509-SVID leaf checks (no signatures); returns the leaf's SPIFFE ID."""
    try:
        return _check_leaf(leaf)
    except CERTIFICATE_DECODE_ERRORS as exc:  # undecodable fields of a lazy cert
        raise SvidVerificationError(f"leaf certificate is malformed: {exc}") from exc


def _check_leaf(leaf: x509.Certificate) -> SpiffeId:
    san, uris = _uri_sans(leaf)
    if san is None or not uris:
        raise SvidVerificationError("leaf has no URI SAN (not an X.509-SVID)")
    if len(uris) != 1:
        raise SvidVerificationError(f"leaf has {len(uris)} URI SANs; an X.509-SVID has exactly one")
    try:
        spiffe_id = parse_spiffe_id(uris[0])
    except InvalidSpiffeIdError as exc:
        raise SvidVerificationError(f"leaf URI SAN is not a SPIFFE ID: {exc.reason}") from exc
    if not spiffe_id.path:
        raise SvidVerificationError(f"leaf SPIFFE ID {spiffe_id} has no path")
    if len(leaf.subject) == 0 and not san.critical:
        raise SvidVerificationError("leaf has an empty subject but a non-critical SAN extension")
    bc = _ext(leaf, x509.BasicConstraints)
    if bc is not None and bc.value.ca:
        raise SvidVerificationError(f"leaf for {spiffe_id} is a CA certificate (cA=true)")
    ku = _ext(leaf, x509.KeyUsage)
    if ku is None or not ku.critical:
        raise SvidVerificationError(f"leaf for {spiffe_id} lacks a critical keyUsage extension")
    if not ku.value.digital_signature:
        raise SvidVerificationError(f"leaf for {spiffe_id}: keyUsage lacks digitalSignature")
    if ku.value.key_cert_sign or ku.value.crl_sign:
        raise SvidVerificationError(f"leaf for {spiffe_id}: keyUsage has keyCertSign or cRLSign")
    eku = _ext(leaf, x509.ExtendedKeyUsage)
    if eku is not None:
        usages = set(eku.value)
        if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages:
            raise SvidVerificationError(
                f"leaf for {spiffe_id}: extKeyUsage lacks serverAuth or clientAuth"
            )
    return spiffe_id


def _check_signing_cert(cert: x509.Certificate, trust_domain: TrustDomain) -> None:
    _, uris = _uri_sans(cert)
    for uri in uris:
        if not uri.startswith("spiffe://"):
            continue
        name = uri[len("spiffe://") :].split("/", 1)[0]
        if name != trust_domain.name:
            raise SvidVerificationError(
                f"signing certificate names trust domain {name!r}, expected {trust_domain}"
            )


def verify_x509_svid(
    chain: Sequence[x509.Certificate], bundles: BundleSource, *, now: dt.datetime
) -> VerifiedX509Svid:
    """Authenticate an X.509-SVID chain (leaf first) against its own domain's bundle."""
    if not chain:
        raise SvidVerificationError("empty certificate chain")
    leaf, intermediates = chain[0], list(chain[1:])
    spiffe_id = check_x509_svid_leaf(leaf)
    td = spiffe_id.trust_domain
    bundle = bundles.get(td)
    if bundle is None or not bundle.x509_authorities:
        raise SvidVerificationError(f"no X.509 bundle for trust domain {td}")
    try:
        for cert in intermediates:
            _check_signing_cert(cert, td)
    except CERTIFICATE_DECODE_ERRORS as exc:
        raise SvidVerificationError(f"intermediate certificate is malformed: {exc}") from exc
    verifier = (
        PolicyBuilder()
        .store(Store(list(bundle.x509_authorities)))
        .time(utc(now))
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise SvidVerificationError(
            f"X.509-SVID {spiffe_id} does not verify against the bundle of {td}: {exc}"
        ) from exc
    except CERTIFICATE_DECODE_ERRORS as exc:
        raise SvidVerificationError(f"X.509-SVID {spiffe_id} is malformed: {exc}") from exc
    return VerifiedX509Svid(spiffe_id=spiffe_id, chain=tuple(verified.chain))


def parse_der_chain(data: bytes) -> tuple[x509.Certificate, ...]:
    """Split concatenated DER certificates (Workload API encoding) into a chain."""
    certs: list[x509.Certificate] = []
    rest = data
    try:
        while rest:
            length = _der_length(rest)
            certs.append(load_der_certificate(rest[:length]))
            rest = rest[length:]
    except CERTIFICATE_DECODE_ERRORS as exc:
        raise SvidVerificationError(f"malformed DER certificate chain: {exc}") from exc
    if not certs:
        raise SvidVerificationError("empty certificate chain")
    return tuple(certs)


def _der_length(data: bytes) -> int:
    """Total length of the DER element at the start of ``data``."""
    if len(data) < 2 or data[0] != 0x30:
        raise ValueError("not a DER SEQUENCE")
    first = data[1]
    if first < 0x80:
        total = 2 + first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or len(data) < 2 + n:
            raise ValueError("bad DER length")
        total = 2 + n + int.from_bytes(data[2 : 2 + n], "big")
    if total > len(data):
        raise ValueError("truncated DER element")
    return total


# ---------------------------------------------------------------- JWT-SVID


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise JwtSvidError(f"duplicate JSON member {k!r} in JWT")
        out[k] = v
    return out


def _json_part(segment: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(
            b64url_decode(segment).decode("utf-8"), object_pairs_hook=_reject_duplicates
        )
    except JwtSvidError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JwtSvidError(f"JWT {what} is not base64url JSON") from exc
    if not isinstance(doc, dict):
        raise JwtSvidError(f"JWT {what} must be a JSON object")
    return doc


def _numeric_date(claims: Mapping[str, Any], name: str) -> dt.datetime | None:
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtSvidError(f"JWT claim {name!r} must be a number")
    try:
        return dt.datetime.fromtimestamp(value, dt.UTC)
    except (OverflowError, ValueError, OSError) as exc:
        raise JwtSvidError(f"JWT claim {name!r} is out of range") from exc


def verify_jwt_svid(
    token: str,
    bundles: BundleSource,
    *,
    audience: str,
    now: dt.datetime,
    allowed_algorithms: Iterable[str] = JWT_SVID_ALGORITHMS,
    leeway: dt.timedelta = dt.timedelta(0),
) -> VerifiedJwtSvid:
    """Validate a JWT-SVID for ``audience``; the key comes only from ``sub``'s domain."""
    allowed = frozenset(allowed_algorithms) & JWT_SVID_ALGORITHMS
    if not isinstance(token, str) or not token:
        raise JwtSvidError("JWT-SVID is empty")
    if len(token) > MAX_JWT_BYTES:
        raise JwtSvidError(f"JWT-SVID longer than {MAX_JWT_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtSvidError("JWT-SVID must be in compact serialisation (three parts)")
    header = _json_part(parts[0], "header")
    extra = set(header) - {"alg", "kid", "typ"}
    if extra:
        raise JwtSvidError(f"JWT header has members not allowed by JWT-SVID: {sorted(extra)}")
    alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
    if typ is not None and typ not in ("JWT", "JOSE"):
        raise JwtSvidError(f"JWT header typ {typ!r} is not JWT or JOSE")
    if not isinstance(alg, str) or alg not in allowed:
        raise JwtSvidError(f"JWT algorithm {alg!r} is not allowed")
    if not isinstance(kid, str) or not kid:
        raise JwtSvidError("JWT header has no kid")
    claims = _json_part(parts[1], "payload")
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise JwtSvidError("JWT has no 'sub' claim")
    try:
        spiffe_id = parse_spiffe_id(sub)
    except InvalidSpiffeIdError as exc:
        raise JwtSvidError(f"JWT 'sub' is not a SPIFFE ID: {exc.reason}") from exc
    bundle = bundles.get(spiffe_id.trust_domain)
    if bundle is None:
        raise JwtSvidError(f"no bundle for trust domain {spiffe_id.trust_domain}")
    key = bundle.jwt_key(kid)
    if key is None:
        raise JwtSvidError(f"kid {kid!r} is not in the bundle of {spiffe_id.trust_domain}")
    try:
        signature = b64url_decode(parts[2])
    except ValueError as exc:
        raise JwtSvidError("JWT signature is not base64url") from exc
    if not jws_verify(key.public_key, alg, f"{parts[0]}.{parts[1]}".encode("ascii"), signature):
        raise JwtSvidError(f"JWT signature does not verify with kid {kid!r}")
    now = utc(now)
    expiry = _numeric_date(claims, "exp")
    if expiry is None:
        raise JwtSvidError("JWT has no 'exp' claim")
    if now >= expiry + leeway:
        raise JwtSvidError(f"JWT-SVID for {spiffe_id} expired at {expiry.isoformat()}")
    not_before = _numeric_date(claims, "nbf")
    if not_before is not None and now < not_before - leeway:
        raise JwtSvidError(f"JWT-SVID for {spiffe_id} is not valid before {not_before.isoformat()}")
    aud = claims.get("aud")
    audiences = (aud,) if isinstance(aud, str) else aud
    if (
        not isinstance(audiences, list | tuple)
        or not audiences
        or not all(isinstance(a, str) for a in audiences)
    ):
        raise JwtSvidError("JWT 'aud' claim is missing or not a string/array of strings")
    if audience not in audiences:
        raise JwtSvidError(f"JWT-SVID audience {list(audiences)} does not include {audience!r}")
    return VerifiedJwtSvid(spiffe_id, tuple(audiences), expiry, kid, claims)
