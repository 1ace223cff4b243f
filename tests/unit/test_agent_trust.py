"""The agent's trust decisions: startup, enrollment answers, received bundles, its cluster CA."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from atoll.errors import FatalError
from atoll.model import TrustDomain, encode
from atoll.sync import Item
from atoll.sync.v1 import enrollment_pb2 as pb
from atoll.trusthub.domains import cluster_resource, federation_resource
from atoll.trusthub.naming import agent_id, cluster_domain, parse_federation_domain
from atoll_agent.trust.authority import ClusterAuthority
from atoll_agent.trust.bundles import fold_trust_domains, validate_trust_item
from atoll_agent.trust.identity import (
    IdentityState,
    accept_identity,
    decide_startup,
    dump_identity,
    load_identity,
)
from atoll_trust.bundle import BundleSet, render_bundle
from atoll_trust.ca import issue_x509_svid, mint_x509_svid
from atoll_trust.clock import FakeClock
from atoll_trust.errors import (
    BundleRejectedError,
    InvalidBundleError,
    KeyDecryptionError,
    SvidVerificationError,
)
from atoll_trust.jose import generate_private_key
from atoll_trust.kek import AesGcmKeyEncryptor
from atoll_trust.rotation import (
    GeneratingAuthorityFactory,
    RotationPolicy,
    bootstrap_ca_state,
    rotate,
)
from atoll_trust.testing import T0

FED = parse_federation_domain("atoll.lab")
POLICY = RotationPolicy(min_publish_lead=dt.timedelta(0))
CA_FED = bootstrap_ca_state(FED, now=T0, policy=POLICY)
H = dt.timedelta(hours=1)


def agent_svid(cluster: str = "a") -> IdentityState:
    svid = mint_x509_svid(CA_FED.active_x509, agent_id(FED, cluster), now=T0, ttl=H)
    return IdentityState(svid, CA_FED.bundle())


# ---------------------------------------------------------------- startup


def test_startup_uses_a_valid_svid_and_ignores_the_token() -> None:
    state = agent_svid()
    assert decide_startup(state, has_token=True, now=T0) == "use"
    assert decide_startup(None, has_token=True, now=T0) == "enroll"
    assert decide_startup(state, has_token=True, now=T0 + 2 * H) == "enroll"
    with pytest.raises(FatalError, match="expired"):
        decide_startup(state, has_token=False, now=T0 + 2 * H)
    with pytest.raises(FatalError, match="--join-token"):
        decide_startup(None, has_token=False, now=T0)


def test_identity_file_round_trip_and_damage(tmp_path: Path) -> None:
    state = agent_svid()
    path = tmp_path / "identity.json"
    path.write_bytes(dump_identity(state))
    loaded = load_identity(path, federation=FED)
    assert loaded is not None and loaded.svid.chain == state.svid.chain
    assert load_identity(tmp_path / "none.json", federation=FED) is None
    with pytest.raises(FatalError, match="identity"):
        load_identity(path, federation=parse_federation_domain("other.lab"))
    path.write_bytes(path.read_bytes().replace(b"BEGIN CERTIFICATE", b"BEGIN GARBAGE"))
    with pytest.raises(FatalError, match="enroll again"):
        load_identity(path, federation=FED)


# ---------------------------------------------------------------- enrollment answers


def answer(
    svid_der: bytes, *, domain: str = "atoll.lab", bundle: bytes | None = None
) -> pb.Identity:
    return pb.Identity(
        spiffe_id="x",
        x509_svid=svid_der,
        federation_domain=domain,
        federation_bundle=bundle if bundle is not None else render_bundle(CA_FED.bundle()),
    )


def test_enrollment_answer_checks() -> None:
    key = generate_private_key()
    good = issue_x509_svid(
        CA_FED.active_x509, agent_id(FED, "a"), public_key=key.public_key(), now=T0, ttl=H
    )
    kw = {"key": key, "cluster": "a", "federation": FED, "trusted": CA_FED.bundle(), "now": T0}
    state = accept_identity(answer(good.chain_der()), **kw)  # type: ignore[arg-type]
    assert state.svid.spiffe_id == agent_id(FED, "a")
    # for another cluster, another key, another federation, another CA: refused
    other_id = issue_x509_svid(
        CA_FED.active_x509, agent_id(FED, "b"), public_key=key.public_key(), now=T0, ttl=H
    )
    other_key = issue_x509_svid(
        CA_FED.active_x509,
        agent_id(FED, "a"),
        public_key=generate_private_key().public_key(),
        now=T0,
        ttl=H,
    )
    rogue_ca = bootstrap_ca_state(FED, now=T0, policy=POLICY)
    rogue = issue_x509_svid(
        rogue_ca.active_x509, agent_id(FED, "a"), public_key=key.public_key(), now=T0, ttl=H
    )
    for resp, why in (
        (answer(other_id.chain_der()), "expected"),
        (answer(other_key.chain_der()), "key"),
        (answer(good.chain_der(), domain="other.lab"), "federation"),
        # the rogue CA's bundle in the answer conflicts with the pinned one: kept out
        (answer(rogue.chain_der(), bundle=render_bundle(rogue_ca.bundle())), "verify"),
    ):
        with pytest.raises(SvidVerificationError, match=why):
            accept_identity(resp, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- received bundles


def item(res: TrustDomain) -> Item:
    return Item(name="/".join(res.path()), version="1", body=encode(res))


def test_fold_sorts_received_domains() -> None:
    ca_a = bootstrap_ca_state(cluster_domain(FED, "a"), now=T0, policy=POLICY)
    ca_b = bootstrap_ca_state(cluster_domain(FED, "b"), now=T0, policy=POLICY)
    own = cluster_resource(ca_a, federation=FED, cluster="a", policy=POLICY)
    own = own.model_copy(update={"spec": own.spec.model_copy(update={"rotate_generation": 4})})
    fed = federation_resource(CA_FED, stored=None, policy=POLICY, now=T0)
    assert fed is not None
    b = cluster_resource(ca_b, federation=FED, cluster="b", policy=POLICY)
    items = {i.name: i for i in (item(own), item(fed), item(b))}
    got = fold_trust_domains(items, federation=FED, cluster="a", held=BundleSet())
    assert got.rotate_generation == 4
    assert got.federation_bundle == CA_FED.bundle(refresh_hint=POLICY.refresh_hint)
    assert got.federated.trust_domains == (cluster_domain(FED, "b"),)  # never its own
    # a lower sequence than held is refused (the delta is NACKed)
    newer_b, _ = rotate(
        ca_b, now=T0, policy=POLICY, factory=GeneratingAuthorityFactory(), force=True
    )
    held = BundleSet([newer_b.bundle(refresh_hint=POLICY.refresh_hint)])
    with pytest.raises(BundleRejectedError):
        fold_trust_domains(items, federation=FED, cluster="a", held=held)
    broken = b.model_copy(update={"spec": b.spec.model_copy(update={"bundle": "{"})})
    with pytest.raises(InvalidBundleError):  # an AtollError: the sync client NACKs it
        validate_trust_item("TrustDomain", item(broken))


# ---------------------------------------------------------------- the cluster CA


def authority(
    tmp_path: Path, kek: bytes, clock: FakeClock, seen: list[TrustDomain]
) -> ClusterAuthority:
    return ClusterAuthority(
        cluster="a",
        federation=FED,
        state_dir=tmp_path,
        socket_dir=tmp_path / "sock",
        encryptor=AesGcmKeyEncryptor(kek),
        policy=POLICY,
        workloads={"web": "demo/web"},
        federates_with=(),
        clock=clock,
        on_change=seen.append,
    )


def test_cluster_ca_is_sealed_kept_and_rotated_once_per_request(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    seen: list[TrustDomain] = []
    ca = authority(tmp_path, b"k" * 32, clock, seen)
    assert ca.state.sequence == 1
    assert oct((tmp_path / "cluster-ca.json").stat().st_mode & 0o777) == "0o600"
    svid = ca.hub.current.svids_for("web")[0]
    assert str(svid.spiffe_id) == "spiffe://a.atoll.lab/demo/web"
    # a restart opens the same CA; another KEK refuses to start (never a fresh CA)
    reopened = authority(tmp_path, b"k" * 32, clock, []).state.active_x509
    assert reopened.certificate == ca.state.active_x509.certificate
    with pytest.raises(KeyDecryptionError):
        authority(tmp_path, b"z" * 32, clock, [])
    # a forced rotation request: prepare (sequence 2), reported with the generation
    ca.request_rotation(1)
    ca.step()
    assert ca.state.sequence == 2 and seen[-1].status.rotated_generation == 1
    clock.advance(dt.timedelta(seconds=1))
    ca.step()  # the prepared CA activates (publish lead 0): SVIDs re-issued by it
    new_svid = ca.hub.current.svids_for("web")[0]
    assert new_svid.issuer_key_id == ca.state.active_x509.key_id != svid.issuer_key_id
    # the same request again (e.g. after a restart) does not rotate twice
    again = authority(tmp_path, b"k" * 32, clock, [])
    again.request_rotation(1)
    again.step()
    assert again.state.sequence == ca.state.sequence
