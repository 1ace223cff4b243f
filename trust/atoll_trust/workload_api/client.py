"""A Workload API client for Atoll's own components (a DNS server fetching its SVID).

:class:`X509Source` keeps one ``FetchX509SVID`` stream open on a unix socket
and holds the latest :class:`X509Context`: the caller's first X.509-SVID with
its key, and every bundle the agent sent (its own domain's and the federated
ones), keyed by trust domain — never pooled. The stream is reopened with
backoff when the agent restarts; until the first answer :attr:`X509Source.current`
is None and the caller waits (:meth:`X509Source.wait_ready`).

What it accepts: the SVID chain must verify against the bundle of its own
domain in the same response (the Workload API standard lets clients rely on
the agent, but checking costs little and catches a confused agent); a
response that does not parse or verify is logged and ignored, and the last
good context stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from atoll.aio import Backoff, Sleep
from atoll_trust.bundle import BundleSet, TrustBundle
from atoll_trust.clock import Clock, system_clock
from atoll_trust.errors import (
    CERTIFICATE_DECODE_ERRORS,
    InvalidSpiffeIdError,
    SvidVerificationError,
)
from atoll_trust.spiffe_id import parse_trust_domain
from atoll_trust.svid import X509Svid
from atoll_trust.verify import check_x509_svid_leaf, parse_der_chain, verify_x509_svid
from atoll_trust.workload_api import workload_pb2 as pb
from atoll_trust.workload_api import workload_pb2_grpc as pb_grpc
from atoll_trust.workload_api.service import SECURITY_HEADER

__all__ = ["X509Context", "X509Source", "parse_x509_svid_response"]

log = logging.getLogger("atoll.trust.workload_api.client")
_UNUSABLE: tuple[type[Exception], ...] = (
    TypeError,
    InvalidSpiffeIdError,
    *CERTIFICATE_DECODE_ERRORS,
)


@dataclass(frozen=True, slots=True)
class X509Context:
    svid: X509Svid
    bundles: BundleSet


def parse_x509_svid_response(msg: pb.X509SVIDResponse, *, now: Clock) -> X509Context:
    """The first SVID with its key and all bundles; raises SvidVerificationError if unusable."""
    if not msg.svids:
        raise SvidVerificationError("Workload API response holds no SVID")
    first = msg.svids[0]
    try:
        chain = parse_der_chain(first.x509_svid)
        key = serialization.load_der_private_key(first.x509_svid_key, password=None)
        bundles: list[TrustBundle] = []
        own = parse_der_chain(first.bundle)
        domain = check_x509_svid_leaf(chain[0]).trust_domain
        verified = verify_x509_svid(chain, BundleSet([TrustBundle(domain, own)]), now=now())
        bundles.append(TrustBundle(verified.spiffe_id.trust_domain, own))
        for td_id, der in sorted(msg.federated_bundles.items()):
            td = parse_trust_domain(td_id)
            if td != verified.spiffe_id.trust_domain:
                bundles.append(TrustBundle(td, parse_der_chain(der)))
    except _UNUSABLE as exc:
        raise SvidVerificationError(f"unusable Workload API response: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise SvidVerificationError("unsupported SVID key type")
    return X509Context(
        svid=X509Svid(verified.spiffe_id, chain, key, first.hint),
        bundles=BundleSet(bundles),
    )


class X509Source:
    """The latest X.509 context from the Workload API socket at ``path``."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock = system_clock,
        on_update: Callable[[X509Context], None] | None = None,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.path = path
        self.clock = clock
        self.on_update = on_update
        self.backoff = backoff or Backoff(base=0.1, cap=5.0)
        self.sleep = sleep
        self.current: X509Context | None = None
        self.last_error = ""
        self._ready = asyncio.Event()

    async def wait_ready(self) -> X509Context:
        await self._ready.wait()
        assert self.current is not None
        return self.current

    async def run(self) -> None:
        """Follow the stream forever, reconnecting with backoff."""
        while True:
            try:
                await self._stream()
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name}: {exc.details()}"
            delay = self.backoff.next_delay()
            log.info(
                "Workload API stream down; retrying",
                extra={"socket": str(self.path), "error": self.last_error, "retry_in_s": delay},
            )
            await self.sleep(delay)

    async def _stream(self) -> None:
        async with grpc.aio.insecure_channel(f"unix:{self.path}") as channel:
            call = pb_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
                pb.X509SVIDRequest(), metadata=((SECURITY_HEADER, "true"),)
            )
            async for msg in call:
                try:
                    ctx = parse_x509_svid_response(msg, now=self.clock)
                except SvidVerificationError as exc:
                    self.last_error = str(exc)
                    log.warning("ignoring a Workload API response", extra={"error": str(exc)})
                    continue
                self.backoff.reset()
                self.current = ctx
                self.last_error = ""
                self._ready.set()
                if self.on_update is not None:
                    self.on_update(ctx)
        self.last_error = "the Workload API ended the stream"
