"""The Workload API's snapshot hub and identity manager, in fake time without sockets."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from atoll.aio import spawn
from atoll_trust.bundle import BundleSet
from atoll_trust.clock import FakeClock
from atoll_trust.errors import IssuanceError
from atoll_trust.rotation import (
    GeneratingAuthorityFactory,
    RotationPolicy,
    bootstrap_ca_state,
    rotate,
)
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.testing import T0
from atoll_trust.workload_api.service import (
    build_jwt_bundles_response,
    build_x509_bundles_response,
    build_x509_svid_response,
)
from atoll_trust.workload_api.state import IdentityManager, SnapshotHub, WorkloadRegistration

A, B = TrustDomain("a.atoll"), TrustDomain("b.atoll")
POLICY = RotationPolicy(min_publish_lead=dt.timedelta(0))


def _setup() -> tuple[FakeClock, SnapshotHub, IdentityManager]:
    clock = FakeClock(T0)
    hub = SnapshotHub(A)
    state = bootstrap_ca_state(A, now=T0, policy=POLICY)
    ids = IdentityManager(hub, ca_state=state, policy=POLICY, clock=clock)
    ids.register(WorkloadRegistration("web", (A.spiffe_id("web"), A.spiffe_id("web", "admin"))))
    return clock, hub, ids


async def test_waiters_wake_on_publish_and_updates_coalesce() -> None:
    clock, hub, ids = _setup()
    first = ids.refresh()
    assert first.version == 1
    waiter = spawn(hub.wait_newer(first.version), name="waiter")
    await asyncio.sleep(0)
    assert not waiter.done()
    assert ids.refresh() is first  # nothing due: no new version
    clock.advance(dt.timedelta(minutes=31))  # past half-life of 1h SVIDs
    ids.refresh()
    ids.refresh(bundles=BundleSet([bootstrap_ca_state(B, now=T0, policy=POLICY).bundle()]))
    latest = await asyncio.wait_for(waiter, 1)
    assert latest.version == 3  # the waiter sees the newest snapshot, not each step
    assert await hub.wait_newer(1) is latest


def test_manager_renews_on_rotation_and_keeps_own_bundle_current() -> None:
    _clock, _hub, ids = _setup()
    snap = ids.refresh()
    svids = snap.svids_for("web")
    assert [str(s.spiffe_id) for s in svids] == [
        "spiffe://a.atoll/web",
        "spiffe://a.atoll/web/admin",
    ]
    state = bootstrap_ca_state(A, now=T0, policy=POLICY)
    ids.set_ca_state(state)
    rotated = ids.refresh()
    assert all(s.issuer_key_id == state.active_x509.key_id for s in rotated.svids_for("web"))
    own = rotated.bundles.get(A)
    assert own is not None and own.x509_authorities == state.bundle().x509_authorities
    resp = build_x509_svid_response(rotated, "web")
    assert resp is not None and len(resp.svids) == 2
    assert build_x509_svid_response(rotated, "nobody") is None
    assert set(build_x509_bundles_response(rotated).bundles) == {"spiffe://a.atoll"}
    assert set(build_jwt_bundles_response(rotated).bundles) == {"spiffe://a.atoll"}
    ids.unregister("web")
    assert ids.refresh().svids_for("web") == ()
    assert ids.next_renewal() is None


def test_registration_rules() -> None:
    _, _, ids = _setup()
    with pytest.raises(IssuanceError, match="not in trust domain"):
        ids.register(WorkloadRegistration("x", (B.spiffe_id("x"),)))
    with pytest.raises(IssuanceError):
        WorkloadRegistration("a/b", (A.spiffe_id("x"),))
    with pytest.raises(IssuanceError):
        WorkloadRegistration("x", ())


def test_rotated_state_after_force() -> None:
    _clock, _hub, ids = _setup()
    ids.refresh()
    state = bootstrap_ca_state(A, now=T0, policy=POLICY)
    state, _ = rotate(
        state, now=T0, policy=POLICY, factory=GeneratingAuthorityFactory(), force=True
    )
    state, actions = rotate(state, now=T0, policy=POLICY, factory=GeneratingAuthorityFactory())
    assert actions
    ids.set_ca_state(state)
    assert ids.refresh().version == 2
    # the new CA starts at T0, so no backdating: renewal at half of the 1 h lifetime
    assert ids.next_renewal() == T0 + dt.timedelta(minutes=30)
