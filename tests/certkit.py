"""Throw-away self-signed X.509 certificates for tests and benchmarks.

Some peers of the code under test speak plain Web PKI TLS, not SPIFFE: the
bundle endpoint's ``https_web`` profile, a TLS listener an agent probes, nginx
in the gateway benchmark. They need a self-signed certificate and its key,
often as PEM files; :func:`self_signed` makes one (EC P-256, SHA-256, valid
from an hour ago until a day from now unless told otherwise).

SPIFFE CAs, SVIDs and bundles are another matter:
:class:`atoll_gateway.testing.TestPki` and :mod:`atoll_trust.ca` make those,
and :func:`atoll_trust.testing.build_certificate` makes the flawed ones.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["SelfSigned", "self_signed"]


@dataclass(frozen=True, slots=True)
class SelfSigned:
    """A self-signed certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def cert_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def key_pem(self) -> bytes:
        """The key as unencrypted PKCS #8 PEM (what OpenSSL-based servers load)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write_pem(self, cert_path: Path, key_path: Path) -> tuple[Path, Path]:
        """Write the certificate and the key as PEM files; their paths, in that order."""
        cert_path.write_bytes(self.cert_pem())
        key_path.write_bytes(self.key_pem())
        return cert_path, key_path


def self_signed(
    common_name: str,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    ca: bool = False,
    serial: int | None = None,
    now: dt.datetime | None = None,
    lifetime: dt.timedelta = dt.timedelta(days=1),
) -> SelfSigned:
    """A new EC P-256 key and a certificate for it, issued by itself to ``common_name``.

    ``dns_names`` and ``ip_addresses`` become the subjectAltName (none if both
    are empty: a client that checks the host name will refuse it). ``ca`` adds a
    critical ``basicConstraints cA=TRUE`` for clients that want their trust
    anchor to be a CA. ``serial`` is random unless given. Valid from an hour
    before ``now`` (clock skew between processes) until ``now + lifetime``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = now or dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + lifetime)
    )
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    return SelfSigned(builder.sign(key, hashes.SHA256()), key)
