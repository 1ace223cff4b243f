"""The trust hub's pure decisions: naming, admission, visibility, tokens, TrustDomain merges."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atoll.errors import InvalidError
from atoll.model import BundleEndpointSpec, TrustDomain, TrustDomainSpec
from atoll.sync import NodeInfo, PermissionDeniedError
from atoll.trusthub.authz import check_admission, expected_identity, may_receive
from atoll.trusthub.domains import (
    cluster_resource,
    federation_resource,
    foreign_resource,
    merge_cluster_report,
    peer_bundles,
)
from atoll.trusthub.enroll import agent_cluster, public_key_from_csr
from atoll.trusthub.naming import (
    cluster_domain,
    cluster_of_domain,
    component_id,
    control_plane_server_name,
    parse_federation_domain,
)
from atoll.trusthub.servertls import mint_server_svid, plan_server_svid
from atoll.trusthub.tokens import (
    JoinTokenInvalidError,
    parse_token,
    render_token,
    token_key,
)
from atoll_trust.bundle import render_bundle
from atoll_trust.errors import BundleRejectedError, InvalidBundleError
from atoll_trust.rotation import (
    CaState,
    GeneratingAuthorityFactory,
    RotationPolicy,
    bootstrap_ca_state,
    rotate,
)
from atoll_trust.spiffe_id import SpiffeId
from atoll_trust.spiffe_id import TrustDomain as Domain
from atoll_trust.testing import T0

FED = parse_federation_domain("atoll.lab")
POLICY = RotationPolicy(min_publish_lead=dt.timedelta(0))
CA_A = bootstrap_ca_state(cluster_domain(FED, "a"), now=T0, policy=POLICY)
CA_B = bootstrap_ca_state(cluster_domain(FED, "b"), now=T0, policy=POLICY)
CA_FED = bootstrap_ca_state(FED, now=T0, policy=POLICY)


def node(role: str, cluster: str, id_: str | None = None) -> NodeInfo:
    return NodeInfo(id=id_ or f"{role}/{cluster}", role=role, cluster=cluster)


def rotated(state: CaState) -> CaState:
    new, actions = rotate(
        state,
        now=T0 + dt.timedelta(minutes=1),
        policy=POLICY,
        factory=GeneratingAuthorityFactory(),
        force=True,
    )
    assert actions
    return new


# ---------------------------------------------------------------- naming


def test_domains_and_ids() -> None:
    assert cluster_domain(FED, "eu-west-1") == Domain("eu-west-1.atoll.lab")
    assert cluster_of_domain(FED, Domain("eu-west-1.atoll.lab")) == "eu-west-1"
    assert cluster_of_domain(FED, Domain("x.y.atoll.lab")) is None
    assert cluster_of_domain(FED, Domain("atoll.lab")) is None
    assert cluster_of_domain(FED, Domain("evilatoll.lab")) is None
    assert str(component_id(FED, "a", "dns")) == "spiffe://a.atoll.lab/atoll/dns"
    assert control_plane_server_name(FED) == "control-plane.atoll.lab"


@pytest.mark.parametrize("bad", ["", "Atoll.lab", "a_b.lab", "a..b", "spiffe://x/y", "x" * 201])
def test_federation_domain_must_be_a_dns_name(bad: str) -> None:
    with pytest.raises(InvalidError):
        parse_federation_domain(bad)


# ---------------------------------------------------------------- admission and visibility


def test_each_role_gets_exactly_its_identity() -> None:
    assert str(expected_identity(node("agent", "a"), FED)) == "spiffe://atoll.lab/cluster/a"
    assert str(expected_identity(node("dns", "a"), FED)) == "spiffe://a.atoll.lab/atoll/dns"
    assert str(expected_identity(node("gateway", "a"), FED)) == "spiffe://a.atoll.lab/atoll/gateway"
    check_admission(node("agent", "a"), FED.spiffe_id("cluster", "a"), FED)
    check_admission(node("dns", "a"), component_id(FED, "a", "dns"), FED)


@pytest.mark.parametrize(
    ("who", "peer"),
    [
        (node("agent", "b"), FED.spiffe_id("cluster", "a")),  # another cluster's agent
        (node("agent", "a"), component_id(FED, "a", "dns")),  # a component as the agent
        (node("dns", "b"), component_id(FED, "a", "dns")),  # another cluster's DNS server
        (node("dns", "a"), FED.spiffe_id("cluster", "a")),  # the agent as its DNS server
        (node("gateway", "a"), component_id(FED, "a", "dns")),  # role mismatch
        (node("agent", "a", "agent/other"), FED.spiffe_id("cluster", "a")),  # node id games
        (node("agent", "a"), Domain("a.evil").spiffe_id("cluster", "a")),  # foreign domain
        (node("region", "", "region/eu"), FED.spiffe_id("region", "eu")),  # no scheme yet
    ],
)
def test_admission_refusals(who: NodeInfo, peer: SpiffeId) -> None:
    with pytest.raises(PermissionDeniedError):
        check_admission(who, peer, FED)


def spec(
    role: str = "cluster", td: str = "b.atoll.lab", fw: list[str] | None = None
) -> TrustDomainSpec:
    return TrustDomainSpec(
        trust_domain=td,
        role=role,
        cluster="b" if role == "cluster" else None,
        bundle="{}",
        federates_with=fw or [],
    )


def test_bundles_go_only_where_they_federate() -> None:
    a = Domain("a.atoll.lab")
    assert may_receive(a, spec())
    assert may_receive(a, spec(fw=["a.atoll.lab"]))
    assert not may_receive(a, spec(fw=["c.atoll.lab"]))
    assert may_receive(Domain("b.atoll.lab"), spec(fw=["c.atoll.lab"]))  # its own
    assert may_receive(a, spec(role="federation", td="atoll.lab", fw=["c.atoll.lab"]))
    assert not may_receive(a, spec().model_copy(update={"bundle": ""}))


# ---------------------------------------------------------------- join tokens


def test_token_round_trip_and_hash() -> None:
    exp = T0 + dt.timedelta(hours=1)
    text = render_token("eu-west-1", exp, b"\x01" * 32)
    parsed = parse_token(text)
    assert parsed.cluster == "eu-west-1" and parsed.expires_at == exp
    assert token_key(text).startswith("/atoll/trust/join-tokens/")
    assert text.rsplit(".", 1)[1] not in token_key(text)
    assert token_key(text) != token_key(render_token("eu-west-1", exp, b"\x02" * 32))


@given(st.text(max_size=300))
def test_token_parser_only_raises_its_typed_error(text: str) -> None:
    try:
        parsed = parse_token(text)
    except JoinTokenInvalidError:
        return
    assert render_token(parsed.cluster, parsed.expires_at, b"\0" * 32).count(".") == 3


# ---------------------------------------------------------------- TrustDomain merges


def report(ca: CaState, cluster: str = "a") -> TrustDomain:
    return cluster_resource(ca, federation=FED, cluster=cluster, policy=POLICY)


def test_cluster_report_is_stored_then_only_moves_forward() -> None:
    first = merge_cluster_report(None, report(CA_A), cluster="a", federation=FED, now=T0)
    assert first is not None and first.spec.sequence == 1 and first.status.updated_at == T0
    assert merge_cluster_report(first, report(CA_A), cluster="a", federation=FED, now=T0) is None
    newer_ca = rotated(CA_A)
    newer = merge_cluster_report(first, report(newer_ca), cluster="a", federation=FED, now=T0)
    assert newer is not None and newer.spec.sequence == 2
    with pytest.raises(BundleRejectedError, match="lower"):
        merge_cluster_report(newer, report(CA_A), cluster="a", federation=FED, now=T0)
    # a different CA under the same sequence (an agent that lost its state) is refused
    imposter = bootstrap_ca_state(cluster_domain(FED, "a"), now=T0, policy=POLICY)
    with pytest.raises(BundleRejectedError, match="different content"):
        merge_cluster_report(first, report(imposter), cluster="a", federation=FED, now=T0)


def test_operator_rotation_request_survives_agent_reports() -> None:
    stored = merge_cluster_report(None, report(CA_A), cluster="a", federation=FED, now=T0)
    assert stored is not None
    asked = stored.model_copy(
        update={"spec": stored.spec.model_copy(update={"rotate_generation": 3})}
    )
    merged = merge_cluster_report(asked, report(rotated(CA_A)), cluster="a", federation=FED, now=T0)
    assert merged is not None and merged.spec.rotate_generation == 3


def test_agent_may_report_only_its_own_domain() -> None:
    with pytest.raises(PermissionDeniedError):
        merge_cluster_report(None, report(CA_B, "b"), cluster="a", federation=FED, now=T0)
    # b's name on a's bundle: the document does not parse as b's? It parses (bundles carry no
    # name) - the name is what decides, and b's name is refused for agent a
    forged = report(CA_B, "b").model_copy(
        update={
            "spec": report(CA_B, "b").spec.model_copy(update={"bundle": report(CA_A).spec.bundle})
        }
    )
    with pytest.raises(PermissionDeniedError):
        merge_cluster_report(None, forged, cluster="a", federation=FED, now=T0)
    inconsistent = report(CA_A).model_copy(
        update={"spec": report(CA_A).spec.model_copy(update={"sequence": 7})}
    )
    with pytest.raises(InvalidBundleError, match="sequence"):
        merge_cluster_report(None, inconsistent, cluster="a", federation=FED, now=T0)
    garbage = report(CA_A).model_copy(
        update={"spec": report(CA_A).spec.model_copy(update={"bundle": '{"keys": 1}'})}
    )
    with pytest.raises(InvalidBundleError):
        merge_cluster_report(None, garbage, cluster="a", federation=FED, now=T0)


def test_federation_resource_never_goes_backwards() -> None:
    first = federation_resource(CA_FED, stored=None, policy=POLICY, now=T0)
    assert first is not None and first.metadata.name == "atoll-lab"
    newer_ca = rotated(CA_FED)
    newer = federation_resource(newer_ca, stored=first, policy=POLICY, now=T0)
    assert newer is not None and newer.spec.sequence == 2
    assert federation_resource(CA_FED, stored=newer, policy=POLICY, now=T0) is None
    assert federation_resource(newer_ca, stored=newer, policy=POLICY, now=T0) is None


WEB = BundleEndpointSpec(url="https://example.org/bundle", profile="https_web")


def test_foreign_domains_outside_the_federation_only() -> None:
    res = foreign_resource(
        trust_domain="example.org", endpoint=WEB, federation=FED, stored=None, now=T0
    )
    assert (res.metadata.namespace, res.metadata.name, res.spec.bundle) == (
        "foreign",
        "example-org",
        "",
    )
    for inside in ("atoll.lab", "eu-west-1.atoll.lab"):
        with pytest.raises(InvalidError, match="inside the federation"):
            foreign_resource(trust_domain=inside, endpoint=WEB, federation=FED, stored=None, now=T0)
    with pytest.raises(InvalidError, match="already names"):
        foreign_resource(
            trust_domain="example.com",
            endpoint=WEB,
            federation=FED,
            stored=res,
            now=T0,
            name="example-org",
        )
    ext = bootstrap_ca_state(Domain("example.org"), now=T0, policy=POLICY)
    boot = render_bundle(ext.bundle()).decode()
    with_bundle = foreign_resource(
        trust_domain="example.org", endpoint=WEB, federation=FED, stored=res, now=T0, bootstrap=boot
    )
    assert with_bundle.spec.sequence == 1 and with_bundle.status.updated_at == T0
    with pytest.raises(InvalidError):
        foreign_resource(
            trust_domain="example.org",
            endpoint=WEB,
            federation=FED,
            stored=res,
            now=T0,
            bootstrap="[]",
        )
    with pytest.raises(ValueError, match="spiffe_id"):
        BundleEndpointSpec(url="https://x.example/", profile="https_spiffe")
    with pytest.raises(ValueError, match="https"):
        BundleEndpointSpec(url="http://x.example/", profile="https_web")


def test_peer_bundles_are_keyed_by_domain_never_merged() -> None:
    a = CA_A.bundle()
    impostor = bootstrap_ca_state(FED, now=T0, policy=POLICY).bundle()  # claims the fed domain
    got = peer_bundles(CA_FED.bundle(), [a, impostor, a])
    assert [b.trust_domain.name for b in got] == ["a.atoll.lab", "atoll.lab"]
    assert got.get(FED) == CA_FED.bundle()


# ---------------------------------------------------------------- enrollment and server SVIDs


def test_agent_cluster_and_csr_checks() -> None:
    assert agent_cluster(FED.spiffe_id("cluster", "a"), FED) == "a"
    assert agent_cluster(FED.spiffe_id("control-plane"), FED) is None
    assert agent_cluster(Domain("a.atoll.lab").spiffe_id("cluster", "a"), FED) is None
    for bad in (b"", b"x" * 20, b"\x30\x03\x02\x01\x00"):
        with pytest.raises(InvalidError, match="csr"):
            public_key_from_csr(bad)


def test_server_svid_is_reminted_at_half_life_and_after_activation() -> None:
    svid = mint_server_svid(CA_FED, now=T0, policy=POLICY)
    assert svid.leaf.extensions  # carries the DNS SAN for gRPC's target-name check
    assert "control-plane.atoll.lab" in str(svid.leaf.extensions)
    assert plan_server_svid(None, CA_FED, now=T0)
    assert not plan_server_svid(svid, CA_FED, now=T0 + dt.timedelta(minutes=10))
    assert plan_server_svid(svid, CA_FED, now=T0 + POLICY.x509_svid_ttl / 2)
    activated = rotated(rotated(CA_FED))
    assert plan_server_svid(svid, activated, now=T0 + dt.timedelta(minutes=2))
