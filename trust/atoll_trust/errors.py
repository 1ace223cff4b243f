"""The trust layer's error tree, grafted onto Atoll's kernel families.

Every error here derives from :class:`TrustError` *and* from one of the kernel
families in :mod:`atoll.errors`, so a caller can catch by component ("anything
the trust layer refused") or by what to do next ("the input was wrong, do not
retry" / "stop the process"):

* bad input — an unparsable SPIFFE ID, a malformed bundle document, a
  certificate or token that fails verification — is a :class:`~atoll.errors.UserError`
  (mostly :class:`~atoll.errors.InvalidError`): retrying the same bytes fails again;
* a bundle update that is well formed but not acceptable (lower sequence,
  different domain, would leave the domain with no keys) is
  :class:`BundleRejectedError`; the previously stored bundle is kept;
* a CA key that cannot be decrypted (wrong key-encryption key, tampered file)
  or a KEK that cannot be loaded is a :class:`~atoll.errors.FatalError`: the
  agent must not start issuing with some other key, and it never falls back
  silently to a fresh CA.

Messages are one line and name the offending value, so the CLI can print them
as they are.
"""

from __future__ import annotations

import enum

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from atoll.errors import AtollError, FatalError, InvalidError, UserError

__all__ = [
    "CERTIFICATE_DECODE_ERRORS",
    "BundleRejectReason",
    "BundleRejectedError",
    "CaStateCorruptError",
    "InvalidBundleError",
    "InvalidSpiffeIdError",
    "IssuanceError",
    "JwtSvidError",
    "KekUnavailableError",
    "KeyDecryptionError",
    "SvidVerificationError",
    "TrustError",
]


class TrustError(AtollError):
    """Base of every error raised deliberately by :mod:`atoll_trust`."""


class InvalidSpiffeIdError(TrustError, InvalidError):
    """A string is not a SPIFFE ID (or trust domain name) per the SPIFFE-ID standard."""

    def __init__(self, message: str, *, value: str) -> None:
        shown = value if len(value) <= 80 else value[:77] + "..."
        super().__init__(f"invalid SPIFFE ID {shown!r}: {message}", field="spiffe_id")
        self.value = value
        self.reason = message


class InvalidBundleError(TrustError, InvalidError):
    """A SPIFFE bundle document is malformed (bad JSON, missing ``keys``, bad entry)."""


class BundleRejectReason(enum.Enum):
    """Why a well-formed bundle was not accepted into a :class:`BundleSet`."""

    LOWER_SEQUENCE = "lower_sequence"
    CONFLICTING_SAME_SEQUENCE = "conflicting_same_sequence"
    WRONG_TRUST_DOMAIN = "wrong_trust_domain"
    NO_KEYS = "no_keys"


class BundleRejectedError(TrustError, UserError):
    """A bundle update was refused; the stored bundle of that domain is unchanged."""

    def __init__(self, message: str, *, reason: BundleRejectReason, trust_domain: str) -> None:
        super().__init__(f"bundle for {trust_domain} rejected: {message}")
        self.reason = reason
        self.trust_domain = trust_domain


class SvidVerificationError(TrustError, UserError):
    """An X.509-SVID (or its chain) failed verification; the peer is not authenticated."""


class JwtSvidError(TrustError, UserError):
    """A JWT-SVID is malformed or failed validation (signature, kid, exp, aud, alg)."""


class IssuanceError(TrustError, UserError):
    """The CA refused to issue (bad request: foreign trust domain, lifetime beyond the CA)."""


class KekUnavailableError(TrustError, FatalError):
    """The key-encryption key cannot be loaded (missing file/variable, wrong length)."""


class KeyDecryptionError(TrustError, FatalError):
    """A sealed CA key cannot be opened: wrong KEK, wrong trust domain, or tampered data."""


class CaStateCorruptError(TrustError, FatalError):
    """The persisted CA state is unreadable or inconsistent (cert does not match key)."""


#: what ``cryptography`` raises for bytes that are not a usable certificate:
#: ``InvalidVersion`` is neither a ValueError nor an UnsupportedAlgorithm, and a
#: fuzzer found it escaping (a corrupted version field).
CERTIFICATE_DECODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    # raised lazily, when the extensions are first read; not a ValueError
    x509.DuplicateExtension,
    # raised lazily too, for a name attribute of the wrong ASN.1 type (a fuzzer found it)
    TypeError,
)
