"""SPIFFE bundle JSON and the per-domain BundleSet: strict parsing, safe updates, fuzzing."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atoll_trust.bundle import (
    BundleSet,
    JwtKey,
    TrustBundle,
    parse_bundle,
    render_bundle,
    render_jwks,
)
from atoll_trust.ca import X509Authority, generate_jwt_authority, generate_x509_authority
from atoll_trust.errors import BundleRejectedError, BundleRejectReason, InvalidBundleError
from atoll_trust.jose import KeyType
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.testing import T0

A, B = TrustDomain("a.atoll"), TrustDomain("b.atoll")
DAY = dt.timedelta(days=1)
CA_A = generate_x509_authority(A, now=T0, ttl=DAY)
CA_A2 = generate_x509_authority(A, now=T0, ttl=DAY)
CA_B = generate_x509_authority(B, now=T0, ttl=DAY)
JWT_A = generate_jwt_authority(A, now=T0, ttl=DAY)
JWT_RSA = generate_jwt_authority(A, now=T0, ttl=DAY, key_type=KeyType.RSA_2048)


def _bundle(seq: int | None = 1, *cas: X509Authority, jwt: bool = True) -> TrustBundle:
    return TrustBundle(
        trust_domain=A,
        x509_authorities=tuple(c.certificate for c in (cas or (CA_A,))),
        jwt_authorities=(JwtKey(JWT_A.key_id, JWT_A.public_key),) if jwt else (),
        sequence=seq,
        refresh_hint=300,
    )


def _doc(bundle: TrustBundle) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(render_bundle(bundle))
    return doc


def test_render_parse_round_trip_with_ec_and_rsa_keys() -> None:
    bundle = TrustBundle(
        A,
        (CA_A.certificate, CA_A2.certificate),
        (JwtKey(JWT_A.key_id, JWT_A.public_key), JwtKey(JWT_RSA.key_id, JWT_RSA.public_key)),
        sequence=7,
        refresh_hint=60,
    )
    doc = _doc(bundle)
    assert doc["spiffe_sequence"] == 7 and doc["spiffe_refresh_hint"] == 60
    x509_entries = [k for k in doc["keys"] if k["use"] == "x509-svid"]
    assert all(len(k["x5c"]) == 1 and "kid" not in k and k["kty"] == "EC" for k in x509_entries)
    jwt_entries = [k for k in doc["keys"] if k["use"] == "jwt-svid"]
    assert {k["kty"] for k in jwt_entries} == {"EC", "RSA"}
    assert all(k["kid"] for k in jwt_entries)
    parsed = parse_bundle(render_bundle(bundle), trust_domain=A)
    assert parsed == bundle


def test_optional_members_and_unknown_use_are_ignored() -> None:
    doc = _doc(_bundle())
    del doc["spiffe_sequence"], doc["spiffe_refresh_hint"]
    doc["keys"].append({"use": "something-new", "kty": "EC"})
    parsed = parse_bundle(json.dumps(doc), trust_domain=A)
    assert parsed.sequence is None and parsed.refresh_hint is None
    assert parsed.ignored_entries == 1
    assert len(parsed.x509_authorities) == 1 and len(parsed.jwt_authorities) == 1


def _mutate(fn: Any) -> bytes:
    doc = _doc(_bundle())
    fn(doc)
    return json.dumps(doc).encode()


def _x509(doc: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(k for k in doc["keys"] if k["use"] == "x509-svid")
    return entry


def _jwt(doc: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(k for k in doc["keys"] if k["use"] == "jwt-svid")
    return entry


MALFORMED = {
    "not json": b"{",
    "not an object": b"[]",
    "keys missing": b'{"spiffe_sequence": 1}',
    "keys not a list": b'{"keys": {}}',
    "bool sequence": b'{"keys": [], "spiffe_sequence": true}',
    "negative sequence": b'{"keys": [], "spiffe_sequence": -1}',
    "float hint": b'{"keys": [], "spiffe_refresh_hint": 1.5}',
    "huge sequence": b'{"keys": [], "spiffe_sequence": 18446744073709551616}',
    "duplicate member": b'{"keys": [], "keys": []}',
    "entry not object": b'{"keys": [1]}',
    "use missing": _mutate(lambda d: _x509(d).pop("use")),
    "kty missing": _mutate(lambda d: _x509(d).pop("kty")),
    "x509 with kid": _mutate(lambda d: _x509(d).update(kid="k")),
    "x509 two certs": _mutate(lambda d: _x509(d)["x5c"].append(_x509(d)["x5c"][0])),
    "x509 no x5c": _mutate(lambda d: _x509(d).pop("x5c")),
    "x509 bad base64": _mutate(lambda d: _x509(d).update(x5c=["%%%"])),
    "x509 not a cert": _mutate(lambda d: _x509(d).update(x5c=[base64.b64encode(b"xx").decode()])),
    "x509 key mismatch": _mutate(lambda d: _x509(d).update(x=_jwt(d)["x"])),
    "jwt no kid": _mutate(lambda d: _jwt(d).pop("kid")),
    "jwt empty kid": _mutate(lambda d: _jwt(d).update(kid="")),
    "jwt bad curve": _mutate(lambda d: _jwt(d).update(crv="P-192")),
    "jwt short x": _mutate(lambda d: _jwt(d).update(x="AAAA")),
    "jwt bad b64": _mutate(lambda d: _jwt(d).update(x="!!")),
    "jwt private part": _mutate(lambda d: _jwt(d).update(d="AAAA")),
    "jwt unknown kty": _mutate(lambda d: _jwt(d).update(kty="oct")),
    "jwt point off curve": _mutate(lambda d: _jwt(d).update(y=_jwt(d)["x"])),
    "duplicate x509 key": _mutate(lambda d: d["keys"].append(dict(_x509(d)))),
    "duplicate kid": _mutate(lambda d: d["keys"].append(dict(_jwt(d)))),
    "too big": b'{"keys": [], "pad": "' + b"x" * (1 << 20) + b'"}',
    "bad utf-8": b'{"keys": [], "x": "\xff"}',
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_documents_raise_invalid_bundle(name: str) -> None:
    with pytest.raises(InvalidBundleError):
        parse_bundle(MALFORMED[name], trust_domain=A)


def test_rsa_key_too_small_is_rejected() -> None:
    doc = _doc(_bundle())
    entry = _jwt(doc)
    entry.clear()
    entry.update(use="jwt-svid", kid="r", kty="RSA", n="AQAB", e="AQAB")
    with pytest.raises(InvalidBundleError, match="2048"):
        parse_bundle(json.dumps(doc), trust_domain=A)


# ---------------------------------------------------------------- BundleSet


def test_set_keeps_domains_apart_and_orders_by_sequence() -> None:
    s0 = BundleSet()
    s1 = s0.with_bundle(_bundle(1))
    b_bundle = TrustBundle(B, (CA_B.certificate,), sequence=1)
    s2 = s1.with_bundle(b_bundle)
    assert s2.get(A) == _bundle(1) and s2.get(B) == b_bundle
    assert s2.trust_domains == (A, B)
    assert len(s0) == 0 and len(s1) == 1  # earlier sets are untouched
    s3 = s2.with_bundle(_bundle(2, CA_A, CA_A2))
    assert s3.get(A) is not None and len(s3.get(A).x509_authorities) == 2  # type: ignore[union-attr]
    assert s3.get(B) == b_bundle
    assert s3.with_bundle(_bundle(2, CA_A, CA_A2)) is s3  # identical: no change
    assert s3.without(B).trust_domains == (A,)


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (_bundle(5), _bundle(4, CA_A2), BundleRejectReason.LOWER_SEQUENCE),
        (_bundle(5), _bundle(None, CA_A2), BundleRejectReason.LOWER_SEQUENCE),
        (_bundle(5), _bundle(5, CA_A2), BundleRejectReason.CONFLICTING_SAME_SEQUENCE),
        (_bundle(5), TrustBundle(A, sequence=6), BundleRejectReason.NO_KEYS),
    ],
)
def test_rejected_updates_keep_the_old_bundle(
    old: TrustBundle, new: TrustBundle, reason: BundleRejectReason
) -> None:
    stored = BundleSet([old])
    with pytest.raises(BundleRejectedError) as info:
        stored.with_bundle(new)
    assert info.value.reason is reason
    assert info.value.trust_domain == "a.atoll"
    assert stored.get(A) == old


def test_document_level_rejections_keep_the_old_bundle() -> None:
    stored = BundleSet([_bundle(3)])
    for bad in (MALFORMED["duplicate kid"], MALFORMED["x509 two certs"], render_bundle(_bundle(2))):
        with pytest.raises((InvalidBundleError, BundleRejectedError)):
            stored.with_document(bad, trust_domain=A)
        assert stored.get(A) == _bundle(3)
    updated = stored.with_document(render_bundle(_bundle(4, CA_A, CA_A2)), trust_domain=A)
    assert updated.get(A) is not None and updated.get(A).sequence == 4  # type: ignore[union-attr]


def test_unsequenced_bundles_replace_each_other() -> None:
    stored = BundleSet([_bundle(None)])
    assert stored.with_bundle(_bundle(None, CA_A2)).get(A) == _bundle(None, CA_A2)


def test_jwks_rendering_has_only_jwt_keys() -> None:
    jwks = json.loads(render_jwks(_bundle()))
    assert [k["kid"] for k in jwks["keys"]] == [JWT_A.key_id]


# ---------------------------------------------------------------- fuzzing

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["keys", "use", "kty", "kid", "x5c", "crv", "x", "y", "n", "e", "spiffe_sequence"]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(_json)
def test_fuzz_arbitrary_json_only_typed_errors(doc: Any) -> None:
    with contextlib.suppress(InvalidBundleError):
        parse_bundle(json.dumps(doc), trust_domain=A)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_only_typed_errors(data: bytes) -> None:
    with contextlib.suppress(InvalidBundleError):
        parse_bundle(data, trust_domain=A)


_VALID_DOC = render_bundle(_bundle(3, CA_A, CA_A2))


@settings(max_examples=300)
@given(st.integers(0, len(_VALID_DOC) - 1), st.binary(min_size=1, max_size=6))
def test_fuzz_corrupted_valid_document_never_corrupts_the_set(where: int, noise: bytes) -> None:
    stored = BundleSet([_bundle(3, CA_A, CA_A2)])
    data = _VALID_DOC[:where] + noise + _VALID_DOC[where + len(noise) :]
    try:
        stored = stored.with_document(data, trust_domain=A)
    except (InvalidBundleError, BundleRejectedError):
        assert stored.get(A) == _bundle(3, CA_A, CA_A2)
        return
    bundle = stored.get(A)
    assert bundle is not None and not bundle.is_empty
