"""Trust state in a real store: join tokens and the federation CA shared by replicas."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from atoll.aio import cancel_and_wait, spawn
from atoll.store import SqliteStore
from atoll.sync import ResourceTable
from atoll.trusthub.castore import FederationCa, ca_key
from atoll.trusthub.hub import TrustHub, TrustSettings
from atoll.trusthub.naming import parse_federation_domain
from atoll.trusthub.tokens import (
    TOKEN_PREFIX,
    JoinTokenExpiredError,
    JoinTokenInvalidError,
    JoinTokens,
    JoinTokenUnknownError,
    JoinTokenUsedError,
)
from atoll_trust.clock import FakeClock, system_clock
from atoll_trust.errors import KeyDecryptionError
from atoll_trust.kek import AesGcmKeyEncryptor
from atoll_trust.rotation import RotationPolicy
from atoll_trust.testing import T0
from tests.polling import eventually

FED = parse_federation_domain("atoll.lab")
POLICY = RotationPolicy(min_publish_lead=dt.timedelta(0))
KEK = AesGcmKeyEncryptor(b"k" * 32)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db", sweep_interval=0.05)
    yield s
    await s.close()


# ---------------------------------------------------------------- join tokens


async def test_a_token_enrolls_once_before_it_expires(store: SqliteStore) -> None:
    clock = FakeClock(system_clock())
    tokens = JoinTokens(store, clock=clock)
    issued = await tokens.create("eu-west-1", dt.timedelta(minutes=5))
    listing = await store.list(TOKEN_PREFIX)
    assert len(listing.entries) == 1 and listing.entries[0].lease is not None
    raw = listing.entries[0].value
    assert issued.token.encode() not in raw and json.loads(raw)["state"] == "unused"
    assert await tokens.redeem(issued.token) == "eu-west-1"
    with pytest.raises(JoinTokenUsedError, match="already used at"):
        await tokens.redeem(issued.token)

    late = await tokens.create("eu-west-1", dt.timedelta(minutes=5))
    with pytest.raises(JoinTokenUnknownError, match="unknown"):  # one character changed
        await tokens.redeem(late.token[:-1] + ("A" if late.token[-1] != "A" else "B"))
    clock.advance(dt.timedelta(minutes=6))
    with pytest.raises(JoinTokenExpiredError, match="expired at"):
        await tokens.redeem(late.token)
    with pytest.raises(JoinTokenInvalidError):
        await tokens.redeem("atj1.a.b.c")
    for bad_ttl in (dt.timedelta(0), dt.timedelta(days=31)):
        with pytest.raises(JoinTokenInvalidError, match="TTL"):
            await tokens.create("eu-west-1", bad_ttl)
    with pytest.raises(JoinTokenInvalidError, match="cluster"):
        await tokens.create("Not_A_Label", dt.timedelta(minutes=1))


async def test_concurrent_redemptions_exactly_one_wins(store: SqliteStore) -> None:
    tokens = JoinTokens(store, clock=system_clock)
    issued = await tokens.create("a", dt.timedelta(minutes=5))
    results = await asyncio.gather(
        *(tokens.redeem(issued.token) for _ in range(8)), return_exceptions=True
    )
    assert results.count("a") == 1
    assert all(isinstance(r, JoinTokenUsedError) for r in results if r != "a")


async def test_the_store_forgets_expired_tokens(store: SqliteStore) -> None:
    tokens = JoinTokens(store, clock=system_clock)
    await tokens.create("a", dt.timedelta(seconds=1))

    async def gone() -> bool:
        return not (await store.list(TOKEN_PREFIX)).entries

    await eventually("the token's lease to expire", gone)


# ---------------------------------------------------------------- the federation CA


async def test_replicas_create_one_ca_and_only_one_rotation_lands(store: SqliteStore) -> None:
    clock = FakeClock(T0)
    replicas = [
        FederationCa(store, trust_domain=FED, encryptor=KEK, policy=POLICY, clock=clock)
        for _ in range(3)
    ]
    created = await asyncio.gather(*(r.load_or_create() for r in replicas))
    assert len({c.state.active_x509.certificate for c in created}) == 1
    # the schedule's prepare mark: every replica plans the same step, one write lands
    clock.advance(POLICY.ca_ttl / 2)
    results = await asyncio.gather(*(r.rotate() for r in replicas))
    assert sum(1 for _, actions in results if actions) == 1
    final = await replicas[0].read()
    assert final is not None and final.state.sequence == 2 and len(final.state.x509) == 2
    # the stored state is sealed: no private key in clear, and another KEK cannot open it
    entry = await store.get(ca_key(FED))
    assert entry is not None and b"PRIVATE KEY" not in entry.value
    other = FederationCa(
        store,
        trust_domain=FED,
        encryptor=AesGcmKeyEncryptor(b"z" * 32),
        policy=POLICY,
        clock=clock,
    )
    with pytest.raises(KeyDecryptionError):
        await other.load_or_create()


async def test_a_rotation_by_the_leader_reaches_another_replica(store: SqliteStore) -> None:
    hubs = [
        TrustHub(
            store,
            settings=TrustSettings(policy=POLICY),
            domains=_ready_table(),
            reportable={},
            encryptor=KEK,
        )
        for _ in range(2)
    ]
    for hub in hubs:
        await hub.start()
    leader, follower = hubs
    assert leader.federation_bundle() == follower.federation_bundle()
    svid_before = follower.svid
    assert svid_before is not None
    assert str(svid_before.spiffe_id) == "spiffe://atoll.lab/control-plane"
    task = spawn(follower.run(), name="follower")
    try:
        await leader.ca_store.rotate(force=True)  # prepare: published, not signing yet
        await eventually(
            "the follower sees the published CA",
            lambda: len(follower.federation_bundle().x509_authorities) == 2,
        )
        assert follower.svid is svid_before  # nothing signs with the new key yet
        await leader.ca_store.rotate(force=True)  # activate
        await eventually(
            "the follower re-mints its SVID with the new CA",
            lambda: (
                follower.svid is not None
                and follower.svid.issuer_key_id == follower.ca_state.active_x509.key_id
                and follower.svid is not svid_before
            ),
        )
        assert follower.tls.material is not None and follower.tls.material.version >= 2
        # the federation TrustDomain follows the CA, with the new sequence
        res = await eventually(
            "the federation TrustDomain at sequence 2",
            lambda: _federation_sequence(follower),
        )
        assert res == 2
    finally:
        await cancel_and_wait(task)


async def _federation_sequence(hub: TrustHub) -> int | None:
    from atoll.model import TrustDomain

    res = await hub.repo.get(TrustDomain, ("federation", "atoll-lab"))
    return res.spec.sequence if res is not None and res.spec.sequence >= 2 else None


def _ready_table() -> ResourceTable:
    table = ResourceTable("TrustDomain")
    table.replace_all([])
    return table
