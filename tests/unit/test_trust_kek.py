"""Key-encryption key: loading from file/env, sealing, and every failure being loud."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atoll_trust.ca import generate_x509_authority
from atoll_trust.errors import KekUnavailableError, KeyDecryptionError
from atoll_trust.kek import (
    AesGcmKeyEncryptor,
    KeyEncryptor,
    generate_kek_text,
    open_private_key,
    seal_private_key,
)
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.testing import T0

A, B = TrustDomain("a.atoll"), TrustDomain("b.atoll")
KEK = bytes(range(32))


def test_protocol_is_satisfied() -> None:
    assert isinstance(AesGcmKeyEncryptor(KEK), KeyEncryptor)


def test_seal_and_open_a_ca_key() -> None:
    enc = AesGcmKeyEncryptor(KEK)
    key = generate_x509_authority(A, now=T0, ttl=dt.timedelta(days=1)).private_key
    sealed = seal_private_key(key, enc, trust_domain=A)
    assert sealed.startswith(b"AKE1")
    opened = open_private_key(sealed, enc, trust_domain=A)
    assert opened.private_numbers() == key.private_numbers()


def test_nonces_differ_and_are_injected() -> None:
    counter = iter(range(1000))
    enc = AesGcmKeyEncryptor(KEK, random_bytes=lambda n: bytes([next(counter)]) * n)
    one = enc.seal(b"x", trust_domain=A)
    two = enc.seal(b"x", trust_domain=A)
    assert one != two
    assert enc.open(one, trust_domain=A) == b"x"


def test_wrong_kek_wrong_domain_and_tampering_are_distinct_clear_errors() -> None:
    enc = AesGcmKeyEncryptor(KEK)
    sealed = enc.seal(b"secret", trust_domain=A)
    with pytest.raises(KeyDecryptionError, match="different KEK"):
        AesGcmKeyEncryptor(bytes(32)).open(sealed, trust_domain=A)
    with pytest.raises(KeyDecryptionError, match="another trust domain"):
        enc.open(sealed, trust_domain=B)
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(KeyDecryptionError, match="tampered"):
        enc.open(flipped, trust_domain=A)
    with pytest.raises(KeyDecryptionError, match="bad header"):
        enc.open(b"junk", trust_domain=A)
    with pytest.raises(KeyDecryptionError, match="PKCS#8"):
        open_private_key(enc.seal(b"not a key", trust_domain=A), enc, trust_domain=A)


@settings(max_examples=200)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=199))
def test_fuzz_any_corruption_is_a_typed_error(noise: bytes, where: int) -> None:
    enc = AesGcmKeyEncryptor(KEK, random_bytes=lambda n: b"\x07" * n)
    sealed = enc.seal(b"payload", trust_domain=A)
    corrupted = (sealed[:where] + noise + sealed[where + len(noise) :])[: len(sealed) + len(noise)]
    if corrupted == sealed:
        return
    with pytest.raises(KeyDecryptionError):
        enc.open(corrupted, trust_domain=A)


def test_kek_from_file_in_three_encodings(tmp_path: Path) -> None:
    sealed = AesGcmKeyEncryptor(KEK).seal(b"k", trust_domain=A)
    for name, content in (
        ("raw", KEK),
        ("hex", KEK.hex().encode() + b"\n"),
        ("b64", base64.b64encode(KEK) + b"\n"),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        path.chmod(0o600)
        assert AesGcmKeyEncryptor.from_file(path).open(sealed, trust_domain=A) == b"k"


def test_kek_from_env_and_generated_text() -> None:
    text = generate_kek_text(lambda n: KEK[:n])
    enc = AesGcmKeyEncryptor.from_env("K", environ={"K": text})
    assert enc.key_id == AesGcmKeyEncryptor(KEK).key_id
    with pytest.raises(KekUnavailableError, match="not set"):
        AesGcmKeyEncryptor.from_env("K", environ={})
    with pytest.raises(KekUnavailableError, match="32 bytes"):
        AesGcmKeyEncryptor.from_env("K", environ={"K": "c2hvcnQ="})


def test_missing_or_malformed_kek_file(tmp_path: Path) -> None:
    with pytest.raises(KekUnavailableError, match="cannot read"):
        AesGcmKeyEncryptor.from_file(tmp_path / "absent")
    bad = tmp_path / "bad"
    bad.write_bytes(b"too short")
    with pytest.raises(KekUnavailableError, match="32 bytes"):
        AesGcmKeyEncryptor.from_file(bad)
    with pytest.raises(KekUnavailableError):
        AesGcmKeyEncryptor(b"x" * 31)
