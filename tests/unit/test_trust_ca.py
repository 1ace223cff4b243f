"""CA issuance: X.509-SVID and JWT-SVID conformance, refusal paths, sealed state."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from atoll.errors import FatalError, UserError
from atoll_trust.ca import (
    X509Authority,
    generate_jwt_authority,
    generate_x509_authority,
    issue_jwt_svid,
    issue_x509_svid,
    mint_x509_svid,
)
from atoll_trust.castate import (
    dump_ca_state,
    load_ca_state,
    read_ca_state_file,
    write_ca_state_file,
)
from atoll_trust.errors import CaStateCorruptError, IssuanceError, KeyDecryptionError
from atoll_trust.jose import KeyType, b64url_decode
from atoll_trust.kek import AesGcmKeyEncryptor
from atoll_trust.rotation import RotationPolicy, bootstrap_ca_state
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.testing import T0

TD = TrustDomain("eu.atoll")
HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def ca() -> X509Authority:
    return generate_x509_authority(TD, now=T0, ttl=dt.timedelta(days=1))


def _ext(cert: x509.Certificate, cls: type[Any]) -> x509.Extension[Any]:
    return cert.extensions.get_extension_for_class(cls)


def test_signing_certificate_profile(ca: X509Authority) -> None:
    cert = ca.certificate
    pub = cert.public_key()
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    uris = _ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == ["spiffe://eu.atoll"]
    assert cert.issuer == cert.subject
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert pub.curve.name == "secp256r1"
    assert cert.not_valid_before_utc == T0
    assert cert.not_valid_after_utc == T0 + dt.timedelta(days=1)
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.NameConstraints)


def test_leaf_profile(ca: X509Authority) -> None:
    sid = TD.spiffe_id("ns", "web")
    svid = mint_x509_svid(ca, sid, now=T0 + HOUR, ttl=HOUR, dns_names=["web.local"])
    leaf = svid.leaf
    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(sid)]
    assert san.get_values_for_type(x509.DNSName) == ["web.local"]
    bc = _ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = _ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    eku = list(_ext(leaf, x509.ExtendedKeyUsage).value)
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert svid.issuer_key_id == ca.key_id
    assert leaf.not_valid_before_utc == T0 + HOUR - dt.timedelta(seconds=10)
    assert leaf.not_valid_after_utc == T0 + 2 * HOUR
    assert svid.private_key is not None
    assert svid.private_key_der()[:1] == b"\x30"


def test_svid_lifetime_is_clamped_to_the_ca(ca: X509Authority) -> None:
    late = ca.not_after - dt.timedelta(minutes=5)
    svid = mint_x509_svid(ca, TD.spiffe_id("w"), now=late, ttl=HOUR)
    assert svid.not_after == ca.not_after
    early = mint_x509_svid(ca, TD.spiffe_id("w"), now=T0, ttl=HOUR)
    assert early.not_before == ca.not_before  # backdate never precedes the CA


@pytest.mark.parametrize(
    ("spiffe_id", "ttl", "now", "message"),
    [
        ("spiffe://other.atoll/w", HOUR, T0, "not in trust domain"),
        ("spiffe://eu.atoll", HOUR, T0, "no path"),
        ("spiffe://eu.atoll/w", dt.timedelta(0), T0, "must be positive"),
        ("spiffe://eu.atoll/w", HOUR, T0 - HOUR, "not valid at"),
        ("spiffe://eu.atoll/w", HOUR, T0 + dt.timedelta(days=2), "not valid at"),
    ],
)
def test_issuance_refusals(
    ca: X509Authority, spiffe_id: str, ttl: dt.timedelta, now: dt.datetime, message: str
) -> None:
    from atoll_trust.spiffe_id import parse_spiffe_id

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(IssuanceError, match=message) as info:
        issue_x509_svid(ca, parse_spiffe_id(spiffe_id), public_key=key, now=now, ttl=ttl)
    assert isinstance(info.value, UserError)


def test_other_key_types() -> None:
    ca384 = generate_x509_authority(TD, now=T0, ttl=HOUR * 24, key_type=KeyType.EC_P384)
    svid = mint_x509_svid(ca384, TD.spiffe_id("w"), now=T0, ttl=HOUR, key_type=KeyType.RSA_2048)
    assert svid.leaf.signature_hash_algorithm is not None
    assert svid.leaf.signature_hash_algorithm.name == "sha384"
    jwt_rsa = generate_jwt_authority(TD, now=T0, ttl=HOUR * 24, key_type=KeyType.RSA_2048)
    assert jwt_rsa.algorithm == "RS256"


def test_jwt_svid_shape() -> None:
    authority = generate_jwt_authority(TD, now=T0, ttl=dt.timedelta(days=1))
    svid = issue_jwt_svid(
        authority,
        TD.spiffe_id("w"),
        audience=["a", "b"],
        now=T0 + HOUR,
        ttl=dt.timedelta(minutes=5),
    )
    head, body, sig = svid.token.split(".")
    header = json.loads(b64url_decode(head))
    claims = json.loads(b64url_decode(body))
    assert header == {"alg": "ES256", "kid": authority.key_id, "typ": "JWT"}
    assert claims["sub"] == "spiffe://eu.atoll/w"
    assert claims["aud"] == ["a", "b"]
    assert claims["exp"] == int((T0 + HOUR + dt.timedelta(minutes=5)).timestamp())
    assert len(b64url_decode(sig)) == 64  # r || s, not DER
    assert svid.expiry == T0 + HOUR + dt.timedelta(minutes=5)
    with pytest.raises(IssuanceError, match="audience"):
        issue_jwt_svid(authority, TD.spiffe_id("w"), audience=[], now=T0, ttl=HOUR)
    with pytest.raises(IssuanceError, match="audience"):
        issue_jwt_svid(authority, TD.spiffe_id("w"), audience=[""], now=T0, ttl=HOUR)


# ---------------------------------------------------------------- sealed CA state


def _kek(byte: int) -> AesGcmKeyEncryptor:
    return AesGcmKeyEncryptor(bytes([byte]) * 32)


def test_ca_state_round_trips_sealed(tmp_path: Path) -> None:
    state = bootstrap_ca_state(TD, now=T0, policy=RotationPolicy())
    kek = _kek(1)
    blob = dump_ca_state(state, kek)
    doc = json.loads(blob)
    assert doc["trust_domain"] == "eu.atoll"
    assert "PRIVATE KEY" not in blob.decode()
    loaded = load_ca_state(blob, kek)
    assert loaded.sequence == state.sequence
    assert loaded.active_x509.certificate == state.active_x509.certificate
    assert loaded.active_jwt.key_id == state.active_jwt.key_id
    path = tmp_path / "ca.json"
    write_ca_state_file(path, state, kek)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_ca_state_file(path, kek).bundle() == state.bundle()


def test_ca_state_with_wrong_kek_or_tampering_fails_loudly() -> None:
    state = bootstrap_ca_state(TD, now=T0, policy=RotationPolicy())
    blob = dump_ca_state(state, _kek(1))
    with pytest.raises(KeyDecryptionError, match="different KEK") as info:
        load_ca_state(blob, _kek(2))
    assert isinstance(info.value, FatalError)
    doc = json.loads(blob)
    doc["trust_domain"] = "other.atoll"  # move the sealed keys to another domain
    with pytest.raises(KeyDecryptionError, match="another trust domain"):
        load_ca_state(json.dumps(doc).encode(), _kek(1))
    with pytest.raises(CaStateCorruptError):
        load_ca_state(b"{not json", _kek(1))
    doc = json.loads(blob)
    del doc["x509"]
    with pytest.raises(CaStateCorruptError):
        load_ca_state(json.dumps(doc).encode(), _kek(1))
    doc = json.loads(blob)
    other = bootstrap_ca_state(TD, now=T0, policy=RotationPolicy())
    doc["x509"][0]["certificate"] = json.loads(dump_ca_state(other, _kek(1)))["x509"][0][
        "certificate"
    ]
    with pytest.raises(CaStateCorruptError, match="does not match"):
        load_ca_state(json.dumps(doc).encode(), _kek(1))
