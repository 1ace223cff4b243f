"""A trust domain's signing authorities and SVID issuance (X.509-SVID and JWT-SVID).

Model
-----
A trust domain holds *authorities*: :class:`X509Authority` (a self-signed CA
certificate and its key) signs X.509-SVIDs; :class:`JwtAuthority` (a key with a
``kid``) signs JWT-SVIDs. Which authority is active, prepared or old is the
rotation planner's business (:mod:`atoll_trust.rotation`); this module only
mints authorities and issues SVIDs from one, as pure functions of their inputs
plus ``now`` (the clock is injected; serial numbers may be).

What an X.509-SVID looks like (X.509-SVID standard §§2-4, RFC 5280):

* leaf: exactly one URI SAN (the SPIFFE ID, non-root path), optional DNS SANs
  (for gRPC/TLS clients that insist on a host name), ``basicConstraints``
  critical ``cA=false``, ``keyUsage`` critical ``digitalSignature`` only,
  ``extKeyUsage`` serverAuth + clientAuth, SKI and AKI; subject ``O=Atoll``;
  not-before backdated by ``backdate`` (10 s, clock skew) but never before the
  CA's; not-after clamped to the CA's not-after, so no SVID outlives its signer;
* signing certificate: self-signed, ``cA=true`` critical, ``keyUsage``
  critical keyCertSign + cRLSign, URI SAN ``spiffe://<td>`` (no path), SKI,
  AKI; no name constraints (``cryptography``'s verifier rejects URI name
  constraints, and SPIFFE does not need them).

JWT-SVIDs (JWT-SVID standard): compact JWS, header exactly ``alg``, ``kid`` and
``typ: JWT``; claims ``sub`` (SPIFFE ID), ``aud`` (array), ``exp``, ``iat``.
ES256 with a P-256 key by default; ``kid`` defaults to the RFC 7638 thumbprint.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from atoll_trust.clock import utc
from atoll_trust.errors import IssuanceError
from atoll_trust.jose import (
    JwsAlgorithm,
    KeyType,
    PrivateKey,
    PublicKey,
    b64url_encode,
    default_jws_algorithm,
    generate_private_key,
    jwk_thumbprint,
    jws_sign,
)
from atoll_trust.spiffe_id import SpiffeId, TrustDomain
from atoll_trust.svid import JwtSvid, X509Svid, certificate_key_id

__all__ = [
    "DEFAULT_BACKDATE",
    "JwtAuthority",
    "X509Authority",
    "generate_jwt_authority",
    "generate_x509_authority",
    "issue_jwt_svid",
    "issue_x509_svid",
    "mint_x509_svid",
]

DEFAULT_BACKDATE = dt.timedelta(seconds=10)
SerialSource = Callable[[], int]


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


@dataclass(frozen=True, slots=True)
class X509Authority:
    """A CA certificate of ``trust_domain`` with its private key."""

    trust_domain: TrustDomain
    certificate: x509.Certificate
    private_key: PrivateKey

    @property
    def key_id(self) -> str:
        """Hex SKI of the CA certificate; SVIDs name it in their AKI."""
        return certificate_key_id(self.certificate)

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc


@dataclass(frozen=True, slots=True)
class JwtAuthority:
    """A JWT-SVID signing key of ``trust_domain``, published in the bundle as ``kid``."""

    trust_domain: TrustDomain
    key_id: str
    private_key: PrivateKey
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    @property
    def algorithm(self) -> JwsAlgorithm:
        return default_jws_algorithm(self.private_key)


def generate_x509_authority(
    trust_domain: TrustDomain,
    *,
    now: dt.datetime,
    ttl: dt.timedelta,
    key_type: KeyType = KeyType.EC_P256,
    private_key: PrivateKey | None = None,
    serial_number: int | None = None,
) -> X509Authority:
    """A fresh self-signed CA for ``trust_domain`` valid from ``now`` for ``ttl``."""
    if ttl <= dt.timedelta(0):
        raise IssuanceError(f"CA lifetime must be positive, got {ttl}")
    now = utc(now)
    key = private_key if private_key is not None else generate_private_key(key_type)
    serial = serial_number if serial_number is not None else x509.random_serial_number()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Atoll"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, f"{serial:x}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(trust_domain.id))]),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, _hash_for(key))
    )
    return X509Authority(trust_domain=trust_domain, certificate=cert, private_key=key)


def generate_jwt_authority(
    trust_domain: TrustDomain,
    *,
    now: dt.datetime,
    ttl: dt.timedelta,
    key_type: KeyType = KeyType.EC_P256,
    private_key: PrivateKey | None = None,
    key_id: str | None = None,
) -> JwtAuthority:
    """A fresh JWT signing key; ``kid`` defaults to the key's RFC 7638 thumbprint."""
    if ttl <= dt.timedelta(0):
        raise IssuanceError(f"JWT key lifetime must be positive, got {ttl}")
    now = utc(now)
    key = private_key if private_key is not None else generate_private_key(key_type)
    kid = key_id if key_id is not None else jwk_thumbprint(key.public_key())
    return JwtAuthority(trust_domain, kid, key, now, now + ttl)


def _svid_window(
    signer_not_before: dt.datetime,
    signer_not_after: dt.datetime,
    *,
    now: dt.datetime,
    ttl: dt.timedelta,
    backdate: dt.timedelta,
    what: str,
) -> tuple[dt.datetime, dt.datetime]:
    if ttl <= dt.timedelta(0):
        raise IssuanceError(f"{what} lifetime must be positive, got {ttl}")
    if now < signer_not_before or now >= signer_not_after:
        raise IssuanceError(
            f"signing authority is not valid at {now.isoformat()} "
            f"(valid {signer_not_before.isoformat()} .. {signer_not_after.isoformat()})"
        )
    return max(signer_not_before, now - backdate), min(signer_not_after, now + ttl)


def _check_subject(authority_td: TrustDomain, spiffe_id: SpiffeId) -> None:
    if spiffe_id.trust_domain != authority_td:
        raise IssuanceError(f"{spiffe_id} is not in trust domain {authority_td}")
    if not spiffe_id.path:
        raise IssuanceError(f"{spiffe_id} has no path; an SVID names a workload, not a domain")


_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_EKU = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)
_LEAF_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Atoll")])
_LEAF_BC = x509.BasicConstraints(ca=False, path_length=None)


def issue_x509_svid(
    authority: X509Authority,
    spiffe_id: SpiffeId,
    *,
    public_key: PublicKey,
    now: dt.datetime,
    ttl: dt.timedelta,
    dns_names: Iterable[str] = (),
    backdate: dt.timedelta = DEFAULT_BACKDATE,
    serial_number: int | None = None,
) -> X509Svid:
    """Sign an X.509-SVID for ``spiffe_id`` over ``public_key`` (CSR-style issuance).

    The result carries no private key. Raises :class:`IssuanceError` if the ID
    is foreign or has no path, the lifetime is not positive, or the CA is not
    valid at ``now``.
    """
    _check_subject(authority.trust_domain, spiffe_id)
    now = utc(now)
    not_before, not_after = _svid_window(
        authority.not_before,
        authority.not_after,
        now=now,
        ttl=ttl,
        backdate=backdate,
        what="SVID",
    )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    sans.extend(x509.DNSName(name) for name in dns_names)
    ca_ski = authority.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_LEAF_SUBJECT)
        .issuer_name(authority.certificate.subject)
        .public_key(public_key)
        .serial_number(serial_number if serial_number is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_LEAF_BC, critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(_LEAF_EKU, critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(authority.private_key, _hash_for(authority.private_key))
    )
    return X509Svid(spiffe_id=spiffe_id, chain=(cert,))


def mint_x509_svid(
    authority: X509Authority,
    spiffe_id: SpiffeId,
    *,
    now: dt.datetime,
    ttl: dt.timedelta,
    key_type: KeyType = KeyType.EC_P256,
    dns_names: Iterable[str] = (),
    hint: str = "",
) -> X509Svid:
    """Generate a key pair and issue an X.509-SVID for it (what the Workload API serves)."""
    key = generate_private_key(key_type)
    svid = issue_x509_svid(
        authority, spiffe_id, public_key=key.public_key(), now=now, ttl=ttl, dns_names=dns_names
    )
    return X509Svid(spiffe_id=spiffe_id, chain=svid.chain, private_key=key, hint=hint)


def issue_jwt_svid(
    authority: JwtAuthority,
    spiffe_id: SpiffeId,
    *,
    audience: Iterable[str],
    now: dt.datetime,
    ttl: dt.timedelta,
    hint: str = "",
) -> JwtSvid:
    """Sign a JWT-SVID for ``spiffe_id`` valid for ``audience`` (at least one, non-empty)."""
    _check_subject(authority.trust_domain, spiffe_id)
    aud = tuple(audience)
    if not aud or any(not a for a in aud):
        raise IssuanceError("a JWT-SVID needs at least one non-empty audience")
    now = utc(now)
    _, expiry = _svid_window(
        authority.not_before,
        authority.not_after,
        now=now,
        ttl=ttl,
        backdate=dt.timedelta(0),
        what="JWT-SVID",
    )
    alg = authority.algorithm
    header = {"alg": alg, "kid": authority.key_id, "typ": "JWT"}
    claims = {
        "sub": str(spiffe_id),
        "aud": list(aud),
        "exp": int(expiry.timestamp()),
        "iat": int(now.timestamp()),
    }
    signing_input = (
        b64url_encode(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = jws_sign(authority.private_key, alg, signing_input.encode("ascii"))
    token = signing_input + "." + b64url_encode(signature)
    exp_exact = dt.datetime.fromtimestamp(claims["exp"], dt.UTC)  # type: ignore[arg-type]
    return JwtSvid(token, spiffe_id, aud, exp_exact, authority.key_id, hint)
