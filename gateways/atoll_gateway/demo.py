"""A demo workload server for the lab: tells each caller who it thinks the caller is.

``atoll gateway demo-server`` listens on one or more addresses (the lab runs
it on the addresses registered for ``demo/web``). For each connection it
accepts an optional PROXY v2 header (:mod:`atoll_gateway.proxyproto`, sent by
a terminating gateway with the caller's verified SPIFFE ID), then one HTTP/1.1
request, and answers:

* ``GET /`` — JSON ``{"cluster", "service", "instance", "client",
  "peer_spiffe_id", "sni"}``: the caller as the gateway vouched for it
  (``peer_spiffe_id`` is null without a PROXY header);
* ``GET /bytes/<n>`` — ``n`` bytes (a long transfer for tests).

The server trusts a PROXY header from anyone who can reach it: in the lab
only the gateway can (loopback); a real deployment would restrict the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence

from atoll_gateway.proxyproto import SIGNATURE, ProxyHeader, parse_v2

__all__ = ["DemoServer"]

log = logging.getLogger("atoll.gateway.demo")
_MAX_HEAD = 16 * 1024
_CHUNK = 64 * 1024


class DemoServer:
    def __init__(self, *, cluster: str, service: str) -> None:
        self.cluster = cluster
        self.service = service
        self.servers: list[asyncio.Server] = []

    async def _read_head(
        self, reader: asyncio.StreamReader
    ) -> tuple[ProxyHeader | None, bytes] | None:
        buf = b""
        header: ProxyHeader | None = None
        while True:
            chunk = await reader.read(_MAX_HEAD)
            if not chunk:
                return None
            buf += chunk
            if header is None and SIGNATURE.startswith(buf[: len(SIGNATURE)]):
                parsed = parse_v2(buf)
                if parsed is None:
                    continue
                header, buf = parsed, buf[parsed.size :]
            if b"\r\n\r\n" in buf:
                return header, buf.split(b"\r\n\r\n", 1)[0]
            if len(buf) > _MAX_HEAD:
                raise ValueError("request head too large")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            got = await asyncio.wait_for(self._read_head(reader), 10.0)
            if got is None:
                return
            header, head = got
            line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            path = line[1] if len(line) >= 2 else "/"
            peer = writer.get_extra_info("peername")
            local = writer.get_extra_info("sockname")
            client = header.source if header and header.source else peer[:2]
            if path.startswith("/bytes/") and path[7:].isdigit():
                n = int(path[7:])
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    + f"Content-Length: {n}\r\nConnection: close\r\n\r\n".encode()
                )
                block = b"x" * _CHUNK
                while n > 0:
                    writer.write(block[: min(n, _CHUNK)])
                    n -= _CHUNK
                    await writer.drain()
            else:
                body = json.dumps(
                    {
                        "cluster": self.cluster,
                        "service": self.service,
                        "instance": f"{local[0]}:{local[1]}",
                        "client": f"{client[0]}:{client[1]}",
                        "peer_spiffe_id": header.spiffe_id if header else None,
                        "sni": header.authority if header else None,
                    }
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            await writer.drain()
        except (ValueError, OSError, TimeoutError) as exc:
            log.info("demo request failed", extra={"error": str(exc)})
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def start(self, addresses: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        bound = []
        for host, port in addresses:
            srv = await asyncio.start_server(self._handle, host, port, reuse_address=True)
            self.servers.append(srv)
            bound.append(srv.sockets[0].getsockname()[:2])
        return bound

    async def run(self, addresses: Sequence[tuple[str, int]]) -> None:
        await self.start(addresses)
        log.info("demo server listening", extra={"addresses": [f"{h}:{p}" for h, p in addresses]})
        try:
            await asyncio.Event().wait()
        finally:
            for srv in self.servers:
                srv.close()
