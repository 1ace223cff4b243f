"""Streams over a pooled tunnel on real sockets: :class:`TunnelRelay` and the frame I/O.

The cross-cluster path of a pooled tunnel is rebuilt without the rest of the
gateway, the way the gateways drive it: a TLS 1.3 connection over loopback
is the tunnel; :func:`~atoll_gateway.tunnelio.send_frame` and
:func:`~atoll_gateway.tunnelio.read_frame` exchange OPEN and ACCEPT; then a
:class:`TunnelRelay` at each end (the egress's with the workload's socket,
``stream_is_client=True``; the serving gateway's with the endpoint's) relays
the stream, and when both directions ended cleanly the same two TLS sockets
carry the next stream. Where a test needs a misbehaving peer, the far end of
the tunnel is driven by hand (raw frames through ``send_frame``).

Application sockets are read and written through the loop's
:class:`~atoll_gateway.poller.Poller` (not ``loop.sock_*``), so the same
scenarios run under uvloop (see ``tests/integration/test_gateway_poller.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import random
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll.aio import cancel_and_wait, spawn
from atoll_gateway.relay import BUFFER_SIZE, _CopyPump, abort
from atoll_gateway.relaywatch import RelayWatch
from atoll_gateway.tunnelio import read_frame, send_frame
from atoll_gateway.tunnelpool import Tunnel, TunnelPool
from atoll_gateway.tunnelproto import (
    ACCEPT,
    DATA,
    DISCARD_LIMIT,
    FIN,
    FIN_FRAME,
    OPEN,
    REFUSE,
    RESET,
    RESET_FRAME,
    Frame,
    FrameReader,
    TunnelProtocolError,
    accept_frame,
    header,
    open_frame,
    refuse_frame,
)
from atoll_gateway.tunnelrelay import TunnelRelay
from tests.gatewaykit import (
    LOOPS,
    Run,
    TlsLink,
    close_with_reset,
    data_frame,
    poll_read,
    poll_recv_tls,
    poll_send,
    read_data_frames,
    read_direction,
    read_to_eof,
    relay_contexts,
    runner_of,
    send_all,
    socket_pair,
    tls_link,
    tunnel_is_gone,
)
from tests.polling import eventually

HOST = "127.0.0.1"
NAME = "echo.default.svc.east.atoll"
#: socket buffers of the back-pressure test (locked: no autotuning to many MiB)
SMALL = 32 * 1024
_WAIT = 20.0
SERVER_CTX, CLIENT_CTX = relay_contexts(minimum_version=ssl.TLSVersion.TLSv1_3)


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Run:
    """Run a coroutine to completion on a fresh loop of the parametrized kind."""
    return runner_of(request.param)


# -- tunnels ----------------------------------------------------------------------------


async def _link(bufsize: int | None = None) -> TlsLink:
    """One tunnel, TLS 1.3."""
    link = await tls_link(HOST, SERVER_CTX, CLIENT_CTX, bufsize=bufsize)
    assert link.egress.version() == "TLSv1.3"
    return link


# -- one stream through two relays ------------------------------------------------------


async def _open(link: TlsLink, name: str = NAME) -> tuple[bytes, bytes]:
    """OPEN → ACCEPT as the gateways do it; the bytes read past each control frame."""
    await send_frame(link.egress, open_frame(name), timeout=_WAIT)
    at_serving = FrameReader()
    assert await read_frame(link.serving, at_serving, timeout=_WAIT) == Frame(OPEN, name.encode())
    await send_frame(link.serving, accept_frame(), timeout=_WAIT)
    at_egress = FrameReader()
    assert await read_frame(link.egress, at_egress, timeout=_WAIT) == Frame(ACCEPT)
    return at_egress.take_rest(), at_serving.take_rest()


@dataclass
class Stream:
    app_client: socket.socket  # the workload, connected to the egress
    app_server: socket.socket  # the endpoint, connected from the serving gateway
    egress: TunnelRelay
    serving: TunnelRelay
    runs: list[asyncio.Task[tuple[int, int]]]

    async def finish(self) -> list[tuple[int, int]]:
        return list(await asyncio.wait_for(asyncio.gather(*self.runs), _WAIT))

    async def close(self) -> None:
        await cancel_and_wait(*self.runs)
        self.app_client.close()
        self.app_server.close()


async def _stream(
    link: TlsLink,
    *,
    prefix: bytes = b"",
    bufsize: int | None = None,
    watch: RelayWatch | None = None,
) -> Stream:
    egress_rest, serving_rest = await _open(link)
    app_client, egress_in = socket_pair(HOST, bufsize)
    serving_out, app_server = socket_pair(HOST, bufsize)
    egress = TunnelRelay(egress_in, link.egress, watch, stream_is_client=True, read=egress_rest)
    serving = TunnelRelay(
        serving_out, link.serving, stream_is_client=False, prefix=prefix, read=serving_rest
    )
    runs = [spawn(egress.run(), name="egress"), spawn(serving.run(), name="serving")]
    return Stream(app_client, app_server, egress, serving, runs)


async def _exchange(
    s: Stream, up: list[bytes], down: list[bytes], *, client_first: bool
) -> tuple[bytes, bytes]:
    """One side sends and half-closes; only once the other has seen that EOF does it send
    and half-close in turn. What reached (the server, the client)."""

    async def send(sock: socket.socket, chunks: list[bytes]) -> None:
        for c in chunks:
            await poll_send(sock, c)
        sock.shutdown(socket.SHUT_WR)

    first, second = (s.app_client, s.app_server) if client_first else (s.app_server, s.app_client)
    to_second, to_first = (up, down) if client_first else (down, up)
    reading = spawn(poll_read(second), name="read-second")
    await send(first, to_second)
    got_second = await asyncio.wait_for(reading, _WAIT)
    reading = spawn(poll_read(first), name="read-first")
    await send(second, to_first)
    got_first = await asyncio.wait_for(reading, _WAIT)
    return (got_second, got_first) if client_first else (got_first, got_second)


def _still_pooled(link: TlsLink) -> bool:
    """The egress's pool takes the tunnel back and hands it out again (its liveness check)."""
    pool = TunnelPool(max_idle=1, idle_timeout=60.0, max_age=600.0, clock=lambda: 0.0)
    tunnel = Tunnel(tls=link.egress, key="east/gw", context=CLIENT_CTX, born=0.0)
    pool.give(tunnel)
    return pool.take("east/gw", CLIENT_CTX) is tunnel


async def _clean_stream(
    link: TlsLink, up: list[bytes], down: list[bytes], client_first: bool
) -> None:
    s = await _stream(link)
    try:
        at_server, at_client = await _exchange(s, up, down, client_first=client_first)
        assert hashlib.sha256(at_server).digest() == hashlib.sha256(b"".join(up)).digest()
        assert hashlib.sha256(at_client).digest() == hashlib.sha256(b"".join(down)).digest()
        totals = await s.finish()
        # both oriented (client → upstream, upstream → client), whichever side the stream is
        expected = (sum(map(len, up)), sum(map(len, down)))
        assert totals == [expected, expected]
        for relay in (s.egress, s.serving):
            assert relay.reusable and not relay.failed and relay.error is None
        # the stream sockets are closed, the tunnel's are open and idle
        assert s.egress.client.fileno() == -1 and s.serving.client.fileno() == -1
        assert link.egress.fileno() >= 0 and link.serving.fileno() >= 0
        assert link.egress.pending() == 0 and link.serving.pending() == 0
        assert _still_pooled(link)
    finally:
        await s.close()


@pytest.mark.parametrize(
    "client_first", [True, False], ids=["client-ends-first", "server-ends-first"]
)
def test_two_streams_cross_one_tunnel_one_after_another(run: Run, client_first: bool) -> None:
    async def main() -> None:
        link = await _link()
        try:
            up, down = os.urandom(300_000), os.urandom((1 << 20) + 5)
            await _clean_stream(link, [up], [down], client_first)
            # the same two TLS sockets carry the next stream, in the other order
            await _clean_stream(link, [b"second", os.urandom(20_000)], [], not client_first)
            await _clean_stream(link, [], [b"third"], client_first)
        finally:
            link.close()

    run(main())


@pytest.mark.parametrize(
    "size", [1, 16_379, 16_380, 16_381, 16_384, 65_539, 1 << 20], ids=lambda n: f"{n}B"
)
async def test_payloads_around_the_frame_size_arrive_whole(size: int) -> None:
    link = await _link()
    try:
        up, down = os.urandom(size), os.urandom(size + 7)
        await _clean_stream(link, [up], [down], client_first=True)
        await _clean_stream(link, [down], [up], client_first=False)
    finally:
        link.close()


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 2**32),
    up=st.lists(st.integers(1, 70_000), max_size=4),
    down=st.lists(st.integers(1, 70_000), max_size=4),
    client_first=st.booleans(),
    streams=st.integers(1, 3),
)
def test_any_payloads_in_any_chunks_over_reused_tunnels(
    seed: int, up: list[int], down: list[int], client_first: bool, streams: int
) -> None:
    rnd = random.Random(seed)

    async def main() -> None:
        link = await _link()
        try:
            for i in range(streams):
                ups = [rnd.randbytes(n) for n in up]
                downs = [rnd.randbytes(n) for n in down]
                await _clean_stream(link, ups, downs, client_first ^ bool(i % 2))
        finally:
            link.close()

    asyncio.run(main())


async def test_both_directions_at_once_end_cleanly_and_the_tunnel_is_reused() -> None:
    """Full duplex: both sides send, half-close and read at the same time (the FINs cross)."""
    link = await _link()
    try:
        for _ in range(2):
            s = await _stream(link)
            try:
                up, down = os.urandom(2 << 20), os.urandom(3 << 20)

                async def side(sock: socket.socket, data: bytes) -> bytes:
                    reading = spawn(read_to_eof(sock), name="read")
                    await send_all(sock, data)
                    sock.shutdown(socket.SHUT_WR)
                    return await reading

                at_server, at_client = await asyncio.wait_for(
                    asyncio.gather(side(s.app_server, down), side(s.app_client, up)), _WAIT
                )
                assert at_server == up and at_client == down
                assert await s.finish() == [(len(up), len(down))] * 2
                assert s.egress.reusable and s.serving.reusable
            finally:
                await s.close()
    finally:
        link.close()


async def test_a_tls_endpoint_behind_the_serving_relay() -> None:
    """The serving gateway's stream may be TLS (a re-originating endpoint): its records
    are read behind the frame header's gap, its EOF is a FIN frame, and back."""
    link = await _link()
    to_endpoint = await _link()  # .egress: the gateway's TLS client; .serving: the endpoint
    try:
        egress_rest, serving_rest = await _open(link)
        app_client, egress_in = socket_pair(HOST)
        egress = TunnelRelay(egress_in, link.egress, stream_is_client=True, read=egress_rest)
        serving = TunnelRelay(
            to_endpoint.egress, link.serving, stream_is_client=False, read=serving_rest
        )
        runs = [spawn(egress.run(), name="egress"), spawn(serving.run(), name="serving")]
        try:
            endpoint = to_endpoint.serving
            up, down = os.urandom(150_001), os.urandom(70_003)
            await poll_send(app_client, up)
            app_client.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := await asyncio.wait_for(poll_recv_tls(endpoint), _WAIT):
                got += chunk
            assert got == up
            await send_frame(endpoint, down, timeout=_WAIT)  # any bytes, sent whole
            socket.socket.shutdown(endpoint, socket.SHUT_WR)  # a FIN under TLS
            assert await asyncio.wait_for(poll_read(app_client), _WAIT) == down
            totals = await asyncio.wait_for(asyncio.gather(*runs), _WAIT)
            assert totals == [(len(up), len(down))] * 2
            assert egress.reusable and serving.reusable
        finally:
            await cancel_and_wait(*runs)
            app_client.close()
    finally:
        link.close()
        to_endpoint.close()


# -- one relay against a peer driven by hand --------------------------------------------


@dataclass
class Half:
    """A relay at one end of a tunnel; the test plays the gateway at the other end."""

    app: socket.socket  # the relay's stream peer (workload or endpoint)
    peer: ssl.SSLSocket  # the far end of the tunnel, driven by hand
    relay: TunnelRelay
    task: asyncio.Task[tuple[int, int]]
    link: TlsLink

    async def result(self) -> tuple[int, int]:
        return await asyncio.wait_for(self.task, _WAIT)


@pytest.fixture
async def halves() -> AsyncIterator[list[Half]]:
    made: list[Half] = []
    yield made
    for h in made:
        await cancel_and_wait(h.task)
        h.app.close()
        h.link.close()


async def _half(
    made: list[Half],
    *,
    stream_is_client: bool = True,
    prefix: bytes = b"",
    read: bytes = b"",
    watch: RelayWatch | None = None,
    bufsize: int | None = None,
) -> Half:
    link = await _link(bufsize)
    app, stream = socket_pair(HOST, bufsize)
    # the relay at the egress end (the tunnel's TLS client), or at the serving end
    mine, peer = (link.egress, link.serving) if stream_is_client else (link.serving, link.egress)
    relay = TunnelRelay(
        stream, mine, watch, stream_is_client=stream_is_client, prefix=prefix, read=read
    )
    h = Half(app, peer, relay, spawn(relay.run(), name="relay"), link)
    made.append(h)
    return h


@pytest.mark.parametrize("stream_is_client", [True, False])
async def test_totals_are_oriented_by_the_streams_role(
    halves: list[Half], stream_is_client: bool
) -> None:
    h = await _half(halves, stream_is_client=stream_is_client)
    await poll_send(h.app, b"seven!!")
    h.app.shutdown(socket.SHUT_WR)
    payload, sizes = await asyncio.wait_for(read_data_frames(h.peer), _WAIT)
    assert payload == b"seven!!" and sizes == [4 + 7]
    await send_frame(h.peer, data_frame(b"abc") + FIN_FRAME, timeout=_WAIT)
    assert await asyncio.wait_for(poll_read(h.app), _WAIT) == b"abc"
    totals = await h.result()
    # (stream → tunnel, tunnel → stream) for a client stream; reversed for an upstream
    assert totals == ((7, 3) if stream_is_client else (3, 7))
    assert h.relay.reusable


async def test_a_big_stream_goes_out_in_frames_of_one_record_then_of_four_at_most(
    halves: list[Half],
) -> None:
    h = await _half(halves)
    data = os.urandom(200_000)
    sending = spawn(poll_send(h.app, data), name="send")
    payload_task = spawn(read_data_frames(h.peer), name="frames")
    await asyncio.wait_for(sending, _WAIT)
    h.app.shutdown(socket.SHUT_WR)
    payload, sizes = await asyncio.wait_for(payload_task, _WAIT)
    assert payload == data
    assert sizes[0] <= BUFFER_SIZE  # header and payload fit one TLS record ...
    assert max(sizes) <= 4 * BUFFER_SIZE  # ... until the stream proves bulky: four
    await send_frame(h.peer, FIN_FRAME, timeout=_WAIT)
    assert await h.result() == (len(data), 0)


async def test_the_prefix_reaches_the_stream_before_any_tunnel_byte(
    halves: list[Half],
) -> None:
    proxy = b"PROXY TCP4 10.0.0.1 10.0.0.2 40000 8080\r\n"
    h = await _half(halves, stream_is_client=False, prefix=proxy, read=data_frame(b"early"))
    # the prefix and the read-ahead arrive before the peer sends anything more
    assert await asyncio.wait_for(poll_read(h.app, len(proxy) + 5), _WAIT) == proxy + b"early"
    await send_frame(h.peer, data_frame(b" and late") + FIN_FRAME, timeout=_WAIT)
    assert await asyncio.wait_for(poll_read(h.app), _WAIT) == b" and late"
    h.app.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(read_data_frames(h.peer), _WAIT) == (b"", [])
    assert await h.result() == (len(b"early and late"), 0)  # the prefix is not counted
    assert h.relay.reusable


async def test_the_prefix_goes_first_through_a_full_pair() -> None:
    link = await _link()
    s = await _stream(link, prefix=b"HEADER|")
    try:
        # before the workload sends a byte, the endpoint has the prefix
        assert await asyncio.wait_for(poll_read(s.app_server, 7), _WAIT) == b"HEADER|"
        at_server, at_client = await _exchange(s, [b"ping"], [b"pong"], client_first=True)
        assert (at_server, at_client) == (b"ping", b"pong")
        assert await s.finish() == [(4, 4), (4, 4)]
    finally:
        await s.close()
        link.close()


@pytest.mark.parametrize("cut", [0, 1, 2, 3], ids=lambda k: f"header-split-at-{k}")
async def test_bytes_read_with_the_control_frame_are_delivered_first(
    halves: list[Half], cut: int
) -> None:
    second = data_frame(b"abcde")
    h = await _half(halves, read=data_frame(b"0123456789") + second[:cut])
    assert await asyncio.wait_for(poll_read(h.app, 10), _WAIT) == b"0123456789"
    await send_frame(h.peer, second[cut:], timeout=_WAIT)  # the rest of the frame, alone
    await send_frame(h.peer, data_frame(b"xyz") + FIN_FRAME, timeout=_WAIT)
    assert await asyncio.wait_for(poll_read(h.app), _WAIT) == b"abcdexyz"
    h.app.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(read_data_frames(h.peer), _WAIT) == (b"", [])
    assert await h.result() == (0, 18)
    assert h.relay.reusable


@pytest.mark.parametrize("cut", [1, 2, 3], ids=lambda k: f"fin-split-at-{k}")
async def test_a_fin_split_between_read_ahead_and_the_tunnel_ends_the_direction(
    halves: list[Half], cut: int
) -> None:
    h = await _half(halves, read=data_frame(b"answer") + FIN_FRAME[:cut])
    assert await asyncio.wait_for(poll_read(h.app, 6), _WAIT) == b"answer"
    await send_frame(h.peer, FIN_FRAME[cut:], timeout=_WAIT)
    assert await asyncio.wait_for(poll_read(h.app), _WAIT) == b""  # the FIN: EOF
    h.app.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(read_data_frames(h.peer), _WAIT) == (b"", [])
    assert await h.result() == (0, 6)
    assert h.relay.reusable


async def test_read_ahead_may_end_inside_a_payload_or_hold_the_fin(
    halves: list[Half],
) -> None:
    # the read-ahead ends four bytes into a ten-byte payload
    h = await _half(halves, read=header(DATA, 10) + b"0123")
    assert await asyncio.wait_for(poll_read(h.app, 4), _WAIT) == b"0123"
    await send_frame(h.peer, b"456789" + FIN_FRAME, timeout=_WAIT)
    assert await asyncio.wait_for(poll_read(h.app), _WAIT) == b"456789"
    # the read-ahead is the whole answer: the stream gets it and its EOF at once
    g = await _half(halves, read=data_frame(b"all of it") + FIN_FRAME)
    assert await asyncio.wait_for(poll_read(g.app), _WAIT) == b"all of it"
    await poll_send(g.app, b"late question")
    g.app.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(read_data_frames(g.peer), _WAIT) == (b"late question", [17])
    assert await g.result() == (13, 9)
    assert g.relay.reusable


async def test_a_frame_larger_than_a_record_reaches_a_slow_reader_whole(
    halves: list[Half],
) -> None:
    """DATA frames may carry up to 16 MiB; the payload spans many reads, the stream blocks
    in between, and the FIN in the last record still comes after every byte."""
    h = await _half(halves)
    payload = os.urandom(3 << 20)
    sending = spawn(
        send_frame(h.peer, data_frame(payload) + FIN_FRAME, timeout=_WAIT), name="big-frame"
    )
    await asyncio.sleep(0.1)  # let the stream's socket fill before anyone reads
    assert await asyncio.wait_for(poll_read(h.app), _WAIT) == payload
    await asyncio.wait_for(sending, _WAIT)
    h.app.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(read_data_frames(h.peer), _WAIT) == (b"", [])
    assert await h.result() == (0, len(payload))
    assert h.relay.reusable


async def test_the_next_open_waiting_behind_a_fin_is_left_for_the_next_stream() -> None:
    """The egress may reuse the tunnel before the serving relay has seen its FIN: the next
    OPEN then waits right behind the FIN, and belongs to the next stream."""
    link = await _link()
    app, stream = socket_pair(HOST)
    try:
        nxt = "next.default.svc.east.atoll"
        for w in (data_frame(b"last words"), FIN_FRAME, open_frame(nxt)):  # records in the socket
            await send_frame(link.egress, w, timeout=_WAIT)
        app.shutdown(socket.SHUT_WR)  # the endpoint has nothing to say
        relay = TunnelRelay(stream, link.serving, stream_is_client=False)
        assert await asyncio.wait_for(relay.run(), _WAIT) == (10, 0)
        assert relay.reusable and relay.error is None
        assert await asyncio.wait_for(poll_read(app), _WAIT) == b"last words"
        assert await asyncio.wait_for(read_data_frames(link.egress), _WAIT) == (b"", [])
        reader = FrameReader()
        assert await read_frame(link.serving, reader, timeout=_WAIT) == Frame(OPEN, nxt.encode())
        assert reader.take_rest() == b""
    finally:
        app.close()
        link.close()


async def test_more_read_ahead_than_a_buffer_is_refused() -> None:
    link = await _link()
    app, stream = socket_pair(HOST)
    try:
        with pytest.raises(ValueError, match="read ahead"):
            TunnelRelay(stream, link.egress, stream_is_client=True, read=b"x" * (BUFFER_SIZE + 1))
    finally:
        for sock in (app, stream):
            sock.close()
        link.close()


# -- failures ---------------------------------------------------------------------------


def _assert_torn_down(relay: TunnelRelay) -> None:
    assert relay.failed and not relay.reusable
    assert relay.client.fileno() == -1 and relay.upstream.fileno() == -1


def _assert_stream_reset_tunnel_kept(relay: TunnelRelay) -> None:
    """The stream was reset, its socket is closed, the tunnel is open for the next."""
    assert relay.stream_reset and relay.reset and not relay.failed and relay.reusable
    assert relay.error is None  # an application going away is a reset, not a relay error
    assert relay.client.fileno() == -1 and relay.upstream.fileno() >= 0


@pytest.mark.parametrize("who", ["workload", "endpoint"])
async def test_a_stream_reset_resets_the_other_side_and_keeps_the_tunnel(who: str) -> None:
    """One application resets mid-stream: its relay ends its direction with RESET, the
    other relay resets its application (a failure must not look like a clean end) and
    answers RESET; both leave the tunnel open, and it carries the next stream."""
    link = await _link()
    s = await _stream(link)
    try:
        await poll_send(s.app_client, b"hello")
        assert await asyncio.wait_for(poll_read(s.app_server, 5), _WAIT) == b"hello"
        resetting, other = (
            (s.app_client, s.app_server) if who == "workload" else (s.app_server, s.app_client)
        )
        close_with_reset(resetting)
        await s.finish()
        for relay in (s.egress, s.serving):
            _assert_stream_reset_tunnel_kept(relay)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(poll_read(other), _WAIT)
        assert _still_pooled(link)
    finally:
        await s.close()
    try:
        await _clean_stream(link, [b"next"], [b"stream"], client_first=True)
    finally:
        link.close()


async def test_a_workload_gone_after_its_request_drops_the_reply_and_keeps_the_tunnel() -> None:
    """The load generator's end: the workload sends its request and half-closes (a FIN
    frame: its direction is over), then resets before the reply. The egress cannot send
    RESET after its FIN; it drops the reply up to the endpoint's FIN."""
    link = await _link()
    s = await _stream(link)
    try:
        await poll_send(s.app_client, b"GET /")
        s.app_client.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(poll_read(s.app_server), _WAIT) == b"GET /"
        close_with_reset(s.app_client)
        await asyncio.sleep(0.05)  # the reset reaches the egress's stream socket first
        await poll_send(s.app_server, b"x" * 100_000)
        s.app_server.shutdown(socket.SHUT_WR)
        await s.finish()
        _assert_stream_reset_tunnel_kept(s.egress)
        # the serving side saw FIN both ways: a clean stream for it
        assert s.serving.reusable and not s.serving.reset
        assert _still_pooled(link)
    finally:
        await s.close()
    try:
        await _clean_stream(link, [b"next"], [b"stream"], client_first=False)
    finally:
        link.close()


async def test_a_failed_stream_whose_data_keeps_coming_costs_the_tunnel() -> None:
    """Past ``DISCARD_LIMIT`` bytes dropped for a reset workload (its FIN already sent,
    so no RESET can stop the endpoint), the egress resets the tunnel instead."""
    link = await _link()
    s = await _stream(link)
    try:
        s.app_client.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(poll_read(s.app_server), _WAIT) == b""
        close_with_reset(s.app_client)
        await asyncio.sleep(0.05)

        async def download() -> None:  # then the endpoint's end: the serving relay's FIN
            await poll_send(s.app_server, b"x" * (2 * DISCARD_LIMIT))
            s.app_server.shutdown(socket.SHUT_WR)

        sending = spawn(download(), name="download")
        await s.finish()
        assert s.egress.failed and not s.egress.reusable and link.egress.fileno() == -1
        if not s.serving.failed:  # it had sent it all before the egress gave up: it
            # learns at its next read that the tunnel is gone
            assert await asyncio.wait_for(tunnel_is_gone(link.serving), _WAIT)
        with contextlib.suppress(OSError):
            await asyncio.wait_for(sending, _WAIT)
    finally:
        await s.close()
        link.close()


@pytest.mark.parametrize("ended", [False, True], ids=["streaming", "after-its-fin"])
async def test_a_reset_frame_resets_the_application_and_is_answered(
    halves: list[Half], ended: bool
) -> None:
    """The peer's RESET: what came before it is delivered, then the application sees a
    reset (never an EOF); the relay answers with its own RESET unless its direction
    had already ended with FIN, and keeps the tunnel."""
    h = await _half(halves)
    if ended:
        h.app.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(read_data_frames(h.peer), _WAIT) == (b"", [])
    await send_frame(h.peer, data_frame(b"partial answer"), timeout=_WAIT)
    assert await asyncio.wait_for(poll_read(h.app, 14), _WAIT) == b"partial answer"
    await send_frame(h.peer, RESET_FRAME, timeout=_WAIT)
    await h.result()
    _assert_stream_reset_tunnel_kept(h.relay)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(poll_read(h.app), _WAIT)
    if not ended:
        assert await asyncio.wait_for(read_direction(h.peer), _WAIT) == (b"", [], RESET)
    h.peer.setblocking(False)
    with pytest.raises(ssl.SSLWantReadError):  # nothing else follows: the tunnel is idle
        h.peer.recv(1)


def _frame_in_flight(relay: TunnelRelay) -> bool:
    pumps = relay._pumps
    return pumps is not None and isinstance(pumps[0], _CopyPump) and pumps[0].pending is not None


async def _stuck_in_flight(relay: TunnelRelay) -> bool:
    """A frame in flight that stays there: the peer's buffers are full, not just the
    send queue's low-water mark reached for a moment (it drains as ACKs come back)."""
    before = relay.totals()
    if not _frame_in_flight(relay):
        return False
    await asyncio.sleep(0.2)
    return _frame_in_flight(relay) and relay.totals() == before


async def test_an_answering_reset_waits_for_the_frame_in_flight(halves: list[Half]) -> None:
    """The peer's RESET arrives while the relay's frame is stuck in flight (the peer does
    not read: TLS holds part of the frame). The answer waits until that frame is
    complete — TLS must repeat an unfinished write whole — so the peer reads valid
    frames up to the RESET, and the tunnel is kept; meanwhile the workload is not
    half-closed, it is reset at the end."""
    h = await _half(halves, bufsize=SMALL)
    payload = b"y" * (4 * 1024 * 1024)  # far more than the small buffers on the way
    writing = spawn(poll_send(h.app, payload), name="write")
    # the tunnel's buffers fill up and the relay holds a frame it could not finish
    # (white-box: from outside, an idle moment between frames looks the same)
    await eventually("a frame stuck in flight", lambda: _stuck_in_flight(h.relay), _WAIT)
    await send_frame(h.peer, RESET_FRAME, timeout=_WAIT)
    await asyncio.sleep(0.1)  # the relay has read it, and cannot answer yet
    assert not h.task.done()
    # nor has the workload seen an EOF: a FIN ahead of the reset would let it take a
    # truncated stream for a complete one
    with pytest.raises(BlockingIOError):
        h.app.recv(1)
    got, sizes, ending = await asyncio.wait_for(read_direction(h.peer), _WAIT)
    assert ending == RESET and got == payload[: len(got)] and len(sizes) > 0
    await h.result()
    _assert_stream_reset_tunnel_kept(h.relay)
    with contextlib.suppress(OSError):  # the workload was reset mid-write
        await asyncio.wait_for(writing, _WAIT)


VIOLATIONS = [
    pytest.param([open_frame(NAME)], "frame type 1", id="open-mid-stream"),
    pytest.param([accept_frame()], "frame type 2", id="accept-mid-stream"),
    pytest.param([refuse_frame("busy", "x")], "frame type 3", id="refuse-mid-stream"),
    pytest.param([header(9, 2) + b"zz"], "frame type 9", id="unknown-type"),
    pytest.param([header(0, 0)], "frame type 0", id="type-0"),
    pytest.param([header(DATA, 0)], "frame type 4", id="empty-data"),
    pytest.param([header(FIN, 2) + b"zz"], "frame type 5", id="fin-with-payload"),
    pytest.param([FIN_FRAME + data_frame(b"z")], "bytes after FIN", id="bytes-after-fin"),
    pytest.param([header(RESET, 1) + b"z"], "frame type 6", id="reset-with-payload"),
    pytest.param([RESET_FRAME + data_frame(b"z")], "bytes after RESET", id="bytes-after-reset"),
    pytest.param([header(9, 0)[:2], header(9, 0)[2:]], "frame type 9", id="split-bad-header"),
    pytest.param([data_frame(b"ok") + header(0x7F, 0)], "frame type 127", id="after-data"),
]


@pytest.mark.parametrize(("writes", "what"), VIOLATIONS)
async def test_a_protocol_violation_fails_the_relay_with_eproto(
    halves: list[Half], writes: list[bytes], what: str
) -> None:
    h = await _half(halves)
    await send_frame(h.peer, data_frame(b"hello"), timeout=_WAIT)
    assert await asyncio.wait_for(poll_read(h.app, 5), _WAIT) == b"hello"
    for w in writes:  # each its own TLS record
        await send_frame(h.peer, w, timeout=_WAIT)
    await h.result()
    assert h.relay.error is not None and h.relay.error.errno == errno.EPROTO
    assert what in str(h.relay.error)
    _assert_torn_down(h.relay)
    # both ends are reset: the workload and the peer gateway
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(poll_read(h.app), _WAIT)
    assert await asyncio.wait_for(tunnel_is_gone(h.peer), _WAIT)


async def test_a_violation_from_the_egress_fails_the_serving_relay(
    halves: list[Half],
) -> None:
    h = await _half(halves, stream_is_client=False)
    await send_frame(h.peer, header(0x42, 1) + b"?", timeout=_WAIT)
    await h.result()
    assert h.relay.error is not None and h.relay.error.errno == errno.EPROTO
    _assert_torn_down(h.relay)


@pytest.mark.parametrize("how", ["fin", "close_notify", "reset"])
async def test_the_tunnel_closing_mid_stream_resets_the_stream(
    halves: list[Half], how: str
) -> None:
    h = await _half(halves)
    await send_frame(h.peer, data_frame(b"hello"), timeout=_WAIT)
    assert await asyncio.wait_for(poll_read(h.app, 5), _WAIT) == b"hello"
    if how == "close_notify":
        # sent; it would now wait for the relay's own close_notify
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
            h.peer.unwrap()
    elif how == "reset":
        abort(h.peer)
    h.peer.close()
    await h.result()
    _assert_torn_down(h.relay)
    assert h.relay.error is None  # a vanished peer is a reset, not a relay error
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(poll_read(h.app), _WAIT)


async def test_an_idle_stream_times_out_and_the_tunnel_is_not_reused() -> None:
    link = await _link()
    watch = RelayWatch(idle_timeout=0.3, tick=0.1)
    s = await _stream(link, watch=watch)
    try:
        await poll_send(s.app_client, b"hello")
        assert await asyncio.wait_for(poll_read(s.app_server, 5), _WAIT) == b"hello"
        await asyncio.wait_for(s.runs[0], _WAIT)
        assert watch.timed_out
        assert not s.egress.reusable and link.egress.fileno() == -1
        await asyncio.wait_for(s.runs[1], _WAIT)  # the serving side sees the tunnel go
        assert not s.serving.reusable and link.serving.fileno() == -1
    finally:
        await s.close()
        link.close()


async def test_a_cancelled_stream_does_not_leave_a_reusable_tunnel() -> None:
    link = await _link()
    s = await _stream(link)
    try:
        await poll_send(s.app_client, b"hello")
        assert await asyncio.wait_for(poll_read(s.app_server, 5), _WAIT) == b"hello"
        await cancel_and_wait(s.runs[0])  # a drain deadline
        assert not s.egress.reusable and link.egress.fileno() == -1
        await asyncio.wait_for(s.runs[1], _WAIT)
        assert s.serving.failed and not s.serving.reusable
    finally:
        await s.close()
        link.close()


# -- back-pressure ----------------------------------------------------------------------


def _buffered_capacity(*socks: socket.socket) -> int:
    return sum(
        s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        + s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        for s in socks
    )


@pytest.mark.parametrize("towards", ["endpoint", "workload"])
async def test_a_reader_that_does_not_read_stops_the_sender(towards: str) -> None:
    """Back-pressure: with every socket buffer small and locked, 8 MiB cannot all be
    accepted while nobody reads — the relays hold a buffer each, not the stream."""
    link = await _link(SMALL)
    s = await _stream(link, bufsize=SMALL)
    try:
        sender, reader = (
            (s.app_client, s.app_server) if towards == "endpoint" else (s.app_server, s.app_client)
        )
        # every socket the bytes can wait in, and what the relays and TLS may hold
        capacity = (
            _buffered_capacity(
                s.app_client,
                s.egress.client,
                link.egress,
                link.serving,
                s.serving.client,
                s.app_server,
            )
            + 16 * BUFFER_SIZE
        )
        assert capacity < (2 << 20)  # the setup is meaningful: far less than 8 MiB
        total = 8 << 20
        data = os.urandom(total)
        sent = stalled = 0
        while sent < total and stalled < 25:
            try:
                sent += sender.send(data[sent : sent + (1 << 16)])
                stalled = 0
            except BlockingIOError:
                stalled += 1
                await asyncio.sleep(0.02)
        assert sent < total, "the relays kept accepting bytes nobody read"
        assert sent <= capacity
        # the reader drains: everything arrives, in order, and the relays finish cleanly
        reading = spawn(poll_read(reader), name="drain")
        await poll_send(sender, data[sent:])
        sender.shutdown(socket.SHUT_WR)
        got = await asyncio.wait_for(reading, _WAIT)
        assert len(got) == total and got == data
        reader.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(poll_read(sender), _WAIT) == b""
        totals = await s.finish()
        expected = (total, 0) if towards == "endpoint" else (0, total)
        assert totals == [expected, expected]
        assert s.egress.reusable and s.serving.reusable
    finally:
        await s.close()
        link.close()


# -- control frames on the tunnel (tunnelio) --------------------------------------------


@pytest.fixture
async def link() -> AsyncIterator[TlsLink]:
    made = await _link()
    yield made
    made.close()


async def test_a_refused_open_leaves_the_tunnel_usable(link: TlsLink) -> None:
    await send_frame(link.egress, open_frame("nothing.here.atoll"), timeout=_WAIT)
    at_serving = FrameReader()
    frame = await read_frame(link.serving, at_serving, timeout=_WAIT)
    assert frame is not None and frame.server_name() == "nothing.here.atoll"
    await send_frame(link.serving, refuse_frame("unknown_service", "no such export"), timeout=5)
    refused = await read_frame(link.egress, FrameReader(), timeout=_WAIT)
    assert refused is not None and refused.type == REFUSE
    assert refused.refusal() == ("unknown_service", "no such export")
    await _clean_stream(link, [b"after a refusal"], [b"fine"], client_first=True)


async def test_read_frame_sees_the_peer_close(link: TlsLink) -> None:
    link.serving.close()
    assert await read_frame(link.egress, FrameReader(), timeout=_WAIT) is None


async def test_read_frame_times_out(link: TlsLink) -> None:
    with pytest.raises(TimeoutError):
        await read_frame(link.egress, FrameReader(), timeout=0.1)


async def test_read_frame_raises_on_a_frame_that_cannot_be_valid(link: TlsLink) -> None:
    await send_frame(link.serving, data_frame(b"too early"), timeout=_WAIT)
    with pytest.raises(TunnelProtocolError):
        await read_frame(link.egress, FrameReader(), timeout=_WAIT)


async def test_read_frame_gives_up_when_told_to_stop_and_is_woken(link: TlsLink) -> None:
    stopping = False
    wake: set[asyncio.Future[None]] = set()
    waiting = spawn(
        read_frame(link.serving, FrameReader(), timeout=None, stop=lambda: stopping, wake=wake),
        name="idle-tunnel",
    )
    try:
        for _ in range(100):  # until it waits
            if wake:
                break
            await asyncio.sleep(0.01)
        assert wake and not waiting.done()
        stopping = True  # a drain: stop, and wake the waits up
        for fut in list(wake):
            fut.set_result(None)
        assert await asyncio.wait_for(waiting, _WAIT) is None
        # stop() is asked before every wait: a stopped reader does not wait at all
        assert (
            await read_frame(link.serving, FrameReader(), timeout=None, stop=lambda: True) is None
        )
    finally:
        await cancel_and_wait(waiting)
