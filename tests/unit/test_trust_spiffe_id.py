"""SPIFFE ID parsing: every MUST of the SPIFFE-ID standard, table-tested and fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atoll.errors import InvalidError
from atoll_trust.errors import InvalidSpiffeIdError, TrustError
from atoll_trust.spiffe_id import (
    MAX_SPIFFE_ID_BYTES,
    SpiffeId,
    TrustDomain,
    parse_spiffe_id,
    parse_trust_domain,
)

VALID = [
    ("spiffe://example.org", "example.org", ""),
    ("spiffe://example.org/workload", "example.org", "/workload"),
    ("spiffe://a/b/c/d", "a", "/b/c/d"),
    ("spiffe://td-1_x.y/AZ.az-09_", "td-1_x.y", "/AZ.az-09_"),
    ("spiffe://1.2.3.4/ns/default/sa/web", "1.2.3.4", "/ns/default/sa/web"),
    ("spiffe://x/...", "x", "/..."),
    ("spiffe://x/.a", "x", "/.a"),
    ("spiffe://" + "a" * 255 + "/p", "a" * 255, "/p"),
]

INVALID = [
    ("", "empty"),
    ("example.org/workload", "scheme"),
    ("http://example.org/w", "scheme"),
    ("SPIFFE://example.org/w", "lower case"),
    ("Spiffe://example.org/w", "lower case"),
    ("spiffe:/example.org/w", "scheme"),
    ("spiffe://", "trust domain is missing"),
    ("spiffe:///path", "trust domain is missing"),
    ("spiffe://Example.org/w", "lower case"),
    ("spiffe://example.org:8080/w", "port"),
    ("spiffe://user@example.org/w", "userinfo"),
    ("spiffe://user:pw@example.org/w", "port"),
    ("spiffe://exa%6Dple.org/w", "percent"),
    ("spiffe://example.org/w%20x", "percent"),
    ("spiffe://example.org/w?x=1", "query"),
    ("spiffe://example.org/w#frag", "query and fragment"),
    ("spiffe://example.org?q", "query"),
    ("spiffe://example.org/", "end with"),
    ("spiffe://example.org/w/", "end with"),
    ("spiffe://example.org//w", "empty segment"),
    ("spiffe://example.org/./w", "relative"),
    ("spiffe://example.org/w/..", "relative"),
    ("spiffe://example.org/w x", "invalid character"),
    ("spiffe://example.org/wé", "invalid character"),
    ("spiffe://exa mple.org/w", "invalid character"),
    ("spiffe://" + "a" * 256, "longer than 255"),
    ("spiffe://a/" + "b" * (MAX_SPIFFE_ID_BYTES - 10), "longer than 2048"),
]


@pytest.mark.parametrize(("text", "td", "path"), VALID)
def test_valid_ids_parse_and_round_trip(text: str, td: str, path: str) -> None:
    sid = parse_spiffe_id(text)
    assert sid.trust_domain == TrustDomain(td)
    assert sid.path == path
    assert str(sid) == text
    assert parse_spiffe_id(str(sid)) == sid


@pytest.mark.parametrize(("text", "reason"), INVALID)
def test_invalid_ids_raise_typed_error_naming_the_rule(text: str, reason: str) -> None:
    with pytest.raises(InvalidSpiffeIdError) as info:
        parse_spiffe_id(text)
    assert reason in str(info.value)
    assert isinstance(info.value, TrustError)
    assert isinstance(info.value, InvalidError)
    assert info.value.field == "spiffe_id"


def test_exactly_2048_bytes_is_supported() -> None:
    prefix = "spiffe://a/"
    text = prefix + "b" * (MAX_SPIFFE_ID_BYTES - len(prefix))
    assert len(text) == MAX_SPIFFE_ID_BYTES
    assert str(parse_spiffe_id(text)) == text


def test_trust_domain_forms() -> None:
    assert parse_trust_domain("example.org") == TrustDomain("example.org")
    assert parse_trust_domain("spiffe://example.org") == TrustDomain("example.org")
    assert str(TrustDomain("example.org").id) == "spiffe://example.org"
    with pytest.raises(InvalidSpiffeIdError, match="no path"):
        parse_trust_domain("spiffe://example.org/w")
    with pytest.raises(InvalidSpiffeIdError):
        parse_trust_domain("Example.org")
    with pytest.raises(InvalidSpiffeIdError):
        TrustDomain("")


def test_constructors_validate() -> None:
    td = TrustDomain("td")
    assert str(td.spiffe_id("cluster", "eu-1")) == "spiffe://td/cluster/eu-1"
    assert td.spiffe_id("a", "b").segments == ("a", "b")
    with pytest.raises(InvalidSpiffeIdError):
        td.spiffe_id("a/b")
    with pytest.raises(InvalidSpiffeIdError):
        td.spiffe_id("..")
    with pytest.raises(InvalidSpiffeIdError):
        SpiffeId(td, "/")
    assert parse_spiffe_id("spiffe://td/x").is_member_of(td)


def test_ids_are_hashable_values() -> None:
    a, b = parse_spiffe_id("spiffe://td/x"), parse_spiffe_id("spiffe://td/x")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1


_ID_ALPHABET = st.sampled_from([*list("spiffe:/.-_aZ09%?#@ \x00é"), "//", "..", "spiffe://"])


@given(st.text())
def test_fuzz_arbitrary_text_only_typed_errors(text: str) -> None:
    try:
        sid = parse_spiffe_id(text)
    except InvalidSpiffeIdError:
        return
    assert str(sid) == text


@given(st.lists(_ID_ALPHABET, max_size=40).map("".join))
def test_fuzz_near_miss_ids(text: str) -> None:
    try:
        sid = parse_spiffe_id(text)
    except InvalidSpiffeIdError:
        return
    assert str(sid) == text
    assert sid.trust_domain.name.islower() or not any(c.isalpha() for c in sid.trust_domain.name)


@given(
    st.from_regex(r"[a-z0-9._-]{1,40}", fullmatch=True),
    st.lists(st.from_regex(r"[a-zA-Z0-9._-]{1,12}", fullmatch=True), max_size=6),
)
def test_fuzz_generated_valid_ids_round_trip(td: str, segments: list[str]) -> None:
    text = "spiffe://" + td + "".join("/" + s for s in segments)
    if any(s in (".", "..") for s in segments):
        with pytest.raises(InvalidSpiffeIdError):
            parse_spiffe_id(text)
        return
    sid = parse_spiffe_id(text)
    assert str(sid) == text
    assert sid.segments == tuple(segments)
