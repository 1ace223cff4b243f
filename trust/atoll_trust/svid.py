"""SVID value types: what a CA issues, the Workload API serves and verifiers accept.

* :class:`X509Svid` — the certificate chain (leaf first, DER order of the
  Workload API) and, when the holder is the workload itself, its private key.
* :class:`JwtSvid` — a compact JWT-SVID token with its decoded essentials.

They are frozen so a snapshot of a workload's identity can be shared between
the Workload API streams without copying.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from atoll_trust.jose import PrivateKey
from atoll_trust.spiffe_id import SpiffeId

__all__ = ["JwtSvid", "X509Svid", "certificate_key_id", "concat_der"]


def certificate_key_id(cert: x509.Certificate) -> str:
    """Hex Subject Key Identifier of ``cert`` (computed from the key if absent)."""
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    return ski.digest.hex()


def concat_der(certs: tuple[x509.Certificate, ...]) -> bytes:
    """Certificates as concatenated DER, the Workload API's encoding of chains and bundles."""
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)


@dataclass(frozen=True, slots=True)
class X509Svid:
    """An X.509-SVID: ``chain[0]`` is the leaf; intermediates follow, never the root."""

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey | None = None
    hint: str = ""

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def issuer_key_id(self) -> str:
        """Hex Authority Key Identifier of the leaf: which CA key signed it."""
        aki = self.leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        return (aki.key_identifier or b"").hex()

    def chain_der(self) -> bytes:
        return concat_der(self.chain)

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def private_key_der(self) -> bytes:
        """PKCS#8 DER of the private key (what the Workload API sends)."""
        if self.private_key is None:
            raise ValueError(f"X.509-SVID for {self.spiffe_id} carries no private key")
        return self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def private_key_pem(self) -> bytes:
        if self.private_key is None:
            raise ValueError(f"X.509-SVID for {self.spiffe_id} carries no private key")
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True, slots=True)
class JwtSvid:
    """A JWT-SVID in compact serialisation and the claims that matter to callers."""

    token: str
    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expiry: dt.datetime
    key_id: str
    hint: str = ""
