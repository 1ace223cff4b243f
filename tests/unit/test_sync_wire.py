"""Pre-encoded pushes decode to exactly the message the generated code would build."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from atoll.sync.pushing import Push
from atoll.sync.table import Item
from atoll.sync.v1 import sync_pb2 as pb
from atoll.sync.wire import encode_push, push_to_pb

text = st.text(min_size=0, max_size=40)
items = st.builds(Item, name=text, version=text, body=st.binary(max_size=3000))


@given(
    type_=text,
    nonce=text,
    version=text,
    resources=st.lists(items, max_size=6),
    removed=st.lists(text, max_size=4),
)
def test_encode_push_equals_the_generated_encoding(
    type_: str, nonce: str, version: str, resources: list[Item], removed: list[str]
) -> None:
    push = Push(
        type=type_,
        nonce=nonce,
        system_version=version,
        resources=tuple(resources),
        removed=tuple(removed),
    )
    decoded = pb.ServerMessage.FromString(encode_push(push))
    assert decoded == push_to_pb(push)
    assert decoded.WhichOneof("message") == "delta"


def test_large_bodies_use_multi_byte_lengths() -> None:
    big = Item(name="n", version="1", body=b"x" * 300_000)
    push = Push(type="T", nonce="1", system_version="2", resources=(big,), removed=())
    assert pb.ServerMessage.FromString(encode_push(push)).delta.resources[0].body == big.body
