"""The federation domain's SPIFFE bundle endpoint (SPIFFE Trust Domain and Bundle §5).

``GET /`` answers the federation domain's current bundle JSON
(``application/json``; :func:`~atoll_trust.federation.answer_bundle_request`
decides, pure); anything else is 404/405. Two profiles, as SPIRE offers:

* **https_spiffe** (default) — the server presents this replica's
  control-plane SVID; a client that holds the federation bundle (bootstrapped
  by its operator) verifies it as ``spiffe://<fed>/control-plane`` against
  that bundle, and then keeps trusting the newest bundle it fetched. The SVID
  is re-read on every handshake (``sni_callback`` swaps in a context built
  for the current SVID), so rotation needs no restart.
* **https_web** — the server presents an operator-provided Web PKI
  certificate (``--bundle-endpoint-cert``/``--bundle-endpoint-key``), for
  clients that trust the Web PKI.

The HTTP side is deliberately tiny — one request per connection, a request
head of at most 8 KiB read within 10 s, ``Connection: close`` — because the
endpoint serves one small public document; :func:`parse_request_head` and
:func:`render_response` are pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from atoll.errors import FatalError
from atoll_trust.bundle import TrustBundle
from atoll_trust.federation import BundleEndpointResponse, answer_bundle_request
from atoll_trust.svid import X509Svid
from atoll_trust.tls import build_endpoint_context

__all__ = ["BundleEndpoint", "parse_request_head", "render_response"]

log = logging.getLogger("atoll.trusthub.endpoint")

MAX_HEAD = 8192
READ_DEADLINE = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def parse_request_head(head: bytes) -> tuple[str, str] | None:
    """``(method, path)`` of an HTTP/1.x request head, or None if it is not one."""
    try:
        line = head.split(b"\r\n", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None
    if not parts[0].isalpha() or not parts[0].isupper():
        return None
    return parts[0], parts[1]


def render_response(resp: BundleEndpointResponse) -> bytes:
    head = (
        f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Error')}\r\n"
        f"Content-Type: {resp.content_type}\r\n"
        f"Content-Length: {len(resp.body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + resp.body


class BundleEndpoint:
    def __init__(
        self,
        *,
        bundle: Callable[[], TrustBundle],
        svid: Callable[[], X509Svid | None],
        web_cert: Path | None = None,
        web_key: Path | None = None,
    ) -> None:
        self.bundle = bundle
        self.svid = svid
        self.profile = "https_web" if web_cert is not None else "https_spiffe"
        self._web: ssl.SSLContext | None = None
        if web_cert is not None:
            if web_key is None:
                raise FatalError("the https_web bundle endpoint needs both a certificate and a key")
            self._web = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._web.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                self._web.load_cert_chain(web_cert, web_key)
            except (OSError, ssl.SSLError) as exc:
                raise FatalError(f"bundle endpoint certificate {web_cert}: {exc}") from exc
        self._served: tuple[X509Svid, ssl.SSLContext] | None = None

    def _spiffe_context(self) -> ssl.SSLContext:
        svid = self.svid()
        if svid is None:
            raise FatalError("the bundle endpoint has no SVID to present yet")
        if self._served is None or self._served[0] is not svid:
            self._served = (svid, build_endpoint_context(svid))
        return self._served[1]

    def ssl_context(self) -> ssl.SSLContext:
        """The listening context; for https_spiffe it follows SVID renewals per handshake."""
        if self._web is not None:
            return self._web
        base = self._spiffe_context()

        def pick(sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            sslobj.context = self._spiffe_context()

        base.sni_callback = pick
        return base

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_DEADLINE):
                head = await reader.readuntil(b"\r\n\r\n")
            request = parse_request_head(head)
            if request is None:
                resp = BundleEndpointResponse(400, "text/plain", b"bad request\n")
            else:
                resp = answer_bundle_request(request[0], request[1], self.bundle())
            writer.write(render_response(resp))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def serve(
        self, host: str, port: int, *, on_listening: Callable[[int], None] | None = None
    ) -> None:
        try:
            server = await asyncio.start_server(
                self._handle, host, port, ssl=self.ssl_context(), limit=MAX_HEAD
            )
        except OSError as exc:
            raise FatalError(
                f"bundle endpoint cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        bound = int(server.sockets[0].getsockname()[1])
        log.info(
            "bundle endpoint listening",
            extra={"host": host, "port": bound, "profile": self.profile},
        )
        if on_listening is not None:
            on_listening(bound)
        async with server:
            await server.serve_forever()
