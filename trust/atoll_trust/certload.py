"""Loading DER certificates from peers and bundles, strictly.

``cryptography`` still parses a certificate whose serial number is zero or
negative — RFC 5280 §4.1.2.2 requires a positive one — and only warns that a
future release will refuse it (our fuzzers hit that warning). Atoll refuses it
now, with the same error type as any other undecodable certificate
(``ValueError``, one of :data:`~atoll_trust.errors.CERTIFICATE_DECODE_ERRORS`),
so every caller's existing handling applies and behaviour does not change
under a cryptography upgrade.
"""

from __future__ import annotations

import warnings

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

__all__ = ["load_der_certificate"]


def load_der_certificate(der: bytes) -> x509.Certificate:
    """A certificate from DER; ``ValueError`` if it is malformed or its serial is not positive."""
    with warnings.catch_warnings():  # cryptography warns when the serial is read
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        cert = x509.load_der_x509_certificate(der)
        if cert.serial_number <= 0:
            raise ValueError("certificate serial number is not positive (RFC 5280 §4.1.2.2)")
    return cert
