"""What the Workload API serves: an immutable snapshot per version, and who keeps it fresh.

* :class:`WorkloadSnapshot` — every workload's X.509-SVIDs plus the bundle set
  (own domain and federated domains), with a version that grows on every change.
* :class:`SnapshotHub` — holds the current snapshot; :meth:`SnapshotHub.wait_newer`
  lets each open stream wait for the next version. Publishing replaces the
  snapshot and wakes the waiters; a stream that falls behind sees only the latest
  snapshot (updates coalesce, nothing queues up per stream).
* :class:`IdentityManager` — given the domain's :class:`~atoll_trust.rotation.CaState`
  and the registered workloads, mints X.509-SVIDs that are missing or due for
  renewal (half-life, or at once after a CA activation) and publishes them; it
  also mints JWT-SVIDs on demand from the active JWT key.

Concurrency: all of it lives on one asyncio event loop (the agent's). ``publish``
and ``refresh`` are plain methods called from that loop; there is no lock
because nothing awaits between reading and replacing the snapshot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from atoll_trust.bundle import BundleSet
from atoll_trust.ca import issue_jwt_svid, mint_x509_svid
from atoll_trust.clock import Clock
from atoll_trust.errors import IssuanceError
from atoll_trust.rotation import CaState, RotationPolicy, svid_needs_renewal
from atoll_trust.spiffe_id import SpiffeId, TrustDomain
from atoll_trust.svid import JwtSvid, X509Svid

__all__ = ["IdentityManager", "SnapshotHub", "WorkloadRegistration", "WorkloadSnapshot"]


@dataclass(frozen=True, slots=True)
class WorkloadRegistration:
    """A workload entitled to identities; ``name`` keys its socket and its SVIDs."""

    name: str
    spiffe_ids: tuple[SpiffeId, ...]
    dns_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise IssuanceError(f"workload name {self.name!r} must be non-empty without '/'")
        if not self.spiffe_ids:
            raise IssuanceError(f"workload {self.name} needs at least one SPIFFE ID")


@dataclass(frozen=True, slots=True)
class WorkloadSnapshot:
    """Everything the Workload API serves at one version."""

    version: int
    trust_domain: TrustDomain
    bundles: BundleSet
    svids: Mapping[str, tuple[X509Svid, ...]] = field(default_factory=dict)

    def svids_for(self, workload: str) -> tuple[X509Svid, ...]:
        return self.svids.get(workload, ())


class SnapshotHub:
    """The current :class:`WorkloadSnapshot` and a way to wait for the next one."""

    __slots__ = ("_changed", "_snapshot")

    def __init__(self, trust_domain: TrustDomain, bundles: BundleSet | None = None) -> None:
        self._snapshot = WorkloadSnapshot(0, trust_domain, bundles or BundleSet())
        self._changed = asyncio.Event()

    @property
    def current(self) -> WorkloadSnapshot:
        return self._snapshot

    def publish(
        self,
        *,
        bundles: BundleSet | None = None,
        svids: Mapping[str, tuple[X509Svid, ...]] | None = None,
    ) -> WorkloadSnapshot:
        """Replace the bundles and/or SVIDs; bumps the version only if something changed."""
        old = self._snapshot
        new_bundles = old.bundles if bundles is None else bundles
        new_svids = old.svids if svids is None else dict(svids)
        if new_bundles == old.bundles and new_svids == old.svids:
            return old
        self._snapshot = WorkloadSnapshot(old.version + 1, old.trust_domain, new_bundles, new_svids)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return self._snapshot

    async def wait_newer(self, version: int) -> WorkloadSnapshot:
        """Return the first snapshot with a version above ``version`` (now or later)."""
        while self._snapshot.version <= version:
            await self._changed.wait()
        return self._snapshot


class IdentityManager:
    """Keeps every registered workload's X.509-SVIDs fresh and mints JWT-SVIDs."""

    __slots__ = ("_ca", "_clock", "_hub", "_policy", "_workloads")

    def __init__(
        self,
        hub: SnapshotHub,
        *,
        ca_state: CaState,
        policy: RotationPolicy,
        clock: Clock,
        workloads: Iterable[WorkloadRegistration] = (),
    ) -> None:
        self._hub = hub
        self._ca = ca_state
        self._policy = policy
        self._clock = clock
        self._workloads: dict[str, WorkloadRegistration] = {w.name: w for w in workloads}

    @property
    def workloads(self) -> tuple[WorkloadRegistration, ...]:
        return tuple(self._workloads.values())

    def register(self, workload: WorkloadRegistration) -> None:
        for sid in workload.spiffe_ids:
            if sid.trust_domain != self._ca.trust_domain:
                raise IssuanceError(f"{sid} is not in trust domain {self._ca.trust_domain}")
        self._workloads[workload.name] = workload

    def unregister(self, name: str) -> None:
        self._workloads.pop(name, None)

    def set_ca_state(self, ca_state: CaState) -> None:
        """Take a rotated CA state; call :meth:`refresh` afterwards to re-issue."""
        self._ca = ca_state

    def refresh(self, *, bundles: BundleSet | None = None) -> WorkloadSnapshot:
        """Mint missing or due SVIDs, drop unregistered workloads, publish if changed.

        ``bundles`` replaces the federated bundle set; the own domain's bundle
        is always taken from the CA state so it can never lag the signing key.
        """
        now = self._clock()
        active = self._ca.active_x509
        current = self._hub.current
        out: dict[str, tuple[X509Svid, ...]] = {}
        for name, reg in self._workloads.items():
            have = {s.spiffe_id: s for s in current.svids_for(name)}
            fresh: list[X509Svid] = []
            for sid in reg.spiffe_ids:
                old = have.get(sid)
                if old is None or svid_needs_renewal(old, now=now, active=active):
                    old = mint_x509_svid(
                        active,
                        sid,
                        now=now,
                        ttl=self._policy.x509_svid_ttl,
                        key_type=self._policy.key_type,
                        dns_names=reg.dns_names,
                    )
                fresh.append(old)
            out[name] = tuple(fresh)
        base = current.bundles if bundles is None else bundles
        own = self._ca.bundle(refresh_hint=self._policy.refresh_hint)
        merged = base.without(own.trust_domain)
        merged = merged.with_bundle(own)
        return self._hub.publish(bundles=merged, svids=out)

    def issue_jwt(self, spiffe_id: SpiffeId, audience: Iterable[str]) -> JwtSvid:
        """A JWT-SVID from the active JWT key (caller checks the entitlement)."""
        return issue_jwt_svid(
            self._ca.active_jwt,
            spiffe_id,
            audience=audience,
            now=self._clock(),
            ttl=self._policy.jwt_svid_ttl,
        )

    def next_renewal(self) -> dt.datetime | None:
        """When :meth:`refresh` next has work (half-life of the earliest SVID)."""
        times = [
            s.not_before + (s.not_after - s.not_before) / 2
            for svids in self._hub.current.svids.values()
            for s in svids
        ]
        return min(times) if times else None
