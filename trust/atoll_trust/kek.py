"""CA private keys at rest: sealed with a key-encryption key (KEK).

A CA key never touches disk in clear. :class:`KeyEncryptor` is the seam: the
built-in :class:`AesGcmKeyEncryptor` holds a 256-bit KEK read from a file or an
environment variable; a KMS or HSM implementation only has to provide the same
three members (``key_id``, ``seal``, ``open``).

Envelope (version 1), all binary::

    b"AKE1" | kek_id (8 bytes) | nonce (12 bytes) | AES-256-GCM ciphertext+tag

* The associated data is ``b"atoll/ca-key/v1\\0" + trust_domain``, so a key
  sealed for domain A cannot be swapped into domain B's state file: opening it
  for B fails authentication.
* ``kek_id`` is ``HMAC-SHA256(KEK, "atoll kek id v1")[:8]``: it reveals nothing
  useful about the KEK but lets :meth:`AesGcmKeyEncryptor.open` say "sealed with
  a different KEK" instead of a generic failure when an operator mixes up keys.
* Nonces are 96 random bits from an injected source; a KEK seals a handful of
  CA keys over its life, far below GCM's random-nonce bound.

Every failure is :class:`~atoll_trust.errors.KeyDecryptionError` or
:class:`~atoll_trust.errors.KekUnavailableError` (both fatal): the caller must
stop, never fall back to generating a fresh CA, which would silently fork the
trust domain.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from atoll_trust.errors import KekUnavailableError, KeyDecryptionError
from atoll_trust.jose import PrivateKey
from atoll_trust.spiffe_id import TrustDomain

__all__ = [
    "AesGcmKeyEncryptor",
    "KeyEncryptor",
    "generate_kek_text",
    "load_key_encryptor",
    "open_private_key",
    "seal_private_key",
]

log = logging.getLogger("atoll.trust")

MAGIC = b"AKE1"
KEK_BYTES = 32
_ID_BYTES = 8
_NONCE_BYTES = 12
_HEADER = len(MAGIC) + _ID_BYTES + _NONCE_BYTES
_AAD_PREFIX = b"atoll/ca-key/v1\x00"


@runtime_checkable
class KeyEncryptor(Protocol):
    """Seals and opens small secrets (CA private keys) bound to a trust domain."""

    @property
    def key_id(self) -> str:
        """A non-secret identifier of the key-encryption key (for status and errors)."""
        ...

    def seal(self, plaintext: bytes, *, trust_domain: TrustDomain) -> bytes: ...

    def open(self, sealed: bytes, *, trust_domain: TrustDomain) -> bytes:
        """Return the plaintext or raise :class:`KeyDecryptionError`."""
        ...


def _decode_kek(text: bytes, *, source: str) -> bytes:
    if len(text) == KEK_BYTES:
        return text
    stripped = text.strip()
    if len(stripped) == 2 * KEK_BYTES:
        try:
            return bytes.fromhex(stripped.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == KEK_BYTES:
        return raw
    raise KekUnavailableError(
        f"KEK from {source} must be {KEK_BYTES} bytes: raw, {2 * KEK_BYTES} hex digits, or base64"
    )


def generate_kek_text(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """A fresh KEK in the text form the loaders accept (base64 of 32 random bytes)."""
    return base64.b64encode(random_bytes(KEK_BYTES)).decode("ascii")


class AesGcmKeyEncryptor:
    """AES-256-GCM envelope encryption under a 32-byte KEK (see module docstring)."""

    __slots__ = ("_aead", "_id", "_random")

    def __init__(self, kek: bytes, *, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if len(kek) != KEK_BYTES:
            raise KekUnavailableError(f"KEK must be {KEK_BYTES} bytes, got {len(kek)}")
        self._aead = AESGCM(kek)
        self._id = hmac.new(kek, b"atoll kek id v1", hashlib.sha256).digest()[:_ID_BYTES]
        self._random = random_bytes

    @classmethod
    def from_file(
        cls, path: Path, *, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> AesGcmKeyEncryptor:
        """Load the KEK from ``path`` (raw 32 bytes, hex or base64 text)."""
        try:
            info = path.stat()
            data = path.read_bytes()
        except OSError as exc:
            raise KekUnavailableError(f"cannot read KEK file {path}: {exc.strerror}") from exc
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("KEK file is readable by group or others", extra={"path": str(path)})
        return cls(_decode_kek(data, source=str(path)), random_bytes=random_bytes)

    @classmethod
    def from_env(
        cls,
        name: str = "ATOLL_TRUST_KEK",
        *,
        environ: Mapping[str, str] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> AesGcmKeyEncryptor:
        """Load the KEK from environment variable ``name`` (hex or base64)."""
        env = os.environ if environ is None else environ
        value = env.get(name)
        if not value:
            raise KekUnavailableError(f"environment variable {name} is not set or empty")
        return cls(_decode_kek(value.encode(), source=f"${name}"), random_bytes=random_bytes)

    @property
    def key_id(self) -> str:
        return self._id.hex()

    def seal(self, plaintext: bytes, *, trust_domain: TrustDomain) -> bytes:
        nonce = self._random(_NONCE_BYTES)
        aad = _AAD_PREFIX + trust_domain.name.encode()
        return MAGIC + self._id + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, *, trust_domain: TrustDomain) -> bytes:
        if len(sealed) < _HEADER + 16 or not sealed.startswith(MAGIC):
            raise KeyDecryptionError("not a sealed Atoll key (bad header or truncated)")
        kek_id = sealed[len(MAGIC) : len(MAGIC) + _ID_BYTES]
        if not hmac.compare_digest(kek_id, self._id):
            raise KeyDecryptionError(
                f"key was sealed with a different KEK (id {kek_id.hex()}, "
                f"loaded KEK has id {self.key_id})"
            )
        nonce = sealed[len(MAGIC) + _ID_BYTES : _HEADER]
        aad = _AAD_PREFIX + trust_domain.name.encode()
        try:
            return self._aead.decrypt(nonce, sealed[_HEADER:], aad)
        except InvalidTag as exc:
            raise KeyDecryptionError(
                f"sealed key failed authentication for trust domain {trust_domain}: "
                "the data was tampered with or sealed for another trust domain"
            ) from exc


def load_key_encryptor(
    kek_file: Path | None,
    *,
    env_name: str = "ATOLL_TRUST_KEK",
    environ: Mapping[str, str] | None = None,
) -> AesGcmKeyEncryptor:
    """The KEK from ``kek_file`` if given, else from ``$ATOLL_TRUST_KEK``; never a default."""
    if kek_file is not None:
        return AesGcmKeyEncryptor.from_file(kek_file)
    env = os.environ if environ is None else environ
    if not env.get(env_name):
        raise KekUnavailableError(
            f"no key-encryption key: pass --kek-file FILE or set ${env_name} "
            "(create one with `atoll trust kek > FILE`)"
        )
    return AesGcmKeyEncryptor.from_env(env_name, environ=env)


def seal_private_key(
    key: PrivateKey, encryptor: KeyEncryptor, *, trust_domain: TrustDomain
) -> bytes:
    """PKCS#8 DER of ``key``, sealed for ``trust_domain``."""
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return encryptor.seal(der, trust_domain=trust_domain)


def open_private_key(
    sealed: bytes, encryptor: KeyEncryptor, *, trust_domain: TrustDomain
) -> PrivateKey:
    """Inverse of :func:`seal_private_key`; raises :class:`KeyDecryptionError`."""
    der = encryptor.open(sealed, trust_domain=trust_domain)
    try:
        key = serialization.load_der_private_key(der, password=None)
    except ValueError as exc:
        raise KeyDecryptionError("sealed data is not a PKCS#8 private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeyDecryptionError(f"unsupported CA key type {type(key).__name__}")
    return key
