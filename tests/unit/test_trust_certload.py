"""Certificates with a non-positive serial number are refused (RFC 5280 §4.1.2.2)."""

from __future__ import annotations

import warnings

import pytest

from atoll_trust.certload import load_der_certificate
from atoll_trust.errors import SvidVerificationError
from atoll_trust.verify import parse_der_chain
from tests.certkit import self_signed


def _der(serial: int) -> bytes:
    der = self_signed("t", serial=1).cert_der()
    if serial == 1:
        return der
    # the builder refuses a non-positive serial: patch the DER's one-byte INTEGER 1
    # (tag 0x02, length 0x01, value 0x01 right after the version field)
    at = der.index(b"\x02\x01\x01")
    return der[:at] + b"\x02\x01" + serial.to_bytes(1, "big", signed=True) + der[at + 3 :]


def test_a_positive_serial_loads() -> None:
    assert load_der_certificate(_der(1)).serial_number == 1


@pytest.mark.parametrize("serial", [0, -1])
def test_a_non_positive_serial_is_refused_without_a_warning(serial: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a deprecation warning escapes
        with pytest.raises(ValueError, match="serial number is not positive"):
            load_der_certificate(_der(serial))
        with pytest.raises(SvidVerificationError, match="malformed DER certificate chain"):
            parse_der_chain(_der(serial))
