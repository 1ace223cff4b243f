"""The control plane's trust hub: one object per replica that wires the trust layer in.

What each replica does (:meth:`TrustHub.start`, :meth:`TrustHub.run`):

* loads — or, first of all replicas, creates — the federation CA from the
  store (:mod:`.castore`), sealed under the KEK every replica shares;
* mints its own ``spiffe://<fed>/control-plane`` SVID and re-mints it at half
  its life or as soon as another CA key signs (:mod:`.servertls`);
* watches the CA key, so a rotation done by the leader reaches every replica;
* follows the TrustDomain table (fed by the store watch like every synced
  kind) to know each cluster's bundle — the roots it verifies DNS servers'
  and gateways' SVIDs with — and reloads its server TLS roots when they change;
* publishes the federation domain's TrustDomain resource from its CA state.

What only the leader does (:meth:`TrustHub.lead`): rotate the federation CA
on SPIRE's schedule (timers from :func:`~atoll_trust.rotation.next_rotation_event`,
capped at a minute so a missed wake-up costs little), carry out forced
rotations the operator requested, and poll foreign bundle endpoints
(:mod:`.foreign`).

The REST API reaches it through :class:`~atoll.api.trust.TrustApi`, which
this class implements: join tokens, rotation requests, federation
relationships, status.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from atoll.aio import Backoff, Sleep
from atoll.control.repo import Repo, mutate
from atoll.errors import AtollError, ConflictError, NotFoundError, RetryableError
from atoll.model import TrustDomain, TrustDomainSpec, decode
from atoll.model.trust import domain_label
from atoll.store import Store
from atoll.sync import ResourceTable
from atoll.trusthub import metrics
from atoll.trusthub.authz import SpiffeAuthorizer
from atoll.trusthub.castore import FederationCa, StoredCa
from atoll.trusthub.domains import bundle_of, federation_resource, peer_bundles
from atoll.trusthub.enroll import EnrollmentServicer
from atoll.trusthub.foreign import poll_foreign_domains
from atoll.trusthub.naming import DEFAULT_FEDERATION_DOMAIN, parse_federation_domain
from atoll.trusthub.servertls import ServerTls, mint_server_svid, plan_server_svid
from atoll.trusthub.tokens import IssuedToken, JoinTokens
from atoll_trust.bundle import BundleSet, TrustBundle
from atoll_trust.clock import system_clock
from atoll_trust.kek import KeyEncryptor, load_key_encryptor
from atoll_trust.rotation import CaState, RotationPolicy, next_rotation_event
from atoll_trust.svid import X509Svid
from atoll_trust.tls import pooled_roots_pem

__all__ = ["TrustHub", "TrustSettings"]

log = logging.getLogger("atoll.trusthub")

MAX_TIMER = 60.0


@dataclass(frozen=True, slots=True)
class TrustSettings:
    """The control plane's trust configuration (``atoll serve`` options)."""

    federation_domain: str = DEFAULT_FEDERATION_DOMAIN
    #: None: the KEK comes from $ATOLL_TRUST_KEK
    kek_file: Path | None = None
    policy: RotationPolicy = field(default_factory=RotationPolicy)


class TrustHub:
    def __init__(
        self,
        store: Store,
        *,
        settings: TrustSettings,
        domains: ResourceTable,
        reportable: Mapping[str, frozenset[str]],
        encryptor: KeyEncryptor | None = None,
        clock: Callable[[], dt.datetime] = system_clock,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.federation = parse_federation_domain(settings.federation_domain)
        self.policy = settings.policy
        self.repo = Repo(store)
        self.clock = clock
        self.sleep = sleep
        self.encryptor = encryptor or load_key_encryptor(settings.kek_file)
        self.ca_store = FederationCa(
            store,
            trust_domain=self.federation,
            encryptor=self.encryptor,
            policy=self.policy,
            clock=clock,
        )
        self.tokens = JoinTokens(store, clock=clock)
        self.tls = ServerTls()
        self.federation_name = domain_label(self.federation.name)
        self._ca: StoredCa | None = None
        self._svid: X509Svid | None = None
        self._domains_table = domains
        self._domains: dict[str, TrustDomain] = {}
        self._seen_foreign: dict[str, int] = {}
        self._parsed: dict[str, tuple[int, TrustBundle | None]] = {}
        self._peer_bundles = BundleSet()
        self._ca_changed = asyncio.Event()
        self._wake_leader = asyncio.Event()
        self._wake_foreign = asyncio.Event()
        self.authorizer = SpiffeAuthorizer(
            federation=self.federation,
            bundles=lambda: self.peer_bundles,
            lookup=self._lookup,
            reportable=reportable,
            clock=clock,
        )
        self.enrollment = EnrollmentServicer(
            federation=self.federation,
            tokens=self.tokens,
            ca=lambda: self.ca_state,
            policy=self.policy,
            clock=clock,
        )

    # -- state ---------------------------------------------------------------
    @property
    def ca_state(self) -> CaState:
        if self._ca is None:
            raise RuntimeError("the trust hub has not started")
        return self._ca.state

    @property
    def svid(self) -> X509Svid | None:
        return self._svid

    @property
    def peer_bundles(self) -> BundleSet:
        """The bundles sync peers are verified with: the federation's and each cluster's."""
        return self._peer_bundles

    def federation_bundle(self) -> TrustBundle:
        return self.ca_state.bundle(refresh_hint=self.policy.refresh_hint)

    def domains(self) -> list[TrustDomain]:
        return [self._domains[k] for k in sorted(self._domains)]

    def _lookup(self, name: str) -> TrustDomainSpec | None:
        found = self._domains.get(name)
        return None if found is None else found.spec

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Load or create the CA and mint this replica's SVID (before serving TLS).

        A store that is briefly unavailable is waited for (with backoff); a CA
        that does not open with this KEK is fatal and raised.
        """
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            try:
                stored = await self.ca_store.load_or_create()
                break
            except RetryableError as exc:
                delay = backoff.next_delay()
                log.warning(
                    "store unavailable; waiting to load the federation CA",
                    extra={"error": str(exc), "retry_in_s": delay},
                )
                await self.sleep(delay)
        self._set_ca(stored)
        self._domains_table.listen(self._on_domains)
        self._on_domains()
        await self._publish_federation_safely()

    async def run(self) -> None:
        """Every replica: follow the CA, keep the own SVID fresh (forever)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_ca(), name="trust-ca-watch")
            tg.create_task(self._renew_svid(), name="trust-svid")

    async def lead(self) -> None:
        """Leader only: rotation on schedule and on request (forever)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._rotate_loop(), name="trust-rotate")
            tg.create_task(
                poll_foreign_domains(self.repo, clock=self.clock, sleep=self._foreign_pause),
                name="trust-foreign",
            )

    async def _foreign_pause(self, seconds: float) -> None:
        """The poller's pause: until the next due fetch or a TrustDomain change."""
        self._wake_foreign.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake_foreign.wait()

    # -- CA and own identity ---------------------------------------------------
    def _set_ca(self, stored: StoredCa) -> None:
        if self._ca is not None and stored.revision <= self._ca.revision:
            return
        self._ca = stored
        metrics.CA_NOT_AFTER.set(stored.state.active_x509.not_after.timestamp())
        self._refresh_peer_bundles()
        self._ca_changed.set()

    def _refresh_tls(self) -> None:
        ca = self.ca_state
        now = self.clock()
        if plan_server_svid(self._svid, ca, now=now):
            self._svid = mint_server_svid(ca, now=now, policy=self.policy)
            metrics.SVID_MINTS.inc()
            log.info(
                "control-plane SVID minted",
                extra={
                    "spiffe_id": str(self._svid.spiffe_id),
                    "not_after": self._svid.not_after.isoformat(),
                    "ca": self._svid.issuer_key_id[:16],
                },
            )
        assert self._svid is not None
        self.tls.update(self._svid, pooled_roots_pem(self._peer_bundles))

    def _refresh_peer_bundles(self) -> None:
        if self._ca is None:
            return
        self._peer_bundles = peer_bundles(self.federation_bundle(), self._cluster_bundles())
        self._refresh_tls()

    def _cluster_bundles(self) -> list[TrustBundle]:
        """Parsed cluster bundles, re-parsed only when a resource's revision moved."""
        out: list[TrustBundle] = []
        cache: dict[str, tuple[int, TrustBundle | None]] = {}
        for name, res in self._domains.items():
            if res.spec.role != "cluster":
                continue
            hit = self._parsed.get(name)
            if hit is None or hit[0] != res.metadata.revision:
                try:
                    hit = (res.metadata.revision, bundle_of(res))
                except AtollError as exc:
                    log.warning("unusable cluster bundle", extra={"name": name, "error": str(exc)})
                    hit = (res.metadata.revision, None)
            cache[name] = hit
            if hit[1] is not None:
                out.append(hit[1])
        self._parsed = cache
        return out

    async def _watch_ca(self) -> None:
        async for stored in self.ca_store.watch():
            before = self._ca
            self._set_ca(stored)
            if self._ca is not before:
                await self._publish_federation_safely()

    async def _renew_svid(self) -> None:
        while True:
            svid = self._svid
            delay = MAX_TIMER
            if svid is not None:
                half = svid.not_before + (svid.not_after - svid.not_before) / 2
                delay = min(MAX_TIMER, max(1.0, (half - self.clock()).total_seconds()))
            self._ca_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._ca_changed.wait()
            self._refresh_tls()

    async def _publish_federation_safely(self) -> None:
        """Publish the federation TrustDomain; a failure is retried at the next CA change
        or leader pass (the resource is derived state, level-triggered)."""
        try:
            await self._publish_federation()
        except (RetryableError, ConflictError) as exc:
            log.warning("federation TrustDomain not published yet", extra={"error": str(exc)})

    async def _publish_federation(self) -> None:
        ca = self.ca_state

        def change(current: TrustDomain | None) -> TrustDomain | None:
            return federation_resource(ca, stored=current, policy=self.policy, now=self.clock())

        await mutate(self.repo, TrustDomain, ("federation", self.federation_name), change)

    # -- TrustDomain table -------------------------------------------------------
    def _on_domains(self, _type: str = "") -> None:
        snap = self._domains_table.snapshot()
        decoded: dict[str, TrustDomain] = {}
        for name, item in snap.items.items():
            old = self._domains.get(name)
            if old is not None and str(old.metadata.revision) == item.version:
                decoded[name] = old
                continue
            try:
                decoded[name] = decode(TrustDomain, item.body, revision=int(item.version or 0))
            except (AtollError, ValueError) as exc:
                log.warning("undecodable TrustDomain", extra={"name": name, "error": str(exc)})
        self._domains = decoded
        self._refresh_peer_bundles()
        self._wake_leader.set()
        foreign = {n: r.metadata.revision for n, r in decoded.items() if n.startswith("foreign/")}
        if foreign != self._seen_foreign:
            self._seen_foreign = foreign
            self._wake_foreign.set()  # registered, changed or removed: the poller re-plans

    # -- leader ------------------------------------------------------------------
    async def _rotate_loop(self) -> None:
        backoff = Backoff(base=0.5, cap=MAX_TIMER)
        while True:
            self._wake_leader.clear()
            delay = MAX_TIMER
            try:
                stored, actions = await self.ca_store.rotate()
                for a in actions:
                    metrics.CA_ROTATIONS.labels(action=type(a).__name__.lower()).inc()
                stored = await self._forced_rotation(stored)
                self._set_ca(stored)
                await self._publish_federation()
                backoff.reset()
                due = next_rotation_event(stored.state, policy=self.policy)
                if due is not None:
                    delay = min(MAX_TIMER, max(0.5, (due - self.clock()).total_seconds()))
            except (RetryableError, ConflictError) as exc:
                # the loop's one catch-all for transient store trouble: plan again later
                delay = backoff.next_delay()
                log.warning(
                    "federation CA rotation pass failed; retrying",
                    extra={"error": str(exc), "retry_in_s": delay},
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake_leader.wait()

    async def _forced_rotation(self, stored: StoredCa) -> StoredCa:
        res = await self.repo.get(TrustDomain, ("federation", self.federation_name))
        if res is None or res.spec.rotate_generation <= res.status.rotated_generation:
            return stored
        stored, actions = await self.ca_store.rotate(force=True)
        for a in actions:
            metrics.CA_ROTATIONS.labels(action=type(a).__name__.lower()).inc()
        wanted = res.spec.rotate_generation

        def done(current: TrustDomain | None) -> TrustDomain | None:
            if current is None:
                return None
            status = current.status.model_copy(update={"rotated_generation": wanted})
            return current.model_copy(update={"status": status})

        await mutate(self.repo, TrustDomain, ("federation", self.federation_name), done)
        log.info("forced federation CA rotation", extra={"generation": wanted})
        return stored

    # -- operator requests (the REST API's TrustApi) -----------------------------
    async def create_join_token(self, cluster: str, ttl: dt.timedelta) -> IssuedToken:
        issued = await self.tokens.create(cluster, ttl)
        metrics.JOIN_TOKENS.inc()
        log.info(
            "join token created",
            extra={"cluster": cluster, "expires_at": issued.expires_at.isoformat()},
        )
        return issued

    async def request_rotation(self, path: tuple[str, str]) -> TrustDomain:
        """Ask the CA owner of ``namespace/name`` to rotate once (bumps rotate_generation)."""
        if await self.repo.get(TrustDomain, path) is None:
            raise NotFoundError(
                f"trust domain {'/'.join(path)} not found (a cluster's appears once its agent "
                "has reported it)"
            )

        def bump(current: TrustDomain | None) -> TrustDomain | None:
            if current is None:
                return None
            spec = current.spec.model_copy(
                update={"rotate_generation": current.spec.rotate_generation + 1}
            )
            return current.model_copy(update={"spec": spec})

        updated = await mutate(self.repo, TrustDomain, path, bump)
        if updated is None:
            raise NotFoundError(f"trust domain {'/'.join(path)} not found")
        self._wake_leader.set()
        log.info(
            "rotation requested",
            extra={
                "trust_domain": updated.spec.trust_domain,
                "generation": updated.spec.rotate_generation,
            },
        )
        return updated
