"""The sans-IO ClientHello parser: real hellos, every truncation, hypothesis fuzzing."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll_gateway.clienthello import ClientHello, NeedMore, parse_client_hello
from atoll_gateway.errors import ClientHelloError


def real_hello(sni: str | None = "web.demo.svc.atoll.test", alpn: list[str] | None = None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


HELLO = real_hello(alpn=["atoll-tunnel/1", "h2"])


def test_parses_sni_and_alpn_of_a_real_openssl_hello() -> None:
    out = parse_client_hello(HELLO)
    assert isinstance(out, ClientHello)
    assert out.server_name == "web.demo.svc.atoll.test"
    assert out.alpn == ("atoll-tunnel/1", "h2")
    assert out.size == len(HELLO)


def test_hello_without_sni() -> None:
    out = parse_client_hello(real_hello(sni=None))
    assert isinstance(out, ClientHello) and out.server_name is None


def test_every_prefix_asks_for_more_and_never_errors() -> None:
    for n in range(len(HELLO)):
        out = parse_client_hello(HELLO[:n])
        assert isinstance(out, NeedMore), n
        assert n < out.total <= len(HELLO)


def test_hello_split_over_two_records() -> None:
    body = HELLO[5:]
    half = len(body) // 2
    rec = b"".join(
        bytes((22, 3, 1)) + len(part).to_bytes(2, "big") + part
        for part in (body[:half], body[half:])
    )
    out = parse_client_hello(rec)
    assert isinstance(out, ClientHello) and out.server_name == "web.demo.svc.atoll.test"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "not_tls"),
        (b"\x17\x03\x03\x00\x10", "not_tls"),
        (b"\x16\x03\x01\x00\x00", "malformed"),  # empty record
        (b"\x16\x03\x01\x50\x00", "malformed"),  # record over 2^14
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "malformed"),  # server_hello first
        (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "oversized"),
    ],
)
def test_bad_inputs_get_typed_errors(data: bytes, reason: str) -> None:
    with pytest.raises(ClientHelloError) as err:
        parse_client_hello(data, max_size=4096)
    assert err.value.reason == reason


def test_oversized_hello_is_refused_before_it_arrives() -> None:
    with pytest.raises(ClientHelloError) as err:
        parse_client_hello(HELLO[:5], max_size=len(HELLO) - 1)
    assert err.value.reason == "oversized"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_crash(data: bytes) -> None:
    try:
        out = parse_client_hello(data)
    except ClientHelloError as exc:
        assert exc.reason in {"not_tls", "malformed", "oversized"}
        return
    assert isinstance(out, ClientHello | NeedMore)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(HELLO) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    st.integers(0, len(HELLO)),
)
def test_fuzz_mutated_real_hellos_never_crash(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(HELLO)
    for offset, value in edits:
        data[offset] = value
    try:
        out = parse_client_hello(bytes(data[:cut]))
    except ClientHelloError as exc:
        assert exc.reason in {"not_tls", "malformed", "oversized"}
        return
    if isinstance(out, ClientHello):
        assert out.server_name is None or out.server_name == out.server_name.lower()
