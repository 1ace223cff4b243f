"""The pooled tunnel's pure parts: the frame codec and the egress's pool of idle tunnels.

* :class:`~atoll_gateway.tunnelproto.FrameReader` and the frame builders:
  every control frame round-trips whatever the chunking, the bytes after a
  frame are handed over, anything that cannot be valid is a
  :class:`~atoll_gateway.tunnelproto.TunnelProtocolError` (fuzzed with
  hypothesis: arbitrary bytes in arbitrary splits never raise anything else
  and never yield a frame that fails its own validation);
* :class:`~atoll_gateway.tunnelpool.TunnelPool` with an injected clock and
  real TLS connections (a socketpair under TLS, handshaken in-process; the
  pool's liveness check peeks at the socket, so it needs real ones): LIFO,
  context rotation, idle and age limits, the per-peer cap, draining, dead or
  chatty peers, and the ``atoll_gateway_tunnels_idle`` gauge.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atoll_gateway.tunnelpool import Tunnel, TunnelPool
from atoll_gateway.tunnelproto import (
    ACCEPT,
    DATA,
    FIN_FRAME,
    HEADER,
    MAX_CONTROL,
    OPEN,
    REFUSE,
    RESET_FRAME,
    Frame,
    FrameReader,
    TunnelProtocolError,
    accept_frame,
    header,
    open_frame,
    refuse_frame,
)
from tests.gatewaykit import RELAY_SERVER_NAME, idle_tunnels, relay_contexts

# -- frames -----------------------------------------------------------------------------


def _feed_all(data: bytes, sizes: list[int] | None = None) -> tuple[list[Frame], FrameReader]:
    """Feed ``data`` in chunks of ``sizes`` (then the rest), collecting every frame."""
    reader = FrameReader()
    frames: list[Frame] = []
    pos = 0
    chunks: list[bytes] = []
    for size in sizes or []:
        chunks.append(data[pos : pos + size])
        pos += size
    chunks.append(data[pos:])
    for chunk in chunks:
        frame = reader.feed(chunk)
        while frame is not None:  # several frames may have arrived together
            frames.append(frame)
            frame = reader.feed(b"")
    return frames, reader


_SVC = "echo.default.svc.east.atoll"
CONTROL = [
    pytest.param(open_frame(_SVC), Frame(OPEN, _SVC.encode()), id="open"),
    pytest.param(open_frame("a"), Frame(OPEN, b"a"), id="open-one-char"),
    pytest.param(open_frame("a" * 253), Frame(OPEN, b"a" * 253), id="open-253"),
    pytest.param(accept_frame(), Frame(ACCEPT), id="accept"),
    pytest.param(
        refuse_frame("no_route", "nothing named x"),
        Frame(REFUSE, b"no_route:nothing named x"),
        id="refuse",
    ),
    pytest.param(refuse_frame("busy", ""), Frame(REFUSE, b"busy:"), id="refuse-empty-detail"),
]


@pytest.mark.parametrize(("wire", "expected"), CONTROL)
def test_every_control_frame_round_trips(wire: bytes, expected: Frame) -> None:
    reader = FrameReader()
    assert reader.feed(wire) == expected
    assert reader.take_rest() == b""


@pytest.mark.parametrize(("wire", "expected"), CONTROL)
def test_byte_at_a_time_gives_the_same_frame(wire: bytes, expected: Frame) -> None:
    reader = FrameReader()
    got = [reader.feed(wire[i : i + 1]) for i in range(len(wire))]
    assert got[:-1] == [None] * (len(wire) - 1)
    assert got[-1] == expected


def test_the_frame_accessors_give_back_what_was_built() -> None:
    reader = FrameReader()
    opened = reader.feed(open_frame("Echo.Default.SVC.east.atoll"))
    assert opened is not None and opened.name == "OPEN"
    assert opened.server_name() == "echo.default.svc.east.atoll"  # lower-cased on the way
    refused = reader.feed(refuse_frame("unknown_service", "no export\nnamed echo: sorry"))
    assert refused is not None and refused.name == "REFUSE"
    # the detail keeps its colons and loses its line breaks
    assert refused.refusal() == ("unknown_service", "no export named echo: sorry")
    accepted = reader.feed(accept_frame())
    assert accepted is not None and accepted.name == "ACCEPT" and accepted.payload == b""
    assert Frame(42).name == "42"


def test_a_refusal_detail_is_made_ascii_and_bounded() -> None:
    wire = refuse_frame("busy", "caf\u00e9 " + "x" * 1000)
    frame = FrameReader().feed(wire)
    assert frame is not None
    reason, detail = frame.refusal()
    assert reason == "busy"
    assert detail.startswith("caf? x")
    assert len(detail) == 300
    assert len(wire) - HEADER <= MAX_CONTROL


def test_bytes_after_a_frame_are_the_rest() -> None:
    stream = header(DATA, 3) + b"abc" + FIN_FRAME
    reader = FrameReader()
    assert reader.feed(accept_frame() + stream) == Frame(ACCEPT)
    assert reader.take_rest() == stream
    assert reader.take_rest() == b""  # taken once


def test_frames_that_arrive_together_come_out_one_per_feed() -> None:
    wire = refuse_frame("busy", "later") + open_frame("b.example") + b"\x01"
    reader = FrameReader()
    assert reader.feed(wire) == Frame(REFUSE, b"busy:later")
    assert reader.feed(b"") == Frame(OPEN, b"b.example")
    assert reader.feed(b"") is None  # a header's first byte only
    assert reader.take_rest() == b"\x01"


def test_a_reader_is_reusable_after_take_rest() -> None:
    reader = FrameReader()
    assert reader.feed(accept_frame() + b"junk") == Frame(ACCEPT)
    reader.take_rest()
    assert reader.feed(open_frame("next.example")) == Frame(OPEN, b"next.example")


BAD = [
    pytest.param(header(0, 0), id="type-0"),
    pytest.param(header(7, 0), id="type-7"),
    pytest.param(header(255, 3) + b"abc", id="type-255"),
    pytest.param(header(DATA, 5) + b"hello", id="data-where-control-is-due"),
    pytest.param(FIN_FRAME, id="fin-where-control-is-due"),
    pytest.param(RESET_FRAME, id="reset-where-control-is-due"),
    pytest.param(header(OPEN, MAX_CONTROL + 1), id="oversized-open"),
    pytest.param(header(REFUSE, (1 << 24) - 1), id="oversized-refuse"),
    pytest.param(header(OPEN, 0), id="open-empty"),
    pytest.param(header(OPEN, 4) + b"ECHO", id="open-upper-case"),
    pytest.param(header(OPEN, 4) + "\u00e9ch".encode(), id="open-not-ascii"),
    pytest.param(header(OPEN, 4) + b"a_b!", id="open-bad-characters"),
    pytest.param(header(OPEN, 4) + b"-abc", id="open-leading-hyphen"),
    pytest.param(header(OPEN, 4) + b"abc.", id="open-trailing-dot"),
    pytest.param(header(OPEN, 254) + b"a" * 254, id="open-254-bytes"),
    pytest.param(header(OPEN, 4) + b"a\x00bc", id="open-nul"),
    pytest.param(header(REFUSE, 4) + b"busy", id="refuse-without-colon"),
    pytest.param(header(REFUSE, 5) + b":busy", id="refuse-empty-reason"),
    pytest.param(header(REFUSE, 5) + b"Busy:", id="refuse-upper-case-reason"),
    pytest.param(header(REFUSE, 6) + b"1busy:", id="refuse-reason-starts-with-digit"),
    pytest.param(header(REFUSE, 34) + b"a" * 33 + b":", id="refuse-reason-too-long"),
    pytest.param(header(REFUSE, 7) + "b\u00e9:x".encode() + b"yz", id="refuse-reason-not-ascii"),
    pytest.param(header(REFUSE, 7) + b"busy:" + "\u00e9".encode(), id="refuse-detail-not-ascii"),
    pytest.param(header(ACCEPT, 1) + b"x", id="accept-with-payload"),
]


@pytest.mark.parametrize("wire", BAD)
def test_invalid_frames_are_protocol_errors(wire: bytes) -> None:
    with pytest.raises(TunnelProtocolError) as info:
        FrameReader().feed(wire)
    assert info.value.reason == "tunnel_protocol"


@pytest.mark.parametrize("wire", BAD)
def test_invalid_frames_are_protocol_errors_byte_at_a_time(wire: bytes) -> None:
    reader = FrameReader()
    with pytest.raises(TunnelProtocolError):
        for i in range(len(wire)):
            reader.feed(wire[i : i + 1])


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(header(7, 2), id="unknown-type"),
        pytest.param(header(DATA, 100), id="data"),
        pytest.param(header(OPEN, MAX_CONTROL + 1), id="oversized"),
    ],
)
def test_a_hopeless_header_fails_before_its_payload(wire: bytes) -> None:
    with pytest.raises(TunnelProtocolError):
        FrameReader().feed(wire)  # the header alone: no payload byte has arrived


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(header(ACCEPT, 10), id="accept-with-length"),
        pytest.param(header(OPEN, 254), id="open-over-253"),
    ],
)
def test_a_control_header_that_cannot_be_valid_fails_at_once(wire: bytes) -> None:
    with pytest.raises(TunnelProtocolError):
        FrameReader().feed(wire)


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(header(OPEN, 4) + b"abc\n", id="open"),
        pytest.param(header(REFUSE, 6) + b"busy\n:", id="refuse"),
    ],
)
def test_a_trailing_newline_is_not_a_valid_name(wire: bytes) -> None:
    with pytest.raises(TunnelProtocolError):
        FrameReader().feed(wire)


@pytest.mark.parametrize(
    "name",
    ["", "-echo", "echo-", "echo.", "ec ho", "ech_o", "\u00e9cho", "a" * 254, "a/b", "a:b"],
)
def test_open_frame_refuses_what_is_not_a_server_name(name: str) -> None:
    with pytest.raises(ValueError, match="not a server name"):
        open_frame(name)


def test_open_frame_refuses_a_trailing_newline() -> None:
    with pytest.raises(ValueError, match="not a server name"):
        open_frame("echo\n")


@pytest.mark.parametrize("reason", ["", "Busy", "1busy", "no-route", "a" * 33, "b\u00e9", "x:y"])
def test_refuse_frame_refuses_what_is_not_a_reason_label(reason: str) -> None:
    with pytest.raises(ValueError, match="not a reason label"):
        refuse_frame(reason, "detail")


def test_refuse_frame_refuses_a_trailing_newline() -> None:
    with pytest.raises(ValueError, match="not a reason label"):
        refuse_frame("busy\n", "detail")


# -- property tests ---------------------------------------------------------------------

_LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?\Z")
_REASON = st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z")


@st.composite
def _control(draw: st.DrawFn) -> tuple[bytes, Frame]:
    kind = draw(st.sampled_from(["open", "accept", "refuse"]))
    if kind == "open":
        name = draw(_LABEL)
        return open_frame(name), Frame(OPEN, name.encode())
    if kind == "accept":
        return accept_frame(), Frame(ACCEPT)
    reason = draw(_REASON)
    detail = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300))
    return refuse_frame(reason, detail), Frame(REFUSE, f"{reason}:{detail}".encode())


def _splits(total: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, max(total, 1)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(_control(), min_size=1, max_size=6), data=st.data())
def test_any_sequence_of_frames_in_any_split_comes_out_whole(
    frames: list[tuple[bytes, Frame]], data: st.DataObject
) -> None:
    wire = b"".join(w for w, _ in frames)
    tail = data.draw(st.binary(max_size=3))  # less than a header: stays the rest
    sizes = data.draw(_splits(len(wire)))
    got, reader = _feed_all(wire + tail, sizes)
    assert got == [f for _, f in frames]
    assert reader.take_rest() == tail


def _still_valid(frame: Frame) -> None:
    """A frame the reader returned passes its own validation again, and its accessors work."""
    assert frame.type in (OPEN, ACCEPT, REFUSE)
    assert len(frame.payload) <= MAX_CONTROL
    # what the builders would send for it is the same frame
    if frame.type == OPEN:
        assert open_frame(frame.server_name()) == header(OPEN, len(frame.payload)) + frame.payload
    elif frame.type == REFUSE:
        reason, detail = frame.refusal()
        assert frame.payload == f"{reason}:{detail}".encode("ascii")
        assert refuse_frame(reason, "") == header(REFUSE, len(reason) + 1) + reason.encode() + b":"
    else:
        assert frame.payload == b""
    assert FrameReader().feed(header(frame.type, len(frame.payload)) + frame.payload) == frame


_prefix = st.sampled_from(
    [b"", header(OPEN, 3), header(REFUSE, 5), header(ACCEPT, 0), header(OPEN, 40)]
)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """Valid control frames with a few bytes overwritten (near misses reach deeper)."""
    wire = bytearray(b"".join(w for w, _ in draw(st.lists(_control(), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 3))):
        wire[draw(st.integers(0, len(wire) - 1))] = draw(st.integers(0, 255))
    return bytes(wire)


@settings(max_examples=500, deadline=None)
@given(
    prefix=_prefix,
    blob=st.one_of(st.binary(max_size=300), _mutated()),
    data=st.data(),
)
def test_arbitrary_bytes_raise_only_protocol_errors(
    prefix: bytes, blob: bytes, data: st.DataObject
) -> None:
    """Fuzz: whatever arrives, in whatever pieces, the reader returns valid frames or
    raises :class:`TunnelProtocolError` — never another exception."""
    wire = prefix + blob
    sizes = data.draw(_splits(len(wire)))
    try:
        got, _ = _feed_all(wire, sizes)
    except TunnelProtocolError:
        return
    for frame in got:
        _still_valid(frame)


# -- the pool ---------------------------------------------------------------------------


@dataclass
class Link:
    """A real TLS connection: ``tls`` is the egress's end (what the pool holds)."""

    tls: ssl.SSLSocket
    peer: ssl.SSLSocket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _wait(sock: socket.socket, *, write: bool = False) -> None:
    r, w = ([], [sock]) if write else ([sock], [])
    select.select(r, w, [], 5)


def _link(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Link:
    """A TLS connection over a socketpair, handshaken in this thread, then one byte each
    way (the client consumes the TLS 1.3 session tickets: an idle tunnel has nothing to read)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    client = client_ctx.wrap_socket(
        b, server_hostname=RELAY_SERVER_NAME, do_handshake_on_connect=False
    )
    todo = [server, client]
    for _ in range(100):
        for side in list(todo):
            try:
                side.do_handshake()
                todo.remove(side)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        if not todo:
            break
        select.select([server, client], [], [], 1)
    assert not todo, "handshake did not complete"
    for src, dst in ((server, client), (client, server)):
        src.send(b"!")
        while True:
            try:
                assert dst.recv(1) == b"!"
                break
            except ssl.SSLWantReadError:
                _wait(dst)
    return Link(client, server)


@dataclass
class Env:
    clock: Clock
    ctx: ssl.SSLContext
    links: list[Link]
    _server: ssl.SSLContext

    def tunnel(self, key: str = "east/gw:8443", ctx: ssl.SSLContext | None = None) -> Tunnel:
        link = _link(self._server, ctx or self.ctx)
        self.links.append(link)
        return Tunnel(tls=link.tls, key=key, context=ctx or self.ctx, born=self.clock.now)

    def peer_of(self, tunnel: Tunnel) -> ssl.SSLSocket:
        return next(link.peer for link in self.links if link.tls is tunnel.tls)


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return relay_contexts()


@pytest.fixture
def env(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[Env]:
    server, client = contexts
    e = Env(Clock(), client, [], server)
    yield e
    for link in e.links:
        link.tls.close()
        link.peer.close()


def _pool(env: Env, **kw: float) -> TunnelPool:
    limits: dict[str, float] = {"max_idle": 8, "idle_timeout": 30.0, "max_age": 3600.0}
    limits.update(kw)
    return TunnelPool(
        max_idle=int(limits["max_idle"]),
        idle_timeout=limits["idle_timeout"],
        max_age=limits["max_age"],
        clock=env.clock,
    )


def _open(t: Tunnel) -> bool:
    return t.tls.fileno() >= 0


def test_an_empty_pool_has_nothing_to_give(env: Env) -> None:
    pool = _pool(env)
    assert pool.take("east/gw:8443", env.ctx) is None
    assert len(pool) == 0


def test_the_most_recently_idle_tunnel_is_taken_first(env: Env) -> None:
    pool = _pool(env)
    tunnels = [env.tunnel() for _ in range(3)]
    for t in tunnels:
        pool.give(t)
        env.clock.now += 1
    assert len(pool) == 3
    assert [pool.take("east/gw:8443", env.ctx) for _ in range(3)] == tunnels[::-1]
    assert pool.take("east/gw:8443", env.ctx) is None
    assert all(_open(t) for t in tunnels)
    assert [t.idle_since for t in tunnels] == [1000.0, 1001.0, 1002.0]


def test_tunnels_are_kept_per_peer(env: Env) -> None:
    pool = _pool(env)
    east, west = env.tunnel("east/gw:8443"), env.tunnel("west/gw:8443")
    pool.give(east)
    pool.give(west)
    assert pool.take("north/gw:8443", env.ctx) is None
    assert pool.take("west/gw:8443", env.ctx) is west
    assert pool.take("west/gw:8443", env.ctx) is None
    assert pool.take("east/gw:8443", env.ctx) is east


def test_a_tunnel_of_a_rotated_context_is_closed_not_handed_out(
    env: Env, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    pool = _pool(env)
    current = env.tunnel()
    # an equal-looking context that is not *the* current one (the SVID rotated)
    stale_ctx = relay_contexts()[1]
    stale = env.tunnel(ctx=stale_ctx)
    pool.give(current)
    pool.give(stale)  # on top of the stack
    assert pool.take("east/gw:8443", env.ctx) is current
    assert not _open(stale)
    assert len(pool) == 0


def test_an_idle_timeout_closes_a_tunnel_at_take_time(env: Env) -> None:
    pool = _pool(env, idle_timeout=10.0)
    t = env.tunnel()
    pool.give(t)
    env.clock.now += 9.5
    assert pool.take("east/gw:8443", env.ctx) is t  # just in time
    pool.give(t)  # idle again from now
    env.clock.now += 10.0
    assert pool.take("east/gw:8443", env.ctx) is None
    assert not _open(t)


def test_a_tunnel_older_than_max_age_is_closed_at_take_and_at_give(env: Env) -> None:
    pool = _pool(env, max_age=100.0, idle_timeout=1000.0)
    t = env.tunnel()
    env.clock.now += 50
    pool.give(t)
    env.clock.now += 49.5
    assert pool.take("east/gw:8443", env.ctx) is t  # 99.5 s old: still fine
    pool.give(t)
    env.clock.now += 0.5
    assert pool.take("east/gw:8443", env.ctx) is None  # 100 s old
    assert not _open(t)
    old = env.tunnel()
    env.clock.now += 100
    pool.give(old)  # too old to keep at all
    assert not _open(old)
    assert len(pool) == 0


def test_expire_closes_what_idled_or_lived_too_long(env: Env) -> None:
    pool = _pool(env, idle_timeout=10.0, max_age=100.0)
    aged = env.tunnel()  # born at 1000
    env.clock.now += 95
    idle = env.tunnel()
    pool.give(aged)
    pool.give(idle)
    env.clock.now += 5  # aged: 100 s old; both idle 5 s
    fresh = env.tunnel()
    pool.give(fresh)
    assert pool.expire() == 1
    assert not _open(aged) and _open(idle) and _open(fresh)
    env.clock.now += 6  # idle: 11 s idle; fresh: 6 s
    assert pool.expire() == 1
    assert not _open(idle) and _open(fresh)
    assert len(pool) == 1
    assert pool.expire() == 0
    assert pool.take("east/gw:8443", env.ctx) is fresh


def test_expire_enforces_a_lowered_max_idle_keeping_the_most_recent(env: Env) -> None:
    pool = _pool(env, max_idle=4)
    tunnels = [env.tunnel() for _ in range(4)]
    for t in tunnels:
        pool.give(t)
        env.clock.now += 1
    pool.configure(max_idle=1, idle_timeout=30.0, max_age=3600.0)
    assert len(pool) == 4  # not before the next tick
    assert pool.expire() == 3
    assert [_open(t) for t in tunnels] == [False, False, False, True]
    pool.configure(max_idle=0, idle_timeout=30.0, max_age=3600.0)
    assert pool.expire() == 1
    assert not _open(tunnels[3]) and len(pool) == 0


def test_a_full_pool_closes_its_coldest_tunnel_for_the_one_given(env: Env) -> None:
    pool = _pool(env, max_idle=2)
    a, b, c = env.tunnel(), env.tunnel(), env.tunnel()
    for t in (a, b, c):
        pool.give(t)
    assert len(pool) == 2
    assert not _open(a) and _open(b) and _open(c)
    other = env.tunnel("west/gw:8443")
    pool.give(other)  # another peer has its own room
    assert len(pool) == 3 and _open(other)
    assert pool.take("east/gw:8443", env.ctx) is c


def test_close_drains_the_pool_and_every_later_give(env: Env) -> None:
    pool = _pool(env)
    tunnels = [env.tunnel("east/gw:8443"), env.tunnel("west/gw:8443")]
    for t in tunnels:
        pool.give(t)
    pool.close()
    assert pool.closed and len(pool) == 0
    assert not any(_open(t) for t in tunnels)
    late = env.tunnel()
    pool.give(late)  # a stream that ended during the drain
    assert not _open(late)
    assert pool.take("east/gw:8443", env.ctx) is None
    pool.close()  # twice is fine


def test_a_tunnel_whose_peer_closed_is_not_handed_out(env: Env) -> None:
    pool = _pool(env)
    healthy, dead = env.tunnel(), env.tunnel()
    pool.give(healthy)
    pool.give(dead)
    env.peer_of(dead).close()  # the serving gateway went away (a FIN, no close_notify)
    assert pool.take("east/gw:8443", env.ctx) is healthy
    assert not _open(dead)


def test_a_tunnel_whose_peer_said_goodbye_is_not_handed_out(env: Env) -> None:
    pool = _pool(env)
    t = env.tunnel()
    pool.give(t)
    peer = env.peer_of(t)
    # close_notify: a TLS record on an idle tunnel (sent; then it would wait for ours)
    with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
        peer.unwrap()
    assert pool.take("east/gw:8443", env.ctx) is None
    assert not _open(t)


def test_a_tunnel_with_unasked_bytes_is_not_handed_out(env: Env) -> None:
    pool = _pool(env)
    t = env.tunnel()
    env.peer_of(t).send(b"x")  # in the socket, not yet read
    pool.give(t)
    assert pool.take("east/gw:8443", env.ctx) is None
    assert not _open(t)


def test_a_tunnel_with_decrypted_bytes_left_is_not_handed_out(env: Env) -> None:
    pool = _pool(env)
    t = env.tunnel()
    env.peer_of(t).send(b"xy")
    while True:  # read one byte of the record: the other one waits inside TLS
        try:
            assert t.tls.recv(1) == b"x"
            break
        except ssl.SSLWantReadError:
            _wait(t.tls)
    assert t.tls.pending() == 1
    pool.give(t)
    assert pool.take("east/gw:8443", env.ctx) is None
    assert not _open(t)


def test_a_tunnel_closed_while_idle_is_skipped(env: Env) -> None:
    pool = _pool(env)
    healthy, closed = env.tunnel(), env.tunnel()
    pool.give(healthy)
    pool.give(closed)
    closed.close()
    assert pool.take("east/gw:8443", env.ctx) is healthy


def test_the_idle_gauge_follows_the_pool(env: Env) -> None:
    base = idle_tunnels()
    pool = _pool(env, max_idle=3, idle_timeout=10.0)

    def delta() -> float:
        return idle_tunnels() - base

    tunnels = [env.tunnel() for _ in range(4)]
    for t in tunnels:
        pool.give(t)  # the fourth is over max_idle: the first (coldest) is closed
    assert delta() == 3 == len(pool)
    assert not _open(tunnels[0])
    assert pool.take("east/gw:8443", env.ctx) is tunnels[3]
    assert delta() == 2 == len(pool)
    env.peer_of(tunnels[2]).close()
    assert pool.take("east/gw:8443", env.ctx) is tunnels[1]  # tunnels[2] was dead
    assert delta() == 0 == len(pool)
    pool.give(tunnels[1])
    pool.give(tunnels[3])
    assert delta() == 2
    assert pool.take("east/gw:8443", relay_contexts()[1]) is None  # wrong context: both go
    assert delta() == 0 == len(pool)
    fresh = [env.tunnel() for _ in range(2)]
    for t in fresh:
        pool.give(t)
    env.clock.now += 11
    assert pool.expire() == 2
    assert delta() == 0
    late = env.tunnel()
    pool.give(late)
    assert delta() == 1
    pool.close()
    assert delta() == 0
    pool.give(env.tunnel())
    assert delta() == 0


# a stateful check: any sequence of gives, takes, expiries and clock steps keeps the
# pool, the gauge and the tunnels' states consistent with a model


_STEPS = ["give a", "give a", "give b", "take a", "take a", "take b", "tick 1", "tick 4"]


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.sampled_from([*_STEPS, "tick 12", "expire", "kill a"]).map(lambda s: tuple(s.split())),
        max_size=20,
    )
)
def test_any_sequence_keeps_pool_gauge_and_sockets_consistent(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], steps: list[tuple[str, ...]]
) -> None:
    server, client = contexts
    clock = Clock()
    env = Env(clock, client, [], server)
    base = idle_tunnels()
    pool = TunnelPool(max_idle=2, idle_timeout=10.0, max_age=20.0, clock=clock)
    # the model: per key, the idle stack, oldest first
    model: dict[str, list[Tunnel]] = {"a": [], "b": []}
    out: list[Tunnel] = []  # taken, in use
    dead: list[Tunnel] = []  # idle tunnels whose peer went away (compared by identity)
    try:
        for op, *args in steps:
            arg = args[0] if args else ""
            now = clock.now
            if op == "give":
                t = out.pop() if out and out[-1].key == arg else env.tunnel(arg)
                pool.give(t)
                if now - t.born < 20.0:
                    if len(model[arg]) == 2:  # full: the coldest goes
                        assert not _open(model[arg].pop(0))
                    model[arg].append(t)
                else:
                    assert not _open(t)
            elif op == "take":
                got = pool.take(arg, env.ctx)
                want = None
                while model[arg]:
                    t = model[arg].pop()
                    if t not in dead and now - t.idle_since < 10.0 and now - t.born < 20.0:
                        want = t
                        break
                    assert not _open(t)
                assert got is want
                if got is not None:
                    assert _open(got)
                    out.append(got)
            elif op == "tick":
                clock.now += float(arg)
            elif op == "kill":
                if model[arg]:
                    victim = model[arg][-1]
                    env.peer_of(victim).close()
                    dead.append(victim)
            else:
                pool.expire()
                for key, stack in model.items():
                    keep = [t for t in stack if now - t.idle_since < 10.0 and now - t.born < 20.0]
                    for t in stack:
                        if t not in keep:
                            assert not _open(t)
                    model[key] = keep
            assert len(pool) == sum(len(s) for s in model.values())
            assert idle_tunnels() - base == len(pool)
            assert all(_open(t) for s in model.values() for t in s)
    finally:
        pool.close()
        assert idle_tunnels() == base
        for link in env.links:
            link.tls.close()
            link.peer.close()
