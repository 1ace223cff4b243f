"""A gateway process for bench_gateway: ``python -m tests.bench._gateway_child DIR ROLE LOOP``.

ROLE ``east`` serves ``demo/web`` (passthrough to nginx TLS) and ``demo/plain``
(terminated, to nginx plain HTTP); ROLE ``west`` only has an egress listener
for ``demo/plain`` towards east. Identities come from PEM files the benchmark
wrote (no agent): ``DIR/<role>-gw.crt|key`` and ``DIR/<domain>-ca.crt``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

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
from atoll_gateway.config import GatewayConfig, RouteConfig
from atoll_gateway.identity import StaticSource
from atoll_gateway.node import GatewayNode
from atoll_gateway.testing import StaticCatalog, catalog_of, held_state
from atoll_trust.bundle import BundleSet, TrustBundle
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.svid import X509Svid
from atoll_trust.workload_api.client import X509Context


def load_context(d: Path, role: str) -> X509Context:
    chain = tuple(x509.load_pem_x509_certificates((d / f"{role}-gw.crt").read_bytes()))
    key = serialization.load_pem_private_key((d / f"{role}-gw.key").read_bytes(), None)
    td = TrustDomain(f"{role}.atoll.lab")
    bundles = [
        TrustBundle(
            TrustDomain(f"{r}.atoll.lab"),
            (x509.load_pem_x509_certificate((d / f"{r}-ca.crt").read_bytes()),),
        )
        for r in ("east", "west")
    ]
    svid = X509Svid(td.spiffe_id("atoll", "gateway"), chain, key)  # type: ignore[arg-type]
    return X509Context(svid=svid, bundles=BundleSet(bundles))


async def main(d: Path, role: str) -> None:
    plan = json.loads((d / "plan.json").read_text())
    if role == "east":
        config = GatewayConfig(
            cluster="east",
            listen=plan["east_listen"],
            admin=plan["east_admin"],
            services={"demo/plain": RouteConfig(mode="terminate")},
            relay=plan["relay"],
        )
        catalog = catalog_of(
            {
                "demo/web": (8443, [(plan["nginx_host"], plan["nginx_tls"])]),
                "demo/plain": (8080, [(plan["nginx_host"], plan["nginx_plain"])]),
            }
        )
        held: list[Resource] = []
    else:
        config = GatewayConfig(
            cluster="west",
            listen=plan["west_listen"],
            admin=plan["west_admin"],
            egress_host=plan["egress_host"],
            relay=plan["relay"],
        )
        catalog = catalog_of({})
        held = [
            ServiceImport(
                metadata=Metadata(name="plain", namespace="demo"),
                spec=ServiceImportSpec(
                    ports=[ServicePort(name="http", port=plan["egress_port"])],
                    targets=[
                        ImportTarget(
                            cluster="east",
                            region="r1",
                            addresses=["10.0.0.1"],
                            endpoints_healthy=1,
                            endpoints_total=1,
                            healthy=True,
                        )
                    ],
                ),
            ),
            Cluster(
                metadata=Metadata(name="east"),
                spec=ClusterSpec(region="r1", addresses={"gateway": plan["east_listen"]}),
            ),
        ]
    node = GatewayNode(
        config,
        catalog=StaticCatalog(catalog),
        source=StaticSource(load_context(d, role)),
        freeze_gc=True,
    )
    node.set_held(held_state(held))
    await node.run()


if __name__ == "__main__":
    directory, role, loop = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    if loop == "uvloop":
        import uvloop

        uvloop.install()
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(directory, role))
