"""Shared helpers of the gateway tests: loopback sockets, TLS, metrics, the access log, peers.

The gateway is tested on real sockets over loopback, and several test modules
need the same small tools. They live here, as :mod:`tests.polling` does for
waiting, instead of being imported from one test module into another (a unit
test must not depend on an integration module):

* **event loops** — :func:`runner_of` runs a coroutine on a fresh asyncio or
  uvloop loop (:data:`LOOPS`: the gateway runs on both), for tests that are
  parametrized over the loop;
* **sockets** — :func:`free_port`; connected TCP pairs made synchronously
  (:func:`tcp_pair`, :func:`socket_pair`) or through the gateway's own connect
  path (:func:`connected_pair`); closing with a reset instead of a FIN
  (:func:`close_with_reset`, :func:`reset_connection`);
* **I/O on non-blocking sockets** — through the event loop (:func:`send_all`,
  :func:`read_to_eof`), or through the gateway's
  :class:`~atoll_gateway.poller.Poller` (:func:`poll_send`, :func:`poll_read`,
  :func:`poll_recv_tls`), so that the same scenario runs under asyncio and uvloop;
* **TLS and tunnels** — :func:`relay_contexts`, a server/client pair of one
  throw-away SPIFFE domain for relays and tunnels driven without a gateway;
  :func:`tls_link`, a TLS connection with both ends in the test (a pooled
  tunnel), and the tools of a test that plays one end of a tunnel by hand
  (:func:`data_frame`, :func:`read_data_frames`, :func:`read_direction`,
  :func:`tunnel_is_gone`);
* **metrics** — :func:`metric_value` and named views of the gateway's series;
* **the access log** — :func:`access_lines` reads the ``atoll.gateway.access``
  records pytest captured as :class:`AccessLine`, with views per listener;
* **workloads and clients** — :class:`Echo`, a plain-TCP echo workload, and
  one-connection clients (:func:`exchange`, :func:`nothing_back`, :func:`ask`,
  :func:`http_get`, :class:`HeldConnection`);
* **gateways** — :func:`federation` (the state a sync client would hold for an
  importing cluster), :func:`serving_gateway` and :func:`importing_gateway`.

Fixtures stay in the test modules: everything here is a plain function or class.
Self-signed Web PKI certificates are in :mod:`tests.certkit`; SPIFFE CAs and SVIDs
in :class:`atoll_gateway.testing.TestPki`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import ssl
import struct
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pytest
import uvloop
from prometheus_client import REGISTRY

from atoll.aio import cancel_and_wait, spawn
from atoll.model import (
    Cluster,
    ClusterSpec,
    ImportTarget,
    Metadata,
    Resource,
    ServiceImport,
    ServiceImportSpec,
    ServicePort,
)
from atoll_agent.registry import CatalogSnapshot
from atoll_gateway.balancer import Endpoint
from atoll_gateway.config import GatewayConfig, RouteConfig
from atoll_gateway.identity import StaticSource
from atoll_gateway.node import GatewayNode
from atoll_gateway.poller import poller
from atoll_gateway.testing import StaticCatalog, TestPki, catalog_of, held_state
from atoll_gateway.tlsio import connect_socket, handshake
from atoll_gateway.tunnelproto import DATA, FIN, RESET, header
from atoll_trust.tls import build_client_context, build_server_context
from tests.polling import eventually

__all__ = [
    "LOOPS",
    "RELAY_DOMAIN",
    "RELAY_SERVER_NAME",
    "WAIT",
    "AccessLine",
    "Address",
    "Echo",
    "HeldConnection",
    "Run",
    "TlsLink",
    "access_lines",
    "ask",
    "close_with_reset",
    "closed_tunnels",
    "connected_pair",
    "data_frame",
    "egress_lines",
    "exchange",
    "federation",
    "free_port",
    "handshake_failures",
    "handshakes",
    "http_get",
    "idle_tunnels",
    "importing_gateway",
    "metric_value",
    "nothing_back",
    "poll_read",
    "poll_recv_tls",
    "poll_send",
    "poll_wait",
    "pooled",
    "read_data_frames",
    "read_direction",
    "read_to_eof",
    "refused_connections",
    "relay_contexts",
    "reset_connection",
    "runner_of",
    "send_all",
    "served_streams",
    "serving_gateway",
    "socket_pair",
    "stream_counts",
    "tcp_pair",
    "tls_link",
    "tunnel_is_gone",
    "tunnel_streams",
    "upstream_failures",
]

T = TypeVar("T")
Address = tuple[str, int]
#: how long one poller wait may take before a helper gives up (a hung test fails)
WAIT = 20.0
#: SO_LINGER on with a zero timeout: close() sends a reset, not a FIN
_LINGER_RESET = struct.pack("ii", 1, 0)


# -- event loops ------------------------------------------------------------------------

#: the event loops the gateway runs on (``--loop``)
LOOPS = ("asyncio", "uvloop")


class Run(Protocol):
    """Runs a coroutine to completion on an event loop of its own (see :func:`runner_of`)."""

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T: ...


def runner_of(loop: str) -> Run:
    """A function that runs a coroutine to completion on a fresh loop of kind ``loop``."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = (
        uvloop.new_event_loop if loop == "uvloop" else None
    )

    def run(coro: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)

    return run


# -- sockets ----------------------------------------------------------------------------


def free_port(host: str) -> int:
    """A TCP port that was free on ``host`` a moment ago (for a listener that must be
    named before it starts)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tcp_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A connected non-blocking pair (connecting side, accepted side) through ``listener``,
    made synchronously: no loop or poller registration per socket."""
    out = socket.create_connection(listener.getsockname())
    try:
        inner, _ = listener.accept()
    except BaseException:
        out.close()
        raise
    for s in (out, inner):
        s.setblocking(False)
    return out, inner


def _lock_buffers(sock: socket.socket, size: int) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def socket_pair(host: str, bufsize: int | None = None) -> tuple[socket.socket, socket.socket]:
    """A connected non-blocking TCP pair on ``host`` (connecting side, accepted side) with
    Nagle off; ``bufsize`` sets both sockets' send and receive buffers, which also locks
    them (no autotuning to many MiB)."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if bufsize is not None:
            _lock_buffers(lst, bufsize)  # inherited by the accepted socket
        lst.bind((host, 0))
        lst.listen(16)
        out, inner = tcp_pair(lst)
    finally:
        lst.close()
    if bufsize is not None:
        _lock_buffers(out, bufsize)
    out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inner.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return out, inner


async def connected_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking TCP sockets on ``host`` (accepted side, connecting side),
    the connecting one made by the gateway's :func:`~atoll_gateway.tlsio.connect_socket`."""
    loop = asyncio.get_running_loop()
    lst = socket.create_server((host, 0))
    lst.setblocking(False)
    try:
        port = lst.getsockname()[1]
        connecting = spawn(connect_socket(Endpoint(host, port)), name="connect")
        accepted, _ = await loop.sock_accept(lst)
        accepted.setblocking(False)
        return accepted, await connecting
    finally:
        lst.close()


def close_with_reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER 0), not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s connection with a TCP reset (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


# -- I/O on non-blocking sockets --------------------------------------------------------


async def send_all(sock: socket.socket, data: bytes) -> None:
    """Send all of ``data`` through the event loop (``loop.sock_sendall``)."""
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def read_to_eof(sock: socket.socket) -> bytes:
    """Everything up to EOF, read through the event loop; a reset raises."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 16):
        out += chunk
    return bytes(out)


async def poll_wait(sock: socket.socket, *, write: bool = False, timeout: float = WAIT) -> None:
    """Until ``sock`` is readable (or writable), through the loop's poller."""
    await poller().wait(sock.fileno(), write=write, timeout=timeout)


async def poll_send(sock: socket.socket, data: bytes) -> None:
    """Send all of ``data`` on a non-blocking socket, plain or TLS, waiting on the poller."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except (BlockingIOError, ssl.SSLWantWriteError):
            await poll_wait(sock, write=True)
        except ssl.SSLWantReadError:
            await poll_wait(sock)


async def poll_read(sock: socket.socket, limit: int | None = None) -> bytes:
    """Up to EOF, or exactly ``limit`` bytes (:class:`EOFError` if the EOF comes first),
    from a plain non-blocking socket; a reset raises :class:`ConnectionResetError`."""
    data = bytearray()
    while limit is None or len(data) < limit:
        try:
            chunk = sock.recv(1 << 16 if limit is None else limit - len(data))
        except BlockingIOError:
            await poll_wait(sock)
            continue
        if not chunk:
            if limit is not None:
                raise EOFError(f"EOF after {len(data)} of {limit} bytes")
            break
        data += chunk
    return bytes(data)


async def poll_recv_tls(tls: ssl.SSLSocket) -> bytes:
    """One read from a non-blocking TLS socket (b"" at the peer's close_notify)."""
    while True:
        try:
            return tls.recv(1 << 16)
        except ssl.SSLWantReadError:
            await poll_wait(tls)
        except ssl.SSLWantWriteError:
            await poll_wait(tls, write=True)
        except ssl.SSLZeroReturnError:
            return b""


# -- TLS and tunnels --------------------------------------------------------------------

RELAY_DOMAIN = "relay.test"
#: the server name clients of :func:`relay_contexts` send (SPIFFE contexts check no host name)
RELAY_SERVER_NAME = "gw.relay.test"


@functools.cache
def _relay_pki() -> TestPki:
    return TestPki(RELAY_DOMAIN)


def relay_contexts(
    *, minimum_version: ssl.TLSVersion | None = None
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A new (server, client) context pair for one gateway SVID of :data:`RELAY_DOMAIN`,
    each side trusting that domain.

    Every call mints a new SVID, so two calls give equal-looking but distinct
    contexts (what a rotation looks like). Both set ``OP_IGNORE_UNEXPECTED_EOF``:
    an EOF without close_notify reads as an EOF, not as an error.
    """
    pki = _relay_pki()
    svid = pki.svid(RELAY_DOMAIN, "gw")
    bundles = pki.bundles(RELAY_DOMAIN)
    own = bundles.get(svid.spiffe_id.trust_domain)
    assert own is not None
    server, client = build_server_context(svid, bundles), build_client_context(svid, own)
    for ctx in (server, client):
        ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
        if minimum_version is not None:
            ctx.minimum_version = minimum_version
    return server, client


@dataclass
class TlsLink:
    """A TLS connection over loopback with both ends in the test: ``egress`` is the TLS
    client's end, ``serving`` the TLS server's (the two ends of a pooled tunnel)."""

    egress: ssl.SSLSocket
    serving: ssl.SSLSocket

    def close(self) -> None:
        self.egress.close()
        self.serving.close()


async def tls_link(
    host: str,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    *,
    bufsize: int | None = None,
) -> TlsLink:
    """A :func:`socket_pair` under TLS, both ends handshaken by the gateway's
    :func:`~atoll_gateway.tlsio.handshake` (the client sends :data:`RELAY_SERVER_NAME`)."""
    out, inner = socket_pair(host, bufsize)
    serving = server_ctx.wrap_socket(inner, server_side=True, do_handshake_on_connect=False)
    egress = client_ctx.wrap_socket(
        out, server_hostname=RELAY_SERVER_NAME, do_handshake_on_connect=False
    )
    await asyncio.wait_for(asyncio.gather(handshake(serving), handshake(egress)), WAIT)
    return TlsLink(egress, serving)


def data_frame(payload: bytes) -> bytes:
    """A DATA frame of the tunnel protocol carrying ``payload``."""
    return header(DATA, len(payload)) + payload


async def read_data_frames(tls: ssl.SSLSocket) -> tuple[bytes, list[int]]:
    """What a relay sends to a hand-driven peer: the DATA payloads up to the FIN, and the
    size of every frame (one frame per TLS record, the relay's contract)."""
    payload, sizes, ending = await read_direction(tls)
    assert ending == FIN, "the direction ended with RESET, not FIN"
    return payload, sizes


async def read_direction(tls: ssl.SSLSocket) -> tuple[bytes, list[int], int]:
    """One direction of a stream as a hand-driven peer reads it: the DATA payloads, the
    size of every frame, and the ending's type (FIN or RESET), which must come alone
    and last."""
    buf, out = bytearray(), bytearray()
    sizes: list[int] = []
    while True:
        chunk = await poll_recv_tls(tls)
        assert chunk, "the tunnel ended before the direction did"
        buf += chunk
        while len(buf) >= 4:
            (word,) = struct.unpack_from(">I", buf)
            kind, length = word >> 24, word & 0xFFFFFF
            if kind in (FIN, RESET):
                assert length == 0 and len(buf) == 4, "the ending is alone and last"
                return bytes(out), sizes, kind
            assert kind == DATA and length > 0
            if len(buf) < 4 + length:
                break
            out += buf[4 : 4 + length]
            sizes.append(4 + length)
            del buf[: 4 + length]


async def tunnel_is_gone(tls: ssl.SSLSocket) -> bool:
    """The far end of a tunnel sees it end (a reset, or an EOF) rather than more bytes."""
    try:
        return await poll_recv_tls(tls) == b""
    except (ConnectionResetError, ssl.SSLEOFError):
        return True


# -- metrics ----------------------------------------------------------------------------


def metric_value(name: str, **labels: str) -> float:
    """One sample of the default registry (0.0 before it exists: a labelled series
    appears at its first increment)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def handshakes(resumed: str | None = None) -> float:
    """Server-side handshakes on gateways' TLS ports: resumed (``"true"``), full
    (``"false"``) or both (None)."""
    flags = ("true", "false") if resumed is None else (resumed,)
    return sum(
        metric_value(
            "atoll_gateway_tls_handshakes_total", listener="inbound", role="server", resumed=r
        )
        for r in flags
    )


def handshake_failures(reason: str, *, listener: str = "inbound") -> float:
    """Connections a listener closed before or at the handshake, for ``reason``."""
    return metric_value("atoll_gateway_handshake_failures_total", listener=listener, reason=reason)


def refused_connections(reason: str = "connection_limit", *, listener: str = "inbound") -> float:
    """Connections a listener refused outright (by default: at its connection limit)."""
    return metric_value("atoll_gateway_refused_total", listener=listener, reason=reason)


def upstream_failures(reason: str, *, listener: str, cluster: str) -> float:
    """Upstreams of ``cluster`` a listener could not have, for ``reason``."""
    return metric_value(
        "atoll_gateway_upstream_failures_total",
        listener=listener,
        destination_cluster=cluster,
        reason=reason,
    )


def tunnel_streams(role: str, reused: str) -> float:
    """Streams opened on pooled tunnels by ``role`` (``server`` or ``client``), on a
    reused tunnel (``"true"``) or a new one (``"false"``)."""
    return metric_value("atoll_gateway_tunnel_streams_total", role=role, reused=reused)


def stream_counts() -> list[float]:
    """Streams opened on pooled tunnels: server new, server reused, client new, client reused."""
    kinds = [(role, reused) for role in ("server", "client") for reused in ("false", "true")]
    return [tunnel_streams(role, reused) for role, reused in kinds]


def idle_tunnels(role: str = "egress") -> float:
    """Idle pooled tunnels: held by egresses (``egress``) or served and waiting (``server``)."""
    return metric_value("atoll_gateway_tunnels_idle", role=role)


# -- the access log ---------------------------------------------------------------------


@dataclass(frozen=True)
class AccessLine:
    """One access-log line (the fields the tests read)."""

    listener: str
    mode: str | None
    client: str
    service: str | None
    destination: str
    outcome: str
    detail: str
    bytes_to_upstream: int


def access_lines(caplog: pytest.LogCaptureFixture) -> list[AccessLine]:
    """Every ``atoll.gateway.access`` line captured so far (the test sets that logger to
    INFO), oldest first."""
    out = []
    for r in caplog.records:
        if r.name != "atoll.gateway.access":
            continue
        f = vars(r)  # the structured fields arrive as record attributes (``extra``)
        out.append(
            AccessLine(
                listener=f["listener"],
                mode=f["mode"],
                client=f["client"],
                service=f["service"],
                destination=f["destination_cluster"],
                outcome=f["outcome"],
                detail=f["detail"],
                bytes_to_upstream=f["bytes_to_upstream"],
            )
        )
    return out


def served_streams(caplog: pytest.LogCaptureFixture, cluster: str = "east") -> list[AccessLine]:
    """The stream lines of ``cluster``'s gateway (per-connection tunnels log the same way).
    A stream's ``client`` is the address of the tunnel that carried it."""
    return [
        ln
        for ln in access_lines(caplog)
        if ln.listener == "inbound" and ln.mode == "terminate" and ln.destination == cluster
    ]


def closed_tunnels(caplog: pytest.LogCaptureFixture, cluster: str = "east") -> list[AccessLine]:
    """The pooled tunnels ``cluster``'s gateway has closed (``detail``: ``N stream(s)``)."""
    return [
        ln
        for ln in access_lines(caplog)
        if ln.listener == "inbound" and ln.mode == "tunnel" and ln.destination == cluster
    ]


def egress_lines(caplog: pytest.LogCaptureFixture) -> list[AccessLine]:
    """The lines of egress listeners (one per client connection)."""
    return [ln for ln in access_lines(caplog) if ln.listener == "egress"]


async def pooled(node: GatewayNode, n: int) -> None:
    """Until ``node``'s egress holds exactly ``n`` idle tunnels."""
    await eventually(f"{n} idle tunnel(s) in the pool", lambda: len(node.runtime.tunnels) == n, 10)


# -- workloads and clients --------------------------------------------------------------


class Echo:
    """A plain-TCP workload on ``host``: ``<tag>|`` first, then every byte it reads, until
    EOF; a read holding ``!reset`` makes it reset the connection instead."""

    def __init__(self, tag: str, *, host: str) -> None:
        self.tag = f"{tag}|".encode()
        self.host = host
        self.server: asyncio.Server | None = None

    async def start(self) -> Address:
        self.server = await asyncio.start_server(self._handle, self.host, 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.tag)
            while chunk := await reader.read(1 << 16):
                if b"!reset" in chunk:
                    reset_connection(writer)
                    return
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def exchange(host: str, port: int, payload: bytes = b"ping") -> bytes:
    """One client connection: send ``payload`` and EOF, read to EOF (concurrently: a long
    echo would otherwise fill every buffer and stall)."""
    reader, writer = await asyncio.open_connection(host, port)
    got = spawn(reader.read(), name="client-read")
    try:
        async with asyncio.timeout(15):
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            return await got
    finally:
        await cancel_and_wait(got)
        writer.close()


async def nothing_back(host: str, port: int) -> bytes:
    """Connect, send nothing, read what comes back (b"" when the peer closes, or resets)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(15):
            return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def ask(host: str, port: int, line: bytes) -> bytes:
    """Send one line, read until the server closes (the client never half-closes)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(line)
        async with asyncio.timeout(15):
            return await reader.read()
    finally:
        writer.close()


async def http_get(host: str, port: int) -> dict[str, str]:
    """An HTTP/1.1 request to the demo server (which closes after its answer): its JSON."""
    data = await ask(host, port, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    return dict(json.loads(body))


@dataclass
class HeldConnection:
    """A client connection to an :class:`Echo` whose stream is established and held open
    mid-way."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(
        cls, host: str, port: int, first: bytes, tag: bytes = b"east|"
    ) -> HeldConnection:
        """Connect, send ``first`` and wait for its echo behind ``tag``."""
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(first)
        await writer.drain()
        async with asyncio.timeout(15):
            assert await reader.readexactly(len(tag) + len(first)) == tag + first
        return cls(reader, writer)

    async def finish(self, rest: bytes) -> bytes:
        """Send the rest and EOF; what came back after the first echo."""
        got = spawn(self.reader.read(), name="held-read")
        try:
            async with asyncio.timeout(15):
                self.writer.write(rest)
                await self.writer.drain()
                self.writer.write_eof()
                return await got
        finally:
            await cancel_and_wait(got)
            self.writer.close()


# -- gateways ---------------------------------------------------------------------------


def federation(
    ports: Mapping[str, int],
    gateways: Mapping[str, Address],
    *,
    port_name: str = "tcp",
    importer: str = "west",
) -> list[Resource]:
    """Every service of ``ports`` (``"ns/name"`` → service port) imported by ``importer``
    from every cluster of ``gateways`` (cluster → its gateway's address), all healthy in
    region ``r1``; no TrafficPolicy (round robin: with two clusters each decision lists
    both)."""
    out: list[Resource] = []
    for key, port in ports.items():
        ns, name = key.split("/")
        targets = [
            ImportTarget(cluster=c, region="r1", addresses=["10.9.9.9"], endpoints_healthy=1,
                         endpoints_total=1, healthy=True)
            for c in gateways
        ]  # fmt: skip
        out.append(
            ServiceImport(
                metadata=Metadata(name=name, namespace=ns),
                spec=ServiceImportSpec(
                    ports=[ServicePort(name=port_name, port=port)], targets=targets
                ),
            )
        )
    for c, (host, port) in gateways.items():
        spec = ClusterSpec(region="r1", addresses={"gateway": f"{host}:{port}"})
        out.append(Cluster(metadata=Metadata(name=c), spec=spec))
    out.append(Cluster(metadata=Metadata(name=importer), spec=ClusterSpec(region="r2")))
    return out


def serving_gateway(
    cluster: str,
    source: StaticSource,
    *,
    listen: str,
    services: Mapping[str, RouteConfig],
    catalog: CatalogSnapshot,
) -> GatewayNode:
    """A gateway of ``cluster`` exporting ``catalog`` with ``services``' routes, its
    listeners started on ``listen``."""
    node = GatewayNode(
        GatewayConfig(cluster=cluster, listen=listen, services=dict(services)),
        catalog=StaticCatalog(),
        source=source,
    )
    node.set_catalog(catalog)
    node.start_listeners()
    return node


def importing_gateway(
    cluster: str,
    source: StaticSource,
    *,
    listen: str,
    egress_host: str,
    held: Iterable[Resource],
) -> GatewayNode:
    """A gateway of ``cluster`` that exports nothing and holds ``held`` (its imports get
    egress listeners on ``egress_host``), its listeners started on ``listen``."""
    node = GatewayNode(
        GatewayConfig(cluster=cluster, listen=listen, egress_host=egress_host),
        catalog=StaticCatalog(),
        source=source,
    )
    node.set_catalog(catalog_of({}))
    node.start_listeners()
    node.set_held(held_state(held))
    return node
