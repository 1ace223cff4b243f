"""The SNI naming scheme, the allow policy and PROXY v2 headers (pure functions)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atoll_gateway.errors import RouteError
from atoll_gateway.naming import ServiceName, parse_server_name, server_name
from atoll_gateway.policy import AllowPolicy, authorize
from atoll_gateway.proxyproto import TLV_SPIFFE_ID, encode_v2, parse_v2
from atoll_trust.spiffe_id import parse_spiffe_id

ZONE = "atoll.test"


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("web.demo.svc.atoll.test", ServiceName("demo", "web")),
        ("WEB.demo.svc.atoll.test.", ServiceName("demo", "web")),
        ("8080.web.demo.svc.atoll.test", ServiceName("demo", "web", 8080)),
        ("http.web.demo.svc.eu-1.atoll.test", ServiceName("demo", "web", "http", "eu-1")),
    ],
)
def test_names_parse(name: str, want: ServiceName) -> None:
    assert parse_server_name(name, ZONE) == want


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (None, "no_sni"),
        ("web.demo.svc.example.com", "bad_name"),
        ("web.demo.atoll.test", "bad_name"),
        ("a.b.web.demo.svc.atoll.test", "bad_name"),
        ("web.demo.svc.x.y.atoll.test", "bad_name"),
        ("70000.web.demo.svc.atoll.test", "bad_name"),
        ("web_.demo.svc.atoll.test", "bad_name"),
    ],
)
def test_bad_names_are_typed_route_errors(name: str | None, reason: str) -> None:
    with pytest.raises(RouteError) as err:
        parse_server_name(name, ZONE)
    assert err.value.reason == reason


labels = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda s: s != "svc"
)


@given(labels, labels, st.one_of(st.none(), st.integers(1, 65535), labels), st.none() | labels)
def test_server_name_round_trips(
    ns: str, svc: str, port: int | str | None, cluster: str | None
) -> None:
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    target = ServiceName(ns, svc, port, cluster)
    assert parse_server_name(server_name(target, ZONE), ZONE) == target


def test_policy_by_domain_suffix_and_id_pattern() -> None:
    policy = AllowPolicy(
        trust_domains=("*.atoll.lab",), ids=("spiffe://partner.example/team/*/gateway",)
    )
    assert authorize(policy, parse_spiffe_id("spiffe://eu-1.atoll.lab/atoll/gateway")).allowed
    assert not authorize(policy, parse_spiffe_id("spiffe://atoll.lab/control-plane")).allowed
    assert not authorize(policy, parse_spiffe_id("spiffe://evil.example/atoll/gateway")).allowed
    assert authorize(policy, parse_spiffe_id("spiffe://partner.example/team/a/gateway")).allowed
    assert not authorize(
        policy, parse_spiffe_id("spiffe://partner.example/team/a/b/gateway")
    ).allowed
    tail = AllowPolicy(ids=("spiffe://a.example/demo/**",))
    assert authorize(tail, parse_spiffe_id("spiffe://a.example/demo/x/y")).allowed
    assert not authorize(AllowPolicy(), parse_spiffe_id("spiffe://a.example/x")).allowed


def test_policy_rejects_bad_patterns() -> None:
    with pytest.raises(ValueError):
        AllowPolicy(trust_domains=("Bad Domain",))
    with pytest.raises(ValueError):
        AllowPolicy(ids=("http://x",))


def test_proxy_v2_round_trip_and_incomplete() -> None:
    raw = encode_v2(("10.0.0.1", 1234), ("10.0.0.2", 8080), {TLV_SPIFFE_ID: b"spiffe://a/b"})
    got = parse_v2(raw + b"GET /")
    assert got is not None
    assert got.source == ("10.0.0.1", 1234) and got.spiffe_id == "spiffe://a/b"
    assert got.size == len(raw)
    for n in range(len(raw)):
        assert parse_v2(raw[:n]) is None
    six = parse_v2(encode_v2(("::1", 1), ("::2", 2), {}))
    assert six is not None and six.source == ("::1", 1)


@given(st.binary(max_size=200))
def test_proxy_v2_parser_is_total(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_v2(data)
