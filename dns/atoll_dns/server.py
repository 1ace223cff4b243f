"""The DNS server process edge: sockets, snapshot swaps, persistence, workers.

:class:`DnsServer` binds UDP and TCP on ``listen_host:listen_port``, answers
with a :class:`~atoll_dns.fastpath.FastEngine`, and takes new zones through
:meth:`DnsServer.apply`:

1. compile the snapshot into answer tables in a worker thread (the event loop
   keeps answering from the current zone meanwhile);
2. swap the compiled zone in with one reference assignment on the loop
   thread — a query is handled synchronously between two awaits, so it sees
   the old zone or the new one, never a mix;
3. persist it as the last-known-good zone (:mod:`atoll_dns.persist`), update
   metrics, and forward it to the worker processes, if any, returning once
   each has swapped it in too.

Until the first zone arrives (no ``initial``, nothing persisted), names inside
the configured zone get SERVFAIL — resolvers then try another server rather
than caching an NXDOMAIN for a service that exists.

TCP (RFC 7766): two-octet length-prefixed messages, several queries per
connection answered in order, an idle timeout, a cap on connections, and
reading paused while the client does not read its answers.

UDP is read and written in batches with ``recvmmsg``/``sendmmsg`` on Linux
(:mod:`atoll_dns.udpbatch`), else through a ``DatagramProtocol``.

With ``workers > 1`` the sockets use SO_REUSEPORT and ``workers - 1`` extra
processes (:mod:`atoll_dns.workers`) bind the same port; the kernel spreads
packets among them. uvloop is used by :func:`run_dns` and by the workers when
it is installed; :class:`DnsServer` itself runs on whatever loop is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import dns.name
from prometheus_client.registry import REGISTRY, CollectorRegistry

from atoll.errors import InvalidError
from atoll_dns.config import DnsConfig
from atoll_dns.fastpath import CompiledZone, FastEngine, compile_zone
from atoll_dns.geo import GeoDatabase, Locator, open_geo_database
from atoll_dns.metrics import DnsMetrics
from atoll_dns.persist import load_snapshot, save_snapshot
from atoll_dns.snapshot import ZoneSnapshot
from atoll_dns.udpbatch import BatchUdp, batch_supported
from atoll_dns.zoneview import ZoneView

__all__ = ["DnsServer", "PacketHandler", "compile_snapshot", "run_dns", "serve_dns"]

log = logging.getLogger("atoll.dns")

Handler = Callable[[bytes, str, bool], "bytes | None"]


def compile_snapshot(
    snapshot: ZoneSnapshot, config: DnsConfig, database: GeoDatabase | None
) -> tuple[CompiledZone, Locator]:
    """Build the answer tables and the locator of one snapshot (CPU work, no I/O)."""
    view = ZoneView(snapshot)
    locator = Locator(
        snapshot.client_networks,
        database=database,
        database_regions=dict(snapshot.maxmind_regions),
    )
    return compile_zone(view, memo_size=config.query_cache_size), locator


class PacketHandler:
    """Engine call + error containment + sampled latency, shared by UDP and TCP."""

    def __init__(self, engine: FastEngine, metrics: DnsMetrics, sample_every: int) -> None:
        self.engine = engine
        self.metrics = metrics
        self.sample_every = sample_every
        self._n = 0
        self._last_error_log = 0.0

    def __call__(self, data: bytes, src: str, tcp: bool = False) -> bytes | None:
        """Answer one packet, timing one in ``sample_every``."""
        self._n += 1
        if not self.sample_every or self._n < self.sample_every:
            return self.answer(data, src, tcp)
        self._n = 0
        t0 = time.perf_counter()
        out = self.answer(data, src, tcp)
        self.metrics.observe_latency(time.perf_counter() - t0)
        return out

    def answer(self, data: bytes, src: str, tcp: bool = False) -> bytes | None:
        """Answer one packet (no timing; batch callers time their own samples)."""
        try:
            out = self.engine.handle(data, src, tcp)
        except Exception:  # the one catch-all of the packet path: never let a packet kill us
            self.metrics.errors += 1
            now = time.monotonic()
            if now - self._last_error_log > 1.0:
                self._last_error_log = now
                log.exception("packet handling failed", extra={"client": src, "size": len(data)})
            return None
        if out is None:
            self.metrics.dropped += 1
        return out


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, handler: PacketHandler) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        out = self.handler(data, addr[0], False)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors from clients: ignore
        pass


class _Tcp(asyncio.Protocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server._tcp_conns) >= self.server.config.tcp_max_connections:
            transport.close()
            return
        self.server._tcp_conns.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self._arm()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.server.config.tcp_idle_timeout, self._idle)

    def _idle(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._arm()
        handler = self.server._handler
        while len(self.buf) >= 2:
            size = (self.buf[0] << 8) | self.buf[1]
            if len(self.buf) < 2 + size:
                break
            msg = bytes(self.buf[2 : 2 + size])
            del self.buf[: 2 + size]
            out = handler(msg, self.peer, True) if handler is not None else None
            if out is not None and self.transport is not None:
                self.transport.write(len(out).to_bytes(2, "big") + out)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.server._tcp_conns.discard(self)


class DnsServer:
    """One authoritative server for the federated zone (see module docstring)."""

    def __init__(
        self,
        config: DnsConfig,
        *,
        state_dir: Path | None = None,
        registry: CollectorRegistry | None = REGISTRY,
        geo_database: GeoDatabase | None = None,
        rng: random.Random | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = config
        self._reuse_port = reuse_port or config.workers > 1
        self.state_dir = state_dir
        self.metrics = DnsMetrics()
        if registry is not None:
            self.metrics.register(registry)
        self._registry = registry
        self._database = geo_database
        self._rng = rng
        self.engine: FastEngine | None = None
        self._handler: PacketHandler | None = None
        self._snapshot: ZoneSnapshot | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._batch: BatchUdp | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_conns: set[_Tcp] = set()
        self._apply_lock = asyncio.Lock()
        self._workers: Any = None
        self.udp_address: tuple[str, int] = ("", 0)
        self.tcp_address: tuple[str, int] = ("", 0)

    @property
    def snapshot(self) -> ZoneSnapshot | None:
        """The zone being served (None before the first one)."""
        return self._snapshot

    async def start(self, initial: ZoneSnapshot | None = None) -> None:
        """Load ``initial`` or the persisted zone, then bind UDP and TCP."""
        cfg = self.config
        if self._database is None and cfg.maxmind_db is not None:
            self._database = open_geo_database(cfg.maxmind_db)
        origin = dns.name.from_text(cfg.zone)
        self.engine = FastEngine(
            Locator(cfg.client_networks, database=self._database),
            origin,
            max_udp=cfg.edns_udp_payload,
            fast=cfg.fast_path,
            rng=self._rng,
        )
        self.metrics.sources.append(self.engine.totals)
        engine = self.engine
        self.metrics.slow_sources.append(lambda: engine.slow_calls)
        self._handler = PacketHandler(self.engine, self.metrics, cfg.latency_sample_every)
        snapshot = initial
        if snapshot is None and self.state_dir is not None:
            snapshot = await asyncio.to_thread(load_snapshot, self.state_dir, zone=cfg.zone)
        if snapshot is not None:
            self._check_zone(snapshot)
            compiled, locator = await asyncio.to_thread(
                compile_snapshot, snapshot, cfg, self._database
            )
            self._swap(snapshot, compiled, locator)
            if initial is not None and self.state_dir is not None:
                await asyncio.to_thread(save_snapshot, self.state_dir, snapshot)
        await self._bind()
        if cfg.workers > 1:
            from atoll_dns.workers import WorkerPool

            self._workers = WorkerPool(cfg, self.udp_address[1], self.metrics)
            await self._workers.start(self._snapshot)
        log.info(
            "dns server listening",
            extra={
                "udp": f"{self.udp_address[0]}:{self.udp_address[1]}",
                "tcp": f"{self.tcp_address[0]}:{self.tcp_address[1]}",
                "zone": cfg.zone,
                "serial": self._snapshot.serial if self._snapshot else None,
                "workers": cfg.workers,
            },
        )

    async def _bind(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        reuse = self._reuse_port
        assert self._handler is not None
        handler = self._handler
        attempts = 10 if cfg.listen_port == 0 else 1
        infos = await loop.getaddrinfo(
            cfg.listen_host, cfg.listen_port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = infos[0]
        for attempt in range(attempts):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if reuse:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
                sock.bind(sockaddr)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            host, port = sock.getsockname()[:2]
            try:
                tcp = await loop.create_server(
                    lambda: _Tcp(self), cfg.listen_host, port, reuse_port=reuse or None, backlog=256
                )
            except OSError:
                sock.close()
                if attempt + 1 == attempts:
                    raise
                continue
            if cfg.udp_batch and batch_supported():
                self._batch = BatchUdp(sock, handler)
                self._batch.start(loop)
            else:
                self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(handler), sock=sock)
            self._tcp = tcp
            self.udp_address = (host, port)
            self.tcp_address = (host, tcp.sockets[0].getsockname()[1])
            return

    def _check_zone(self, snapshot: ZoneSnapshot) -> None:
        if snapshot.zone != self.config.zone:
            raise InvalidError(
                f"snapshot is for zone {snapshot.zone}, this server serves {self.config.zone}",
                field="zone",
            )

    def _swap(self, snapshot: ZoneSnapshot, compiled: CompiledZone, locator: Locator) -> None:
        assert self.engine is not None
        self.engine.load(compiled, locator)
        self._snapshot = snapshot
        self.metrics.zone_applied(snapshot)

    async def apply(self, snapshot: ZoneSnapshot) -> bool:
        """Serve ``snapshot`` from now on; False if it is the one already served.

        Raises :class:`~atoll.errors.InvalidError` (and keeps the current zone) if
        the snapshot is for another zone or cannot be compiled.
        """
        if self.engine is None:
            raise InvalidError("server not started")
        self._check_zone(snapshot)
        async with self._apply_lock:
            current = self._snapshot
            if (
                current is not None
                and current.digest == snapshot.digest
                and current.serial == snapshot.serial
            ):
                return False
            try:
                compiled, locator = await asyncio.to_thread(
                    compile_snapshot, snapshot, self.config, self._database
                )
            except Exception as exc:
                raise InvalidError(f"zone snapshot {snapshot.serial} rejected: {exc}") from exc
            self._swap(snapshot, compiled, locator)
            if self.state_dir is not None:
                await asyncio.to_thread(save_snapshot, self.state_dir, snapshot)
            if self._workers is not None:
                await self._workers.broadcast(snapshot)
            log.info(
                "zone snapshot applied",
                extra={
                    "serial": snapshot.serial,
                    "digest": snapshot.digest[:12],
                    "services": len(snapshot.services),
                    "warnings": len(snapshot.warnings),
                },
            )
            for warning in snapshot.warnings:
                log.warning("zone input ignored", extra={"detail": warning})
            return True

    async def stop(self) -> None:
        """Close sockets and connections, stop workers. Idempotent."""
        if self._workers is not None:
            await self._workers.stop()
            self._workers = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        if self._tcp is not None:
            self._tcp.close()
            for conn in list(self._tcp_conns):
                if conn.transport is not None:
                    conn.transport.close()
            await self._tcp.wait_closed()
            self._tcp = None
        if self._registry is not None:
            with contextlib.suppress(KeyError):
                self._registry.unregister(self.metrics)
            self._registry = None

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve_dns(
    config: DnsConfig,
    *,
    initial: ZoneSnapshot | None = None,
    state_dir: Path | None = None,
    registry: CollectorRegistry | None = REGISTRY,
) -> DnsServer:
    """Start a server (``initial`` or the persisted zone) and return it, listening.

    The caller feeds it with :meth:`DnsServer.apply` and ends it with
    :meth:`DnsServer.stop`.
    """
    server = DnsServer(config, state_dir=state_dir, registry=registry)
    await server.start(initial)
    return server


def run_dns(
    config: DnsConfig,
    *,
    state_dir: Path | None = None,
    initial: ZoneSnapshot | None = None,
    on_start: Callable[[DnsServer], Awaitable[None]] | None = None,
) -> None:
    """Run a server until interrupted, on uvloop when it is installed.

    ``on_start`` runs once the server listens (e.g. to subscribe to the control
    plane and call ``apply``); the server stops when it returns or raises.
    """

    async def main() -> None:
        server = await serve_dns(config, initial=initial, state_dir=state_dir)
        try:
            if on_start is not None:
                await on_start(server)
            else:
                await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
