"""Key types and the few JOSE primitives SPIFFE needs, built on ``cryptography``.

Three things live here because bundles (JWK entries), JWT-SVID issuance and
JWT-SVID validation all need them, and they must agree byte for byte:

* :class:`KeyType` and :func:`generate_private_key` — the CA and SVID key
  algorithms (ECDSA P-256 is the default everywhere; P-384 and RSA 2048/3072
  are available for interop);
* JWK public keys (RFC 7517/7518 §6): :func:`public_key_to_jwk` and
  :func:`public_key_from_jwk` for ``kty`` EC (P-256/384/521) and RSA, with
  strict base64url and coordinate-length checks, plus the RFC 7638 thumbprint
  used as the default JWT key ID;
* JWS signatures for the JWT-SVID algorithms (RS/ES/PS 256/384/512, the only
  ones the JWT-SVID standard allows): :func:`jws_sign` and :func:`jws_verify`.
  ECDSA JWS signatures are the fixed-width ``r || s`` (RFC 7518 §3.4), not DER.

No third-party JWT library is used: the JWT-SVID profile is small (compact
serialisation, three header fields, a fixed algorithm list), and doing it here
keeps the algorithm allowlist and the key lookup under our control.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Literal, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "JWT_SVID_ALGORITHMS",
    "JwsAlgorithm",
    "KeyType",
    "PrivateKey",
    "PublicKey",
    "b64url_decode",
    "b64url_encode",
    "default_jws_algorithm",
    "generate_private_key",
    "jwk_thumbprint",
    "jws_sign",
    "jws_verify",
    "public_key_from_jwk",
    "public_key_to_jwk",
]

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

JwsAlgorithm = Literal[
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"
]
JWT_SVID_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)

_CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_ES_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class KeyType(enum.Enum):
    """Key algorithms a CA or an SVID may use."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"


def generate_private_key(key_type: KeyType = KeyType.EC_P256) -> PrivateKey:
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    size = 2048 if key_type is KeyType.RSA_2048 else 3072
    return rsa.generate_private_key(public_exponent=65537, key_size=size)


def default_jws_algorithm(key: PrivateKey | PublicKey) -> JwsAlgorithm:
    """ES256 for P-256, ES384 for P-384, ES512 for P-521, RS256 for RSA."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        crv = _CURVE_NAMES.get(key.curve.name)
        if crv == "P-256":
            return "ES256"
        if crv == "P-384":
            return "ES384"
        if crv == "P-521":
            return "ES512"
        raise ValueError(f"unsupported curve {key.curve.name}")
    return "RS256"


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 §2): raises ``ValueError`` on anything else."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _uint_to_b64(n: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (n.bit_length() + 7) // 8)
    return b64url_encode(n.to_bytes(size, "big"))


def public_key_to_jwk(key: PublicKey) -> dict[str, str]:
    """The public parameters of ``key`` as JWK members (``kty`` and key fields only)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _CURVE_NAMES.get(key.curve.name)
        if crv is None:
            raise ValueError(f"unsupported curve {key.curve.name}")
        size = _CURVES[crv][1]
        nums = key.public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "x": _uint_to_b64(nums.x, size),
            "y": _uint_to_b64(nums.y, size),
        }
    nums_r = key.public_numbers()
    return {"kty": "RSA", "n": _uint_to_b64(nums_r.n), "e": _uint_to_b64(nums_r.e)}


def public_key_from_jwk(jwk: Mapping[str, object]) -> PublicKey:
    """Build a public key from JWK members; ``ValueError`` says what is wrong."""
    kty = jwk.get("kty")
    if kty == "EC":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in _CURVES:
            raise ValueError(f"unsupported EC curve {crv!r}")
        curve_cls, size = _CURVES[crv]
        coords = []
        for name in ("x", "y"):
            member = jwk.get(name)
            if not isinstance(member, str):
                raise ValueError(f"EC key lacks {name!r}")
            raw = b64url_decode(member)
            if len(raw) != size:
                raise ValueError(f"EC {name!r} must be {size} bytes for {crv}")
            coords.append(int.from_bytes(raw, "big"))
        if "d" in jwk:
            raise ValueError("private key material ('d') in a public JWK")
        return ec.EllipticCurvePublicNumbers(coords[0], coords[1], curve_cls()).public_key()
    if kty == "RSA":
        n_text, e_text = jwk.get("n"), jwk.get("e")
        if not isinstance(n_text, str) or not isinstance(e_text, str):
            raise ValueError("RSA key lacks 'n' or 'e'")
        if "d" in jwk:
            raise ValueError("private key material ('d') in a public JWK")
        n = int.from_bytes(b64url_decode(n_text), "big")
        e = int.from_bytes(b64url_decode(e_text), "big")
        if n.bit_length() < 2048:
            raise ValueError("RSA modulus shorter than 2048 bits")
        if e < 3 or e % 2 == 0:
            raise ValueError("invalid RSA public exponent")
        return rsa.RSAPublicNumbers(e, n).public_key()
    raise ValueError(f"unsupported key type {kty!r}")


def jwk_thumbprint(key: PublicKey) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url: a stable, collision-free key ID."""
    members = public_key_to_jwk(key)
    canonical = json.dumps(dict(sorted(members.items())), separators=(",", ":"))
    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


def jws_sign(key: PrivateKey, alg: JwsAlgorithm, signing_input: bytes) -> bytes:
    """Sign ``signing_input`` (``header.payload``) with ``alg``; ES* return ``r || s``."""
    digest = _HASHES[alg[2:]]()
    if alg.startswith("ES"):
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{alg} needs an EC key")
        if _CURVE_NAMES.get(key.curve.name) != _ES_CURVE[alg]:
            raise ValueError(f"{alg} needs curve {_ES_CURVE[alg]}")
        size = _CURVES[_ES_CURVE[alg]][1]
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{alg} needs an RSA key")
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        return key.sign(signing_input, pss, digest)
    return key.sign(signing_input, padding.PKCS1v15(), digest)


def jws_verify(key: PublicKey, alg: str, signing_input: bytes, signature: bytes) -> bool:
    """True when ``signature`` is valid for ``alg`` and ``key``; never raises for bad input."""
    if alg not in JWT_SVID_ALGORITHMS:
        return False
    digest = _HASHES[alg[2:]]()
    try:
        if alg.startswith("ES"):
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return False
            if _CURVE_NAMES.get(key.curve.name) != _ES_CURVE[alg]:
                return False
            size = _CURVES[_ES_CURVE[alg]][1]
            if len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(digest))
            return True
        if not isinstance(key, rsa.RSAPublicKey):
            return False
        if alg.startswith("PS"):
            pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            key.verify(signature, signing_input, pss, digest)
        else:
            key.verify(signature, signing_input, padding.PKCS1v15(), digest)
        return True
    except (InvalidSignature, ValueError):
        return False
