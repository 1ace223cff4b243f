"""CA rotation on SPIRE's schedule, as pure functions over an immutable :class:`CaState`.

Model
-----
A trust domain's signing keys are *slots* of two kinds, ``x509`` (CA
certificates) and ``jwt`` (JWT signing keys). A slot is ``prepared`` (published
in the bundle, not yet signing), ``active`` (signing; exactly one per kind) or
``old`` (no longer signing, still published so the SVIDs it signed verify).
The bundle published for the domain holds every slot's key, and its
``spiffe_sequence`` is :attr:`CaState.sequence`, bumped on every change of the
bundle's keys (prepare, prune). Activation does not change the bundle's content,
so it does not bump the sequence.

Schedule for a key of lifetime ``L`` that became valid at ``t0`` (SPIRE's):

* ``t0 + L/2``  — prepare the next key and publish it (sequence + 1);
* ``t0 + 5L/6`` — activate it; the old key stays published;
* old key's ``not_after + prune_grace`` — prune it (sequence + 1), never the
  active key and never the last key.

With SVID lifetime ``<= L/6`` (enforced by :class:`RotationPolicy`, and
issuance clamps SVIDs to the CA's not-after), every SVID signed by the old key
expires before the old key does, and the new key has been in the bundle for
``L/3`` before it signs anything: a verifier whose bundle lags by less than
``L/3`` never sees a valid SVID it cannot verify. The simulation test checks
this over many lifetimes in fake time.

Forced rotation (``atoll trust rotate``): ``force=True`` prepares a key now
(marked ``forced``); a forced key activates once it has been published for
``min_publish_lead`` (default 5 minutes; the bundle's refresh hint is the
yardstick). A key prepared late because the agent was down activates at the
normal mark only after the same lead; if the active key has *expired*, the
prepared one activates at once (no choice is left).

Everything here is pure: :func:`plan_rotation` returns actions, and
:func:`apply_rotation` returns a new state, minting keys through an injected
:class:`AuthorityFactory`.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field, replace
from typing import Generic, Literal, Protocol, TypeVar

from atoll_trust.bundle import DEFAULT_REFRESH_HINT, JwtKey, TrustBundle
from atoll_trust.ca import (
    JwtAuthority,
    X509Authority,
    generate_jwt_authority,
    generate_x509_authority,
)
from atoll_trust.errors import IssuanceError
from atoll_trust.jose import KeyType
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.svid import X509Svid

__all__ = [
    "Activate",
    "AuthorityFactory",
    "AuthorityState",
    "CaState",
    "GeneratingAuthorityFactory",
    "KeyKind",
    "Prepare",
    "Prune",
    "RotationAction",
    "RotationPolicy",
    "Slot",
    "apply_rotation",
    "bootstrap_ca_state",
    "next_rotation_event",
    "plan_rotation",
    "rotate",
    "svid_needs_renewal",
]

KeyKind = Literal["x509", "jwt"]
A = TypeVar("A", X509Authority, JwtAuthority)


class AuthorityState(enum.Enum):
    PREPARED = "prepared"
    ACTIVE = "active"
    OLD = "old"


@dataclass(frozen=True, slots=True)
class Slot(Generic[A]):
    """One signing key of a domain and where it is in its life."""

    authority: A
    state: AuthorityState
    published_at: dt.datetime
    forced: bool = False

    @property
    def key_id(self) -> str:
        return self.authority.key_id


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """Lifetimes and margins; SVID lifetimes are capped at a sixth of the key's."""

    ca_ttl: dt.timedelta = dt.timedelta(hours=24)
    x509_svid_ttl: dt.timedelta = dt.timedelta(hours=1)
    jwt_key_ttl: dt.timedelta = dt.timedelta(hours=24)
    jwt_svid_ttl: dt.timedelta = dt.timedelta(minutes=5)
    prune_grace: dt.timedelta = dt.timedelta(hours=24)
    min_publish_lead: dt.timedelta = dt.timedelta(minutes=5)
    refresh_hint: int = DEFAULT_REFRESH_HINT
    key_type: KeyType = KeyType.EC_P256

    def __post_init__(self) -> None:
        if self.x509_svid_ttl <= dt.timedelta(0) or self.jwt_svid_ttl <= dt.timedelta(0):
            raise IssuanceError("SVID lifetimes must be positive")
        if self.x509_svid_ttl * 6 > self.ca_ttl:
            raise IssuanceError(
                f"X.509-SVID lifetime {self.x509_svid_ttl} exceeds CA lifetime / 6 "
                f"({self.ca_ttl / 6})"
            )
        if self.jwt_svid_ttl * 6 > self.jwt_key_ttl:
            raise IssuanceError(
                f"JWT-SVID lifetime {self.jwt_svid_ttl} exceeds JWT key lifetime / 6 "
                f"({self.jwt_key_ttl / 6})"
            )
        if self.min_publish_lead < dt.timedelta(0) or self.prune_grace < dt.timedelta(0):
            raise IssuanceError("publish lead and prune grace must not be negative")

    def key_ttl(self, kind: KeyKind) -> dt.timedelta:
        return self.ca_ttl if kind == "x509" else self.jwt_key_ttl


@dataclass(frozen=True, slots=True)
class CaState:
    """All signing keys of one trust domain and the bundle sequence they produced."""

    trust_domain: TrustDomain
    x509: tuple[Slot[X509Authority], ...] = ()
    jwt: tuple[Slot[JwtAuthority], ...] = ()
    sequence: int = 0

    def _active(self, slots: tuple[Slot[A], ...], kind: str) -> A:
        for slot in slots:
            if slot.state is AuthorityState.ACTIVE:
                return slot.authority
        raise IssuanceError(f"trust domain {self.trust_domain} has no active {kind} authority")

    @property
    def active_x509(self) -> X509Authority:
        return self._active(self.x509, "X.509")

    @property
    def active_jwt(self) -> JwtAuthority:
        return self._active(self.jwt, "JWT")

    def bundle(self, *, refresh_hint: int = DEFAULT_REFRESH_HINT) -> TrustBundle:
        """The domain's own bundle: every published key, in publication order."""
        return TrustBundle(
            trust_domain=self.trust_domain,
            x509_authorities=tuple(s.authority.certificate for s in self.x509),
            jwt_authorities=tuple(
                JwtKey(s.authority.key_id, s.authority.public_key) for s in self.jwt
            ),
            sequence=self.sequence,
            refresh_hint=refresh_hint,
        )


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Prepare:
    """Mint the next key of ``kind`` and publish it."""

    kind: KeyKind
    forced: bool = False


@dataclass(frozen=True, slots=True)
class Activate:
    """Make the prepared key of ``kind`` the signing key; the active one becomes old."""

    kind: KeyKind


@dataclass(frozen=True, slots=True)
class Prune:
    """Remove an old key from the bundle."""

    kind: KeyKind
    key_id: str = field(default="")


RotationAction = Prepare | Activate | Prune


class AuthorityFactory(Protocol):
    """Mints new signing keys (injected so tests and KMS backends can replace it)."""

    def x509(
        self, trust_domain: TrustDomain, *, now: dt.datetime, ttl: dt.timedelta
    ) -> X509Authority: ...

    def jwt(
        self, trust_domain: TrustDomain, *, now: dt.datetime, ttl: dt.timedelta
    ) -> JwtAuthority: ...


@dataclass(frozen=True, slots=True)
class GeneratingAuthorityFactory:
    """Generates keys in process with :mod:`cryptography` (the default)."""

    key_type: KeyType = KeyType.EC_P256

    def x509(
        self, trust_domain: TrustDomain, *, now: dt.datetime, ttl: dt.timedelta
    ) -> X509Authority:
        return generate_x509_authority(trust_domain, now=now, ttl=ttl, key_type=self.key_type)

    def jwt(
        self, trust_domain: TrustDomain, *, now: dt.datetime, ttl: dt.timedelta
    ) -> JwtAuthority:
        return generate_jwt_authority(trust_domain, now=now, ttl=ttl, key_type=self.key_type)


# ---------------------------------------------------------------- planning


def _marks(authority: X509Authority | JwtAuthority) -> tuple[dt.datetime, dt.datetime]:
    lifetime = authority.not_after - authority.not_before
    return authority.not_before + lifetime / 2, authority.not_before + lifetime * 5 / 6


def _plan_kind(
    kind: KeyKind,
    slots: tuple[Slot[X509Authority], ...] | tuple[Slot[JwtAuthority], ...],
    *,
    now: dt.datetime,
    policy: RotationPolicy,
    force: bool,
) -> list[RotationAction]:
    if not slots:
        return [Prepare(kind, forced=force), Activate(kind)]
    active = next((s for s in slots if s.state is AuthorityState.ACTIVE), None)
    prepared = next((s for s in slots if s.state is AuthorityState.PREPARED), None)
    actions: list[RotationAction] = []
    if active is None:
        # Only reachable from a hand-edited state: recover by activating what exists.
        if prepared is None:
            actions.append(Prepare(kind, forced=force))
        actions.append(Activate(kind))
        return actions
    prepare_at, activate_at = _marks(active.authority)
    if prepared is None and (force or now >= prepare_at):
        actions.append(Prepare(kind, forced=force))
    elif prepared is not None:
        lead_done = now >= prepared.published_at + policy.min_publish_lead
        due = now >= activate_at or prepared.forced or force
        if (due and lead_done) or now >= active.authority.not_after:
            actions.append(Activate(kind))
    for slot in slots:
        if (
            slot.state is AuthorityState.OLD
            and now >= slot.authority.not_after + policy.prune_grace
            and len(slots) > 1
        ):
            actions.append(Prune(kind, slot.key_id))
    return actions


def plan_rotation(
    state: CaState, *, now: dt.datetime, policy: RotationPolicy, force: bool = False
) -> tuple[RotationAction, ...]:
    """What to do at ``now``: prepare, activate, prune (pure; may be empty)."""
    return tuple(
        _plan_kind("x509", state.x509, now=now, policy=policy, force=force)
        + _plan_kind("jwt", state.jwt, now=now, policy=policy, force=force)
    )


def _apply_kind(
    slots: tuple[Slot[A], ...],
    actions: list[RotationAction],
    *,
    now: dt.datetime,
    mint: A | None,
) -> tuple[tuple[Slot[A], ...], bool]:
    changed = False
    out = list(slots)
    for action in actions:
        if isinstance(action, Prepare):
            assert mint is not None
            out.append(Slot(mint, AuthorityState.PREPARED, now, forced=action.forced))
            changed = True
        elif isinstance(action, Activate):
            if not any(s.state is AuthorityState.PREPARED for s in out):
                continue
            out = [
                replace(s, state=AuthorityState.OLD)
                if s.state is AuthorityState.ACTIVE
                else replace(s, state=AuthorityState.ACTIVE)
                if s.state is AuthorityState.PREPARED
                else s
                for s in out
            ]
        else:
            remaining = [
                s for s in out if s.key_id != action.key_id or s.state is not AuthorityState.OLD
            ]
            if remaining and len(remaining) < len(out):
                out = remaining
                changed = True
    return tuple(out), changed


def apply_rotation(
    state: CaState,
    actions: tuple[RotationAction, ...],
    *,
    now: dt.datetime,
    policy: RotationPolicy,
    factory: AuthorityFactory,
) -> CaState:
    """The state after ``actions``; the sequence goes up by one if the bundle changed."""
    td = state.trust_domain
    x_actions = [a for a in actions if a.kind == "x509"]
    j_actions = [a for a in actions if a.kind == "jwt"]
    x_mint = (
        factory.x509(td, now=now, ttl=policy.ca_ttl)
        if any(isinstance(a, Prepare) for a in x_actions)
        else None
    )
    j_mint = (
        factory.jwt(td, now=now, ttl=policy.jwt_key_ttl)
        if any(isinstance(a, Prepare) for a in j_actions)
        else None
    )
    x509_slots, x_changed = _apply_kind(state.x509, x_actions, now=now, mint=x_mint)
    jwt_slots, j_changed = _apply_kind(state.jwt, j_actions, now=now, mint=j_mint)
    sequence = state.sequence + 1 if (x_changed or j_changed) else state.sequence
    return CaState(td, x509_slots, jwt_slots, sequence)


def rotate(
    state: CaState,
    *,
    now: dt.datetime,
    policy: RotationPolicy,
    factory: AuthorityFactory,
    force: bool = False,
) -> tuple[CaState, tuple[RotationAction, ...]]:
    """Plan and apply in one step; returns the new state and what was done."""
    actions = plan_rotation(state, now=now, policy=policy, force=force)
    if not actions:
        return state, actions
    return apply_rotation(state, actions, now=now, policy=policy, factory=factory), actions


def bootstrap_ca_state(
    trust_domain: TrustDomain,
    *,
    now: dt.datetime,
    policy: RotationPolicy,
    factory: AuthorityFactory | None = None,
) -> CaState:
    """A new domain's first state: one active X.509 CA and one active JWT key."""
    state, _ = rotate(
        CaState(trust_domain),
        now=now,
        policy=policy,
        factory=factory or GeneratingAuthorityFactory(),
    )
    return state


def next_rotation_event(state: CaState, *, policy: RotationPolicy) -> dt.datetime | None:
    """The earliest future instant at which :func:`plan_rotation` may act (for timers/status)."""
    times: list[dt.datetime] = []
    for slots in (state.x509, state.jwt):
        s: Slot[X509Authority] | Slot[JwtAuthority]
        for s in slots:
            if s.state is AuthorityState.ACTIVE:
                prepare_at, activate_at = _marks(s.authority)
                has_prepared = any(o.state is AuthorityState.PREPARED for o in slots)
                times.append(activate_at if has_prepared else prepare_at)
                times.append(s.authority.not_after)
            elif s.state is AuthorityState.PREPARED:
                times.append(s.published_at + policy.min_publish_lead)
            else:
                times.append(s.authority.not_after + policy.prune_grace)
    return min(times) if times else None


def svid_needs_renewal(svid: X509Svid, *, now: dt.datetime, active: X509Authority) -> bool:
    """Renew at half the SVID's lifetime, or at once when the signing CA changed."""
    if svid.issuer_key_id != active.key_id:
        return True
    half = svid.not_before + (svid.not_after - svid.not_before) / 2
    return now >= half
