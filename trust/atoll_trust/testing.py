"""Test helpers that ship with the package: a fixed epoch and a free-form certificate builder.

:func:`build_certificate` makes the certificates a conforming CA refuses to
issue (two URI SANs, ``cA=true`` leaves, missing key usage, foreign signers),
so every verifier can be tested against them. Not for production use.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from atoll_trust.ca import X509Authority
from atoll_trust.jose import PrivateKey, PublicKey, generate_private_key

__all__ = ["T0", "build_certificate"]

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def build_certificate(
    issuer: X509Authority,
    *,
    uris: Sequence[str],
    not_before: dt.datetime,
    not_after: dt.datetime,
    public_key: PublicKey | None = None,
    ca: bool = False,
    digital_signature: bool = True,
    key_cert_sign: bool = False,
    key_usage: bool = True,
    key_usage_critical: bool = True,
    eku: Sequence[x509.ObjectIdentifier] | None = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
    empty_subject: bool = False,
    san_critical: bool = False,
    signer_key: PrivateKey | None = None,
) -> x509.Certificate:
    """A certificate issued by ``issuer`` (or signed by ``signer_key``) with the given flaws."""
    key = public_key if public_key is not None else generate_private_key().public_key()
    subject = (
        x509.Name([])
        if empty_subject
        else x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test")])
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                issuer.certificate.extensions.get_extension_for_class(
                    x509.SubjectKeyIdentifier
                ).value
            ),
            critical=False,
        )
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=san_critical,
        )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=key_usage_critical,
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(signer_key or issuer.private_key, hashes.SHA256())
