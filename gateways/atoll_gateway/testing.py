"""Fakes shipped with the package for tests and benchmarks (no registry, no agent).

* :class:`StaticCatalog` — a :class:`~atoll_agent.catalog.CatalogSource` whose
  snapshots the test sets (:meth:`StaticCatalog.set`);
* :func:`catalog_of` — a catalog snapshot from ``{"ns/name": (port, [(host, port), ...])}``;
* :class:`TestPki` — throw-away CAs, SVIDs and Workload-API contexts;
* :func:`held_state` — federation state (imports, clusters, policies) as the
  sync client would hold it, for :meth:`~atoll_gateway.node.GatewayNode.set_held`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from ipaddress import ip_address

from atoll.model import Resource, ServicePort, encode
from atoll.sync import HeldState, Item
from atoll_agent.registry import CatalogSnapshot, RegisteredService, ServiceInstance
from atoll_trust.bundle import BundleSet
from atoll_trust.ca import mint_x509_svid
from atoll_trust.clock import system_clock
from atoll_trust.jose import generate_private_key
from atoll_trust.rotation import RotationPolicy, bootstrap_ca_state
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.svid import X509Svid
from atoll_trust.testing import build_certificate
from atoll_trust.workload_api.client import X509Context

__all__ = ["StaticCatalog", "TestPki", "catalog_of", "held_state"]

_HOUR = dt.timedelta(hours=1)


class StaticCatalog:
    def __init__(self, snapshot: CatalogSnapshot | None = None) -> None:
        self._queue: asyncio.Queue[CatalogSnapshot] = asyncio.Queue()
        if snapshot is not None:
            self._queue.put_nowait(snapshot)

    def set(self, snapshot: CatalogSnapshot) -> None:
        self._queue.put_nowait(snapshot)

    async def watch(self) -> AsyncGenerator[CatalogSnapshot, None]:
        while True:
            yield await self._queue.get()


def catalog_of(
    services: Mapping[str, tuple[int, Sequence[tuple[str, int]]]],
    *,
    index: int = 1,
    unhealthy: Iterable[tuple[str, int]] = (),
) -> CatalogSnapshot:
    bad = set(unhealthy)
    out = []
    for key, (port, endpoints) in sorted(services.items()):
        ns, name = key.split("/")
        out.append(
            RegisteredService(
                namespace=ns,
                name=name,
                ports=(ServicePort(name="tcp", port=port),),
                export=True,
                instances=tuple(
                    ServiceInstance(
                        id=f"{name}-{i}",
                        address=ip_address(host),
                        port=p,
                        health="critical" if (host, p) in bad else "passing",
                    )
                    for i, (host, p) in enumerate(endpoints)
                ),
            )
        )
    return CatalogSnapshot(index=index, epoch="test", services=tuple(out))


def held_state(resources: Iterable[Resource]) -> HeldState:
    by_type: dict[str, dict[str, Item]] = {}
    for r in resources:
        name = "/".join(r.path())
        by_type.setdefault(r.KIND, {})[name] = Item(name=name, version="1", body=encode(r))
    state = HeldState()
    for type_, items in by_type.items():
        state = state.with_type(type_, items, "1")
    return state


class TestPki:
    """Throw-away SPIFFE CAs for a few trust domains, minting SVIDs and X509Contexts.

    ``forged(domain, path, signer)`` issues an SVID naming ``domain`` but signed by
    ``signer``'s CA — the cross-domain forgery a pooled trust store would accept.
    """

    __test__ = False  # not a pytest class

    def __init__(self, *domains: str) -> None:
        now = system_clock()
        self.now = now
        self.states = {
            d: bootstrap_ca_state(TrustDomain(d), now=now - _HOUR, policy=RotationPolicy())
            for d in domains
        }

    def bundles(self, *domains: str) -> BundleSet:
        names = domains or tuple(self.states)
        return BundleSet([self.states[d].bundle() for d in names])

    def svid(self, domain: str, path: str) -> X509Svid:
        ca = self.states[domain].active_x509
        assert ca is not None
        return mint_x509_svid(ca, TrustDomain(domain).spiffe_id(*path.split("/")), now=self.now,
                              ttl=_HOUR)  # fmt: skip

    def forged(self, domain: str, path: str, signer: str) -> X509Svid:
        ca = self.states[signer].active_x509
        assert ca is not None
        key = generate_private_key()
        spiffe_id = TrustDomain(domain).spiffe_id(*path.split("/"))
        cert = build_certificate(
            ca,
            uris=[str(spiffe_id)],
            not_before=self.now - _HOUR,
            not_after=self.now + _HOUR,
            public_key=key.public_key(),
        )
        return X509Svid(spiffe_id, (cert,), key)

    def context(self, domain: str, path: str, *bundles: str) -> X509Context:
        return X509Context(svid=self.svid(domain, path), bundles=self.bundles(*bundles))
