"""The federation CA shared by replicas through a real etcd: one CA, rotations seen by all."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest

from atoll.aio import spawn
from atoll.store import open_store
from atoll.testing.etcd import EtcdServer, etcd_binary
from atoll.trusthub.castore import FederationCa, StoredCa
from atoll.trusthub.naming import parse_federation_domain
from atoll_trust.clock import system_clock
from atoll_trust.kek import AesGcmKeyEncryptor
from atoll_trust.rotation import RotationPolicy

pytestmark = pytest.mark.etcd
HOST = "127.0.70.3"
FED = parse_federation_domain("atoll.lab")
POLICY = RotationPolicy(min_publish_lead=dt.timedelta(0))


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    if etcd_binary() is None:
        pytest.skip("etcd binary not installed (apt-get install etcd-server)")
    with EtcdServer(host=HOST) as server:
        yield server


async def test_replicas_share_one_ca_through_etcd(etcd: EtcdServer) -> None:
    stores = [open_store(etcd.url) for _ in range(2)]
    try:
        r1, r2 = (
            FederationCa(
                s,
                trust_domain=FED,
                encryptor=AesGcmKeyEncryptor(b"k" * 32),
                policy=POLICY,
                clock=system_clock,
            )
            for s in stores
        )
        first, second = await asyncio.gather(r1.load_or_create(), r2.load_or_create())
        assert first.state.active_x509.certificate == second.state.active_x509.certificate
        watched: list[StoredCa] = []

        async def follow() -> None:
            async for stored in r2.watch():
                watched.append(stored)
                if stored.state.sequence >= 2:
                    return

        follower = spawn(follow(), name="ca-follower")
        rotated, actions = await r1.rotate(force=True)
        assert actions and rotated.state.sequence == 2
        await asyncio.wait_for(follower, 20)
        assert watched[-1].state.sequence == 2
        assert len(watched[-1].state.x509) == 2
    finally:
        for s in stores:
            await s.close()
