"""parse_catalog: the catalog-file schema in YAML and JSON, clear errors, fuzzed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atoll.errors import FatalError, InvalidError
from atoll_agent.catalog.file_source import parse_catalog
from atoll_agent.registry.catalog import PutService, apply, empty_catalog
from atoll_agent.registry.model import CatalogSnapshot, ServiceSpec
from atoll_agent.registry.persistence import save_state

YAML = b"""
services:
  - namespace: shop
    name: cart
    export: true
    ports: [{name: http, port: 8080}, {name: admin, port: 9000}]
    instances:
      - {id: cart-2, address: 10.0.2.7, health: warning}
      - {id: cart-1, address: "fd00::5", zone: eu-west-1a, labels: {version: v2}}
  - namespace: shop
    name: db
    ports: [{port: 5432}]
"""


def test_yaml_document() -> None:
    snap = parse_catalog(YAML, source="c.yaml", fmt="yaml")
    assert [s.key for s in snap.services] == [("shop", "cart"), ("shop", "db")]
    cart = snap.services[0]
    assert cart.export and not snap.services[1].export
    assert [(i.id, str(i.address), i.health) for i in cart.instances] == [
        ("cart-1", "fd00::5", "passing"),
        ("cart-2", "10.0.2.7", "warning"),
    ]
    assert cart.instances[0].labels == {"version": "v2"}


def test_json_document_is_the_catalog_api_shape() -> None:
    snap = parse_catalog(YAML, source="c.yaml", fmt="yaml")
    again = parse_catalog(snap.model_dump_json().encode(), source="c.json", fmt="json")
    assert again == snap


def test_a_registry_state_file_is_accepted_and_verified(tmp_path: Path) -> None:
    spec = ServiceSpec.model_validate({"ports": [{"port": 1}]})
    snap = apply(empty_catalog("e"), PutService("a", "b", spec), now=1.0)
    save_state(tmp_path / "state.json", snap)
    data = (tmp_path / "state.json").read_bytes()
    assert parse_catalog(data, source="state.json", fmt="json") == snap
    tampered = data.replace(b'"name":"b"', b'"name":"c"')
    with pytest.raises(InvalidError, match="checksum mismatch"):
        parse_catalog(tampered, source="state.json", fmt="json")


@pytest.mark.parametrize(
    ("data", "fmt", "message", "field"),
    [
        (b"services: [", "yaml", r"c\.x: not valid YAML: .* at line 1 column", None),
        (b'{"services": [}', "json", r"c\.x: not valid JSON: .* at line 1 column 15", None),
        (b"\xff\xfe\x00", "json", r"c\.x: not (valid JSON|UTF-8)", None),
        (b"services: 2001-13-45", "yaml", r"not valid YAML: month must be in 1\.\.12", None),
        (b"services: !!int x", "yaml", r"not valid YAML: invalid literal", None),
        (b"services: !!binary x", "yaml", r"not valid YAML: failed to decode base64", None),
        (b"services: &x [*x]", "yaml", r"services\.0", "services.0"),
        (
            b"kind: atoll-registry-catalog\npayload: {a: 2001-01-01}",
            "yaml",
            r"c\.x: not JSON",  # a state file is always JSON
            None,
        ),
        (b"- a\n- b\n", "yaml", "expected a mapping with a 'services' list", "services"),
        (b"", "yaml", "expected a mapping", "services"),
        (
            b"services: [{namespace: Shop, name: a, ports: [{port: 1}]}]",
            "yaml",
            r"c\.x: services\.0\.namespace: Value error, 'Shop' is not a DNS label",
            "services.0.namespace",
        ),
        (
            b"services: [{namespace: s, name: a, ports: [{port: 1}],"
            b" instances: [{id: i, address: 10.0.0.256}]}]",
            "yaml",
            r"services\.0\.instances\.0\.address: .*'10\.0\.0\.256' is not an IPv4 or IPv6",
            "services.0.instances.0.address",
        ),
        (
            b"services: [{namespace: s, name: a}]",
            "yaml",
            r"services\.0\.ports: Field required",
            "services.0.ports",
        ),
        (b"services: []\nextra: 1", "yaml", r"extra: Extra inputs are not permitted", "extra"),
    ],
)
def test_errors_name_the_file_and_the_field(
    data: bytes, fmt: Literal["json", "yaml"], message: str, field: str | None
) -> None:
    with pytest.raises(InvalidError, match=message) as info:
        parse_catalog(data, source="c.x", fmt=fmt)
    assert info.value.field == field


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100).map(str.encode),
        json_values.map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzzed_input_parses_or_raises_invalid(data: bytes) -> None:
    for fmt in ("json", "yaml"):
        try:
            snap = parse_catalog(data, source="fuzz", fmt=fmt)
        except InvalidError as exc:
            assert str(exc).startswith("fuzz")
        except FatalError:
            pass  # a state document claiming a newer format
        else:
            assert isinstance(snap, CatalogSnapshot)


@settings(max_examples=100, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "services": st.lists(
                st.fixed_dictionaries(
                    {
                        "namespace": st.sampled_from(["a", "B", "c-"]),
                        "name": st.sampled_from(["x", "y"]),
                        "ports": st.lists(
                            st.fixed_dictionaries({"port": st.integers(-1, 70_000)}), max_size=2
                        ),
                        "instances": st.lists(
                            st.fixed_dictionaries(
                                {
                                    "id": st.sampled_from(["i", "j", "-k"]),
                                    "address": st.sampled_from(["10.0.0.1", "::1", "x", ""]),
                                }
                            ),
                            max_size=3,
                        ),
                    }
                ),
                max_size=3,
            )
        }
    )
)
def test_fuzzed_catalogs_parse_or_name_a_field(doc: dict[str, object]) -> None:
    try:
        snap = parse_catalog(json.dumps(doc).encode(), source="f", fmt="json")
    except InvalidError as exc:
        assert exc.field is not None and exc.field.startswith("services")
    else:
        assert CatalogSnapshot.model_validate_json(snap.model_dump_json()) == snap
