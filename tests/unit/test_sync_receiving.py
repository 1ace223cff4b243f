"""Client-side delta decisions: all-or-nothing, schema-checked."""

from __future__ import annotations

import pytest

from atoll.model import Metadata, Region, RegionSpec, encode
from atoll.sync.client import schema_validator
from atoll.sync.pushing import Push
from atoll.sync.receiving import HeldState, apply_delta
from atoll.sync.table import Item


def region_item(name: str, version: str = "1", lat: float = 1.0) -> Item:
    r = Region(metadata=Metadata(name=name), spec=RegionSpec(latitude=lat))
    return Item(name=name, version=version, body=encode(r))


def push(*items: Item, removed: tuple[str, ...] = (), nonce: str = "n1") -> Push:
    return Push(type="Region", nonce=nonce, system_version="9", resources=items, removed=removed)


def test_accepts_and_merges() -> None:
    validate = schema_validator()
    d1 = apply_delta(HeldState(), push(region_item("eu"), region_item("us")), validate)
    assert d1.accepted
    d2 = apply_delta(d1.state, push(region_item("eu", "2"), removed=("us",)), validate)
    assert d2.accepted
    assert {n: i.version for n, i in d2.state.items("Region").items()} == {"eu": "2"}
    assert d2.state.system_versions["Region"] == "9"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "Invalid JSON"),
        (b'{"kind":"Region","metadata":{"name":"eu"},"spec":{"latitude":123}}', "spec.latitude"),
        (b'{"kind":"Region","metadata":{"name":"other"},"spec":{}}', "called"),
    ],
)
def test_one_bad_resource_rejects_the_whole_delta(body: bytes, reason: str) -> None:
    validate = schema_validator()
    start = apply_delta(HeldState(), push(region_item("us")), validate).state
    d = apply_delta(
        start, push(region_item("ap"), Item("eu", "2", body), removed=("us",)), validate
    )
    assert not d.accepted
    assert d.error is not None and reason in d.error
    assert d.bad_resources == ("eu",)
    assert d.state is start, "nothing applied"


def test_extra_validator_can_reject() -> None:
    def no_south(type_: str, item: Item) -> None:
        if b'"latitude":-' in item.body:
            raise ValueError("southern regions are not served here")

    d = apply_delta(HeldState(), push(region_item("za", lat=-30.0)), schema_validator(no_south))
    assert not d.accepted and d.error is not None and "southern" in d.error
