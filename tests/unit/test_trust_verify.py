"""Verifiers: own-domain-only X.509-SVID validation and JWT-SVID validation, negatives first."""

from __future__ import annotations

import contextlib
import datetime as dt
import json

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import example, given, settings
from hypothesis import strategies as st

from atoll_trust.bundle import BundleSet, JwtKey, TrustBundle
from atoll_trust.ca import (
    generate_jwt_authority,
    generate_x509_authority,
    issue_jwt_svid,
    mint_x509_svid,
)
from atoll_trust.errors import JwtSvidError, SvidVerificationError
from atoll_trust.jose import KeyType, b64url_decode, b64url_encode, jws_sign
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.testing import T0, build_certificate
from atoll_trust.verify import parse_der_chain, verify_jwt_svid, verify_x509_svid

A, B = TrustDomain("a.atoll"), TrustDomain("b.atoll")
DAY, HOUR = dt.timedelta(days=1), dt.timedelta(hours=1)
NOW = T0 + HOUR
CA_A = generate_x509_authority(A, now=T0, ttl=DAY)
CA_B = generate_x509_authority(B, now=T0, ttl=DAY)
JWT_A = generate_jwt_authority(A, now=T0, ttl=DAY)
JWT_B = generate_jwt_authority(B, now=T0, ttl=DAY)
BUNDLES = BundleSet(
    [
        TrustBundle(A, (CA_A.certificate,), (JwtKey(JWT_A.key_id, JWT_A.public_key),), 1),
        TrustBundle(B, (CA_B.certificate,), (JwtKey(JWT_B.key_id, JWT_B.public_key),), 1),
    ]
)
WEB = A.spiffe_id("web")


def test_valid_svids_of_both_domains_verify() -> None:
    for ca, sid in ((CA_A, WEB), (CA_B, B.spiffe_id("api"))):
        svid = mint_x509_svid(ca, sid, now=NOW, ttl=HOUR)
        verified = verify_x509_svid(svid.chain, BUNDLES, now=NOW + dt.timedelta(minutes=1))
        assert verified.spiffe_id == sid
        assert verified.chain[-1] == ca.certificate


def _leaf(**kwargs: object) -> object:
    params: dict[str, object] = {
        "uris": [str(WEB)],
        "not_before": T0,
        "not_after": T0 + 2 * HOUR,
    }
    params.update(kwargs)
    issuer = params.pop("issuer", CA_A)
    return build_certificate(issuer, **params)  # type: ignore[arg-type]


NEGATIVE = {
    # domain A's ID, signed by domain B's CA: a pooled store would accept this
    "signed by another domain's CA": (
        _leaf(issuer=CA_B),
        "does not verify against the bundle of a.atoll",
    ),
    "expired leaf": (_leaf(not_after=T0 + dt.timedelta(minutes=30)), "does not verify"),
    "not yet valid": (_leaf(not_before=NOW + HOUR), "does not verify"),
    "two URI SANs": (_leaf(uris=[str(WEB), "spiffe://a.atoll/db"]), "2 URI SANs"),
    "CA:TRUE leaf": (_leaf(ca=True), "cA=true"),
    "no URI SAN": (_leaf(uris=[]), "no URI SAN"),
    "not a SPIFFE URI": (_leaf(uris=["https://a.atoll/web"]), "not a SPIFFE ID"),
    "root SPIFFE ID": (_leaf(uris=["spiffe://a.atoll"]), "has no path"),
    "no key usage": (_leaf(key_usage=False), "keyUsage"),
    "non-critical key usage": (_leaf(key_usage_critical=False), "keyUsage"),
    "no digitalSignature": (_leaf(digital_signature=False), "digitalSignature"),
    "keyCertSign on leaf": (_leaf(key_cert_sign=True), "keyCertSign"),
    "EKU without clientAuth": (_leaf(eku=[ExtendedKeyUsageOID.SERVER_AUTH]), "extKeyUsage"),
    "empty subject, non-critical SAN": (_leaf(empty_subject=True), "empty subject"),
    "unknown trust domain": (
        _leaf(uris=["spiffe://c.atoll/x"]),
        "no X.509 bundle for trust domain c.atoll",
    ),
    "forged signature": (_leaf(signer_key=CA_B.private_key), "does not verify"),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_x509_negative_cases(case: str) -> None:
    cert, message = NEGATIVE[case]
    with pytest.raises(SvidVerificationError, match=message):
        verify_x509_svid([cert], BUNDLES, now=NOW)  # type: ignore[list-item]


def test_empty_subject_with_critical_san_is_fine() -> None:
    cert = _leaf(empty_subject=True, san_critical=True)
    assert verify_x509_svid([cert], BUNDLES, now=NOW).spiffe_id == WEB  # type: ignore[list-item]


def test_eku_absent_is_allowed() -> None:
    # X509-SVID §4.4: EKU is a SHOULD; when absent, nothing restricts the key's use.
    cert = _leaf(eku=None)
    assert verify_x509_svid([cert], BUNDLES, now=NOW).spiffe_id == WEB  # type: ignore[list-item]


def test_intermediate_chain_and_foreign_intermediate() -> None:
    inter_key = generate_x509_authority(A, now=T0, ttl=DAY)
    inter_cert = build_certificate(
        CA_A,
        uris=["spiffe://a.atoll"],
        not_before=T0,
        not_after=T0 + DAY,
        public_key=inter_key.private_key.public_key(),
        ca=True,
        digital_signature=False,
        key_cert_sign=True,
        eku=None,
    )
    from atoll_trust.ca import X509Authority

    inter = X509Authority(A, inter_cert, inter_key.private_key)
    svid = mint_x509_svid(inter, WEB, now=NOW, ttl=HOUR)
    verified = verify_x509_svid([svid.leaf, inter_cert], BUNDLES, now=NOW)
    assert len(verified.chain) == 3
    with pytest.raises(SvidVerificationError, match="does not verify"):
        verify_x509_svid([svid.leaf], BUNDLES, now=NOW)  # intermediate missing
    bad_inter = build_certificate(
        CA_A,
        uris=["spiffe://b.atoll"],
        not_before=T0,
        not_after=T0 + DAY,
        public_key=inter_key.private_key.public_key(),
        ca=True,
        digital_signature=False,
        key_cert_sign=True,
        eku=None,
    )
    with pytest.raises(SvidVerificationError, match=r"names trust domain 'b\.atoll'"):
        verify_x509_svid([svid.leaf, bad_inter], BUNDLES, now=NOW)


def test_removed_ca_is_no_longer_trusted() -> None:
    svid = mint_x509_svid(CA_A, WEB, now=NOW, ttl=HOUR)
    ca_a2 = generate_x509_authority(A, now=T0, ttl=DAY)
    rotated = BUNDLES.with_bundle(TrustBundle(A, (ca_a2.certificate,), (), 2))
    with pytest.raises(SvidVerificationError):
        verify_x509_svid(svid.chain, rotated, now=NOW)


def test_der_chain_parsing() -> None:
    svid = mint_x509_svid(CA_A, WEB, now=NOW, ttl=HOUR)
    assert (
        parse_der_chain(
            svid.chain_der()
            + CA_A.certificate.public_bytes(
                __import__(
                    "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
                ).Encoding.DER
            )
        )[0]
        == svid.leaf
    )
    for bad in (b"", b"\x30", b"\x31\x00", svid.chain_der()[:-1], b"\x30\x85" + b"\x00" * 8):
        with pytest.raises(SvidVerificationError):
            parse_der_chain(bad)


_GOOD_LEAF_DER = mint_x509_svid(CA_A, WEB, now=NOW, ttl=HOUR).chain_der()


@settings(max_examples=300)
@given(st.integers(0, len(_GOOD_LEAF_DER) - 1), st.binary(min_size=1, max_size=3))
@example(where=363, noise=b"\x0f")  # found by CI: a duplicated extension (DuplicateExtension)
def test_fuzz_corrupted_leaf_only_typed_errors(where: int, noise: bytes) -> None:
    der = _GOOD_LEAF_DER[:where] + noise + _GOOD_LEAF_DER[where + len(noise) :]
    try:
        chain = parse_der_chain(der)
        verified = verify_x509_svid(chain, BUNDLES, now=NOW)
    except SvidVerificationError:
        return
    # only bytes outside the signed part (e.g. a re-encoded signature) may survive
    assert verified.spiffe_id == WEB


def test_a_duplicated_extension_is_a_typed_error() -> None:
    """cryptography raises DuplicateExtension (not a ValueError) when extensions are read."""
    der = mint_x509_svid(CA_A, WEB, now=NOW, ttl=HOUR).chain_der()
    eku, key_usage = b"\x06\x03\x55\x1d\x25", b"\x06\x03\x55\x1d\x0f"
    assert der.count(eku) >= 1 and der.count(key_usage) >= 1
    leaf_der = der.replace(eku, key_usage, 1)  # a second KeyUsage extension
    with pytest.raises(SvidVerificationError, match="malformed"):
        verify_x509_svid(parse_der_chain(leaf_der), BUNDLES, now=NOW)


def test_a_name_attribute_of_the_wrong_type_is_a_typed_error() -> None:
    """cryptography raises TypeError (lazily, on reading the subject) for a BIT STRING
    where a name attribute's string should be."""
    der = mint_x509_svid(CA_A, WEB, now=NOW, ttl=HOUR).chain_der()
    utf8_org = b"\x06\x03\x55\x04\x0a\x0c\x05Atoll"  # O=Atoll, UTF8String
    assert utf8_org in der
    leaf_der = der.replace(utf8_org, b"\x06\x03\x55\x04\x0a\x03\x05Atoll")
    with pytest.raises(SvidVerificationError, match="malformed"):
        verify_x509_svid(parse_der_chain(leaf_der), BUNDLES, now=NOW)


@settings(max_examples=150)
@given(st.binary(max_size=64))
def test_fuzz_der_chain(data: bytes) -> None:
    with contextlib.suppress(SvidVerificationError):
        parse_der_chain(data)


# ---------------------------------------------------------------- JWT-SVID


def _token() -> str:
    return issue_jwt_svid(JWT_A, WEB, audience=["svc"], now=NOW, ttl=dt.timedelta(minutes=5)).token


def _forge(
    header: dict[str, object] | None = None,
    claims: dict[str, object] | None = None,
    key: object = None,
    alg: str = "ES256",
) -> str:
    h = {"alg": alg, "kid": JWT_A.key_id, "typ": "JWT"} if header is None else header
    c: dict[str, object] = {
        "sub": str(WEB),
        "aud": ["svc"],
        "exp": int((NOW + dt.timedelta(minutes=5)).timestamp()),
    }
    if claims:
        c.update(claims)
    c = {k: v for k, v in c.items() if v is not None}
    signing_input = (
        b64url_encode(json.dumps(h).encode()) + "." + b64url_encode(json.dumps(c).encode())
    )
    sig = jws_sign(key or JWT_A.private_key, "ES256", signing_input.encode())  # type: ignore[arg-type]
    return signing_input + "." + b64url_encode(sig)


def test_valid_jwt_svid() -> None:
    verified = verify_jwt_svid(_token(), BUNDLES, audience="svc", now=NOW)
    assert verified.spiffe_id == WEB
    assert verified.key_id == JWT_A.key_id
    assert verified.claims["sub"] == str(WEB)
    rsa = generate_jwt_authority(A, now=T0, ttl=DAY, key_type=KeyType.RSA_2048)
    with_rsa = BUNDLES.with_bundle(
        TrustBundle(A, (CA_A.certificate,), (JwtKey(rsa.key_id, rsa.public_key),), 2)
    )
    token = issue_jwt_svid(rsa, WEB, audience=["svc"], now=NOW, ttl=HOUR).token
    assert verify_jwt_svid(token, with_rsa, audience="svc", now=NOW).spiffe_id == WEB


JWT_NEGATIVE = {
    "wrong audience": (_forge(), "other", NOW, "does not include 'other'"),
    "expired": (_forge(), "svc", NOW + HOUR, "expired"),
    "unknown kid": (
        _forge(header={"alg": "ES256", "kid": "nope"}),
        "svc",
        NOW,
        "kid 'nope' is not in the bundle",
    ),
    # domain B's key, claiming a domain A subject: kid is looked up in A's bundle only
    "foreign domain's key": (
        _forge(header={"alg": "ES256", "kid": JWT_B.key_id}, key=JWT_B.private_key),
        "svc",
        NOW,
        "is not in the bundle of a.atoll",
    ),
    "signed by wrong key": (_forge(key=JWT_B.private_key), "svc", NOW, "signature does not verify"),
    "alg none": (_forge(header={"alg": "none", "kid": JWT_A.key_id}), "svc", NOW, "not allowed"),
    "alg HS256": (_forge(header={"alg": "HS256", "kid": JWT_A.key_id}), "svc", NOW, "not allowed"),
    "extra header": (
        _forge(header={"alg": "ES256", "kid": JWT_A.key_id, "jku": "x"}),
        "svc",
        NOW,
        "not allowed by JWT-SVID",
    ),
    "bad typ": (
        _forge(header={"alg": "ES256", "kid": JWT_A.key_id, "typ": "x"}),
        "svc",
        NOW,
        "typ",
    ),
    "no kid": (_forge(header={"alg": "ES256"}), "svc", NOW, "no kid"),
    "no exp": (_forge(claims={"exp": None}), "svc", NOW, "no 'exp'"),
    "no aud": (_forge(claims={"aud": None}), "svc", NOW, "'aud'"),
    "no sub": (_forge(claims={"sub": None}), "svc", NOW, "no 'sub'"),
    "bad sub": (_forge(claims={"sub": "spiffe://A/x"}), "svc", NOW, "not a SPIFFE ID"),
    "nbf in future": (
        _forge(claims={"nbf": int((NOW + HOUR).timestamp())}),
        "svc",
        NOW,
        "not valid before",
    ),
    "bool exp": (_forge(claims={"exp": True}), "svc", NOW, "must be a number"),
    "two parts": ("a.b", "svc", NOW, "three parts"),
    "empty": ("", "svc", NOW, "empty"),
}


@pytest.mark.parametrize("case", sorted(JWT_NEGATIVE))
def test_jwt_negative_cases(case: str) -> None:
    token, audience, now, message = JWT_NEGATIVE[case]
    with pytest.raises(JwtSvidError, match=message):
        verify_jwt_svid(token, BUNDLES, audience=audience, now=now)


def test_alg_allowlist_is_configurable() -> None:
    with pytest.raises(JwtSvidError, match="not allowed"):
        verify_jwt_svid(_token(), BUNDLES, audience="svc", now=NOW, allowed_algorithms={"RS256"})


def test_single_string_audience_is_accepted() -> None:
    assert verify_jwt_svid(_forge(claims={"aud": "svc"}), BUNDLES, audience="svc", now=NOW)


@settings(max_examples=300)
@given(st.text(alphabet='abcXYZ019-_.=+/{}"', max_size=120))
def test_fuzz_jwt_only_typed_errors(token: str) -> None:
    with contextlib.suppress(JwtSvidError):
        verify_jwt_svid(token, BUNDLES, audience="svc", now=NOW)


@settings(max_examples=200)
@given(st.integers(0, 300), st.text(alphabet="AQw-_.", min_size=1, max_size=4))
def test_fuzz_tampered_token_never_verifies(where: int, noise: str) -> None:
    token = _token()
    where %= len(token)
    tampered = token[:where] + noise + token[where + len(noise) :]
    if tampered == token:
        return
    try:
        verified = verify_jwt_svid(tampered, BUNDLES, audience="svc", now=NOW)
    except JwtSvidError:
        return
    # base64url can decode two strings to the same bytes only via unused trailing bits
    _head, _body, sig = tampered.split(".")
    assert b64url_decode(sig) == b64url_decode(token.split(".")[2])
    assert verified.spiffe_id == WEB
