"""Rotation planner: SPIRE's schedule, and a long fake-time simulation of its invariant."""

from __future__ import annotations

import datetime as dt
from collections import deque

import pytest

from atoll_trust.bundle import BundleSet, TrustBundle
from atoll_trust.ca import issue_jwt_svid, mint_x509_svid
from atoll_trust.errors import IssuanceError
from atoll_trust.rotation import (
    Activate,
    AuthorityState,
    CaState,
    GeneratingAuthorityFactory,
    Prepare,
    Prune,
    RotationPolicy,
    bootstrap_ca_state,
    next_rotation_event,
    plan_rotation,
    rotate,
    svid_needs_renewal,
)
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.svid import JwtSvid, X509Svid
from atoll_trust.testing import T0
from atoll_trust.verify import verify_jwt_svid, verify_x509_svid

TD = TrustDomain("eu.atoll")
H = dt.timedelta(hours=1)
POLICY = RotationPolicy(
    ca_ttl=6 * H,
    x509_svid_ttl=H,
    jwt_key_ttl=6 * H,
    jwt_svid_ttl=H,
    prune_grace=H,
    min_publish_lead=dt.timedelta(minutes=10),
)
FACTORY = GeneratingAuthorityFactory()


def _states(state: CaState) -> list[str]:
    return [s.state.value for s in state.x509]


def test_policy_caps_svid_lifetime_at_a_sixth() -> None:
    with pytest.raises(IssuanceError, match="CA lifetime / 6"):
        RotationPolicy(ca_ttl=6 * H, x509_svid_ttl=H + dt.timedelta(seconds=1))
    with pytest.raises(IssuanceError, match="JWT key lifetime / 6"):
        RotationPolicy(jwt_key_ttl=H, jwt_svid_ttl=H)


def test_bootstrap_then_schedule_marks() -> None:
    state = bootstrap_ca_state(TD, now=T0, policy=POLICY, factory=FACTORY)
    assert _states(state) == ["active"] and state.sequence == 1
    assert [s.state for s in state.jwt] == [AuthorityState.ACTIVE]
    assert plan_rotation(state, now=T0 + 3 * H - dt.timedelta(seconds=1), policy=POLICY) == ()
    assert next_rotation_event(state, policy=POLICY) == T0 + 3 * H
    # 1/2 of the lifetime: prepare and publish (sequence + 1)
    state, actions = rotate(state, now=T0 + 3 * H, policy=POLICY, factory=FACTORY)
    assert actions == (Prepare("x509"), Prepare("jwt"))
    assert _states(state) == ["active", "prepared"] and state.sequence == 2
    assert len(state.bundle().x509_authorities) == 2
    assert next_rotation_event(state, policy=POLICY) == T0 + 3 * H + dt.timedelta(minutes=10)
    # nothing until 5/6
    assert plan_rotation(state, now=T0 + 5 * H - dt.timedelta(seconds=1), policy=POLICY) == ()
    old_key = state.active_x509.key_id
    state, actions = rotate(state, now=T0 + 5 * H, policy=POLICY, factory=FACTORY)
    assert actions == (Activate("x509"), Activate("jwt"))
    assert _states(state) == ["old", "active"] and state.sequence == 2  # bundle unchanged
    assert state.active_x509.key_id != old_key
    # the new key reaches its own half-life at 6h (it was minted at 3h): prepare again
    assert plan_rotation(state, now=T0 + 6 * H - dt.timedelta(seconds=1), policy=POLICY) == ()
    state, actions = rotate(state, now=T0 + 6 * H, policy=POLICY, factory=FACTORY)
    assert actions == (Prepare("x509"), Prepare("jwt"))
    assert _states(state) == ["old", "active", "prepared"] and state.sequence == 3
    # the old key expired at 6h; it is pruned after the grace (1h), bumping the sequence
    old_jwt = state.jwt[0].key_id
    assert plan_rotation(state, now=T0 + 7 * H - dt.timedelta(seconds=1), policy=POLICY) == ()
    state, actions = rotate(state, now=T0 + 7 * H, policy=POLICY, factory=FACTORY)
    assert actions == (Prune("x509", old_key), Prune("jwt", old_jwt))
    assert _states(state) == ["active", "prepared"] and state.sequence == 4


def test_forced_rotation_waits_for_the_publish_lead() -> None:
    state = bootstrap_ca_state(TD, now=T0, policy=POLICY, factory=FACTORY)
    state, actions = rotate(state, now=T0 + H, policy=POLICY, factory=FACTORY, force=True)
    assert actions == (Prepare("x509", forced=True), Prepare("jwt", forced=True))
    assert plan_rotation(state, now=T0 + H + dt.timedelta(minutes=9), policy=POLICY) == ()
    state, actions = rotate(
        state, now=T0 + H + dt.timedelta(minutes=10), policy=POLICY, factory=FACTORY
    )
    assert actions == (Activate("x509"), Activate("jwt"))


def test_late_preparation_still_waits_unless_the_active_key_expired() -> None:
    state = bootstrap_ca_state(TD, now=T0, policy=POLICY, factory=FACTORY)
    # agent was down until after the 5/6 mark: prepare now, activate only after the lead
    state, actions = rotate(
        state, now=T0 + 5 * H + dt.timedelta(minutes=30), policy=POLICY, factory=FACTORY
    )
    assert actions == (Prepare("x509"), Prepare("jwt"))
    assert plan_rotation(state, now=T0 + 5 * H + dt.timedelta(minutes=35), policy=POLICY) == ()
    # ... but if the active key has expired, activate at once
    assert plan_rotation(state, now=T0 + 6 * H, policy=POLICY) == (
        Activate("x509"),
        Activate("jwt"),
    )


def test_the_last_key_is_never_pruned() -> None:
    state = bootstrap_ca_state(TD, now=T0, policy=POLICY, factory=FACTORY)
    only = state.x509[0]
    lonely = CaState(TD, (type(only)(only.authority, AuthorityState.OLD, T0),), state.jwt, 1)
    actions = plan_rotation(lonely, now=T0 + 100 * H, policy=POLICY)
    assert not any(isinstance(a, Prune) and a.kind == "x509" for a in actions)


def test_renewal_rule() -> None:
    state = bootstrap_ca_state(TD, now=T0, policy=POLICY, factory=FACTORY)
    svid = mint_x509_svid(state.active_x509, TD.spiffe_id("w"), now=T0 + H, ttl=H)
    assert not svid_needs_renewal(
        svid, now=T0 + H + dt.timedelta(minutes=20), active=state.active_x509
    )
    assert svid_needs_renewal(svid, now=T0 + H + dt.timedelta(minutes=30), active=state.active_x509)
    other = bootstrap_ca_state(TD, now=T0, policy=POLICY, factory=FACTORY).active_x509
    assert svid_needs_renewal(svid, now=T0 + H, active=other)


def test_simulation_no_valid_svid_is_ever_unverifiable() -> None:
    """Ten CA lifetimes in 5-minute steps, a forced rotation in the middle, and verifiers
    whose copy of the bundle lags by up to 9 minutes (less than the publish lead)."""
    step = dt.timedelta(minutes=5)
    lag_steps = 1  # the verifier sees the bundle published one step (5 min) ago
    state = bootstrap_ca_state(TD, now=T0, policy=POLICY, factory=FACTORY)
    published: deque[TrustBundle] = deque([state.bundle()], maxlen=lag_steps + 1)
    live_x509: list[X509Svid] = []
    live_jwt: list[JwtSvid] = []
    workloads = [TD.spiffe_id("w", str(i)) for i in range(2)]
    sequences = [state.sequence]
    now = T0
    end = T0 + 60 * H
    checks = 0
    while now < end:
        now += step
        state, _ = rotate(state, now=now, policy=POLICY, factory=FACTORY, force=now == T0 + 31 * H)
        published.append(state.bundle())
        assert state.sequence >= sequences[-1]
        if state.bundle().x509_authorities != published[0].x509_authorities:
            assert state.sequence > published[0].sequence  # type: ignore[operator]
        sequences.append(state.sequence)
        assert state.x509 and state.jwt  # never without a key
        # workloads renew at half-life or after an activation
        for sid in workloads:
            current = [s for s in live_x509 if s.spiffe_id == sid]
            if not current or svid_needs_renewal(current[-1], now=now, active=state.active_x509):
                live_x509.append(
                    mint_x509_svid(state.active_x509, sid, now=now, ttl=POLICY.x509_svid_ttl)
                )
        live_jwt.append(
            issue_jwt_svid(
                state.active_jwt, workloads[0], audience=["x"], now=now, ttl=POLICY.jwt_svid_ttl
            )
        )
        live_x509 = [s for s in live_x509 if s.not_after > now]
        live_jwt = [s for s in live_jwt if s.expiry > now]
        lagging = BundleSet([published[0]])
        for svid in live_x509:
            assert verify_x509_svid(svid.chain, lagging, now=now).spiffe_id == svid.spiffe_id
            checks += 1
        for token in live_jwt:
            verify_jwt_svid(token.token, lagging, audience="x", now=now)
            checks += 1
    assert checks > 1000
    assert sequences[-1] >= 20  # ~10 rotations, each a publish and a prune
