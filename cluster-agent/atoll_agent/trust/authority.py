"""The cluster's own CA and Workload API, hosted by its agent.

* **CA state** — ``cluster-ca.json`` in the agent's state dir, every private
  key sealed with the KEK (:mod:`atoll_trust.castate`). Created on first start
  (:func:`~atoll_trust.rotation.bootstrap_ca_state`); a file that does not open
  with the KEK stops the agent — it never silently starts a new CA, which
  would fork the trust domain (the control plane would also refuse the new
  bundle's lower or conflicting sequence).
* **Rotation** — SPIRE's schedule from :mod:`atoll_trust.rotation` (pure):
  the loop sleeps until :func:`~atoll_trust.rotation.next_rotation_event` (or
  the earliest SVID renewal, capped at a minute), applies :func:`~atoll_trust.rotation.rotate`,
  persists, re-issues SVIDs and re-reports the bundle. A forced rotation
  (``atoll trust rotate --cluster X``) arrives as a higher
  ``rotate_generation`` on the cluster's own TrustDomain over the sync stream;
  the generation carried out is persisted in ``cluster-ca-rotation.json`` (so
  a restart does not rotate twice) and reported back as
  ``status.rotated_generation``.
* **Workload API** — one unix socket per registered workload under the socket
  directory (:mod:`atoll_trust.workload_api`), serving SVIDs of the cluster
  domain and the bundles the agent holds: its own (always straight from the CA
  state, so it can never lag the signing key) plus every federated one it
  received. A rotation or a bundle change reaches open streams at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from atoll.model import TrustDomain as TrustDomainResource
from atoll.statefile import load_state, save_state
from atoll.trusthub.domains import cluster_resource
from atoll.trusthub.naming import cluster_domain
from atoll_trust.bundle import BundleSet, TrustBundle
from atoll_trust.castate import read_ca_state_file, write_ca_state_file
from atoll_trust.errors import CaStateCorruptError
from atoll_trust.kek import KeyEncryptor
from atoll_trust.rotation import (
    CaState,
    GeneratingAuthorityFactory,
    RotationPolicy,
    bootstrap_ca_state,
    next_rotation_event,
    rotate,
)
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.workload_api import (
    IdentityManager,
    SnapshotHub,
    WorkloadApiServer,
    WorkloadRegistration,
    WorkloadSocket,
)

__all__ = ["CA_FILE", "ClusterAuthority"]

log = logging.getLogger("atoll.agent.ca")

CA_FILE = "cluster-ca.json"
ROTATION_FILE = "cluster-ca-rotation.json"
_ROTATION_KIND = "atoll.agent.ca-rotation"
MAX_TIMER = 60.0


class ClusterAuthority:
    def __init__(
        self,
        *,
        cluster: str,
        federation: TrustDomain,
        state_dir: Path,
        socket_dir: Path,
        encryptor: KeyEncryptor,
        policy: RotationPolicy,
        workloads: Mapping[str, str],
        federates_with: Iterable[str],
        clock: Callable[[], dt.datetime],
        on_change: Callable[[TrustDomainResource], None],
    ) -> None:
        self.cluster = cluster
        self.federation = federation
        self.trust_domain = cluster_domain(federation, cluster)
        self.ca_path = state_dir / CA_FILE
        self.rotation_path = state_dir / ROTATION_FILE
        self.socket_dir = socket_dir
        self.encryptor = encryptor
        self.policy = policy
        self.federates_with = tuple(federates_with)
        self.clock = clock
        self.on_change = on_change
        self.factory = GeneratingAuthorityFactory(policy.key_type)
        self.state = self._load_or_bootstrap()
        self.rotated_generation = self._load_generation()
        self._wanted_generation = self.rotated_generation
        self.hub = SnapshotHub(self.trust_domain)
        self.identities = IdentityManager(self.hub, ca_state=self.state, policy=policy, clock=clock)
        for name, path in sorted(workloads.items()):
            segments = [seg for seg in path.split("/") if seg]
            self.identities.register(
                WorkloadRegistration(name, (self.trust_domain.spiffe_id(*segments),))
            )
        self.server = WorkloadApiServer(hub=self.hub, identities=self.identities, clock=clock)
        self._federated = BundleSet()
        self._wake = asyncio.Event()
        self.identities.refresh(bundles=self._federated)

    # -- state files -------------------------------------------------------------
    def _load_or_bootstrap(self) -> CaState:
        if self.ca_path.exists():
            state = read_ca_state_file(self.ca_path, self.encryptor)
            if state.trust_domain != self.trust_domain:
                raise CaStateCorruptError(
                    f"{self.ca_path} holds the CA of {state.trust_domain}, not {self.trust_domain}"
                )
            return state
        state = bootstrap_ca_state(
            self.trust_domain, now=self.clock(), policy=self.policy, factory=self.factory
        )
        write_ca_state_file(self.ca_path, state, self.encryptor)
        log.info(
            "cluster CA created",
            extra={"trust_domain": self.trust_domain.name, "kek_id": self.encryptor.key_id},
        )
        return state

    def _load_generation(self) -> int:
        payload = load_state(self.rotation_path, _ROTATION_KIND)
        if isinstance(payload, dict) and isinstance(payload.get("generation"), int):
            return int(payload["generation"])
        return 0

    # -- what the agent reports and serves ------------------------------------------
    def report(self) -> TrustDomainResource:
        """This cluster's TrustDomain as the agent reports it."""
        return cluster_resource(
            self.state,
            federation=self.federation,
            cluster=self.cluster,
            policy=self.policy,
            federates_with=self.federates_with,
            rotated_generation=self.rotated_generation,
        )

    @property
    def own_bundle(self) -> TrustBundle:
        return self.state.bundle(refresh_hint=self.policy.refresh_hint)

    @property
    def bundles(self) -> BundleSet:
        """Everything the Workload API serves: own bundle and federated ones."""
        return self.hub.current.bundles

    def set_federated(self, bundles: BundleSet) -> None:
        """Replace the federated bundles (own domain excluded); streams see it at once."""
        self._federated = bundles.without(self.trust_domain)
        self.identities.refresh(bundles=self._federated)

    def request_rotation(self, generation: int) -> None:
        """The operator asked for rotation ``generation`` (from the sync stream)."""
        if generation > self._wanted_generation:
            self._wanted_generation = generation
            self._wake.set()

    # -- run --------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the Workload API sockets and keep the CA rotating (forever)."""
        for name in sorted(w.name for w in self.identities.workloads):
            await self.server.add_workload(WorkloadSocket(name, self.socket_dir / f"{name}.sock"))
        try:
            while True:
                self._wake.clear()
                self.step()
                await self._sleep_until_due()
        finally:
            await self.server.stop(grace=0.2)

    def step(self) -> None:
        """One pass: scheduled or forced rotation, SVID renewal (pure planning inside)."""
        force = self._wanted_generation > self.rotated_generation
        state, actions = rotate(
            self.state,
            now=self.clock(),
            policy=self.policy,
            factory=self.factory,
            force=force,
        )
        if force:
            self.rotated_generation = self._wanted_generation
            save_state(self.rotation_path, _ROTATION_KIND, {"generation": self.rotated_generation})
        if actions:
            write_ca_state_file(self.ca_path, state, self.encryptor)
            self.state = state
            self.identities.set_ca_state(state)
            log.info(
                "cluster CA rotated",
                extra={
                    "trust_domain": self.trust_domain.name,
                    "actions": [f"{type(a).__name__}:{a.kind}" for a in actions],
                    "sequence": state.sequence,
                    "forced": force,
                },
            )
        self.identities.refresh(bundles=self._federated)
        if actions or force:
            self.on_change(self.report())

    async def _sleep_until_due(self) -> None:
        now = self.clock()
        times = [
            t
            for t in (
                next_rotation_event(self.state, policy=self.policy),
                self.identities.next_renewal(),
            )
            if t is not None
        ]
        delay = MAX_TIMER
        if times:
            delay = min(MAX_TIMER, max(0.2, (min(times) - now).total_seconds()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
