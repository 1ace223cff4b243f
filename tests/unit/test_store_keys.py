"""Argument validation shared by both backends: what is accepted, what is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atoll.errors import InvalidError
from atoll.store.keys import (
    MAX_KEY_BYTES,
    check_expect,
    check_lease,
    check_revision,
    check_ttl,
    check_value,
    decode_key,
    encode_key,
    encode_prefix,
)


def printable(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


@given(st.text(max_size=40))
def test_keys_are_exactly_the_nonempty_printable_ascii_strings(text: str) -> None:
    if text and printable(text):
        assert decode_key(encode_key(text)) == text
    else:
        with pytest.raises(InvalidError):
            encode_key(text)


@given(st.text(max_size=40))
def test_prefixes_may_be_empty(text: str) -> None:
    if printable(text):
        assert encode_prefix(text) == text.encode()
    else:
        with pytest.raises(InvalidError):
            encode_prefix(text)


def test_limits_and_types() -> None:
    assert encode_key("k" * MAX_KEY_BYTES)
    with pytest.raises(InvalidError):
        encode_key("k" * (MAX_KEY_BYTES + 1))
    with pytest.raises(InvalidError):
        encode_key(b"bytes")  # type: ignore[arg-type]
    assert check_value(b"") == b""
    with pytest.raises(InvalidError):
        check_value(bytearray(b"x"))


@pytest.mark.parametrize("good", [None, 0, 1, 2**62])
def test_expect_accepts(good: int | None) -> None:
    check_expect(good)


@pytest.mark.parametrize("bad", [-1, True, 1.5, "3"])
def test_expect_refuses(bad: object) -> None:
    with pytest.raises(InvalidError):
        check_expect(bad)


def test_ttl_lease_revision() -> None:
    assert check_ttl(1) == 1
    for bad_ttl in (0, -5, 1.5, True, 10**12):
        with pytest.raises(InvalidError):
            check_ttl(bad_ttl)
    assert check_lease(7) == 7
    for bad_lease in (0, -1, False, "7"):
        with pytest.raises(InvalidError):
            check_lease(bad_lease)
    assert check_revision(1, field="r") == 1
    with pytest.raises(InvalidError):
        check_revision(0, field="r")


def test_foreign_bytes_decode_escaped() -> None:
    assert decode_key(b"caf\xc3\xa9") == "caf\\xc3\\xa9"
