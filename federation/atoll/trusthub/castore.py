"""The federation's CA state in the store, shared by every control-plane replica.

Where and how
-------------
The :class:`~atoll_trust.rotation.CaState` of the federation domain lives at
``/atoll/trust/ca/<domain>`` — outside the ``/atoll/v1/`` resource prefix, so
no resource watch, REST listing or sync table ever carries it — as the JSON of
:func:`~atoll_trust.castate.dump_ca_state`: certificates in clear, every
private key sealed with the KEK (AES-256-GCM bound to the trust domain). All
replicas must load the same KEK (``--kek-file`` or ``$ATOLL_TRUST_KEK``); a
replica with another KEK fails at start with
:class:`~atoll_trust.errors.KeyDecryptionError` instead of forking the domain.

* **Created once**: a replica that finds no state bootstraps one and writes it
  with ``expect=0`` (create only). Two replicas starting together: one write
  wins, the loser re-reads and uses the winner's CA.
* **Rotated by the leader** (:meth:`FederationCa.rotate`): read, plan with
  :func:`~atoll_trust.rotation.rotate` (SPIRE's schedule, pure), write with
  compare-and-swap on the revision read; a lost race re-reads and re-plans,
  never overwrites.
* **Watched by every replica** (:meth:`FederationCa.watch`): each new state
  re-keys the replica's own SVID and its TLS roots.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from atoll.errors import ConflictError
from atoll.store import EventType, Store
from atoll.store.watching import Snapshot, list_and_watch
from atoll_trust.castate import dump_ca_state, load_ca_state
from atoll_trust.errors import CaStateCorruptError
from atoll_trust.kek import KeyEncryptor
from atoll_trust.rotation import (
    AuthorityFactory,
    CaState,
    GeneratingAuthorityFactory,
    RotationAction,
    RotationPolicy,
    bootstrap_ca_state,
    rotate,
)
from atoll_trust.spiffe_id import TrustDomain

__all__ = ["CA_PREFIX", "FederationCa", "StoredCa", "ca_key"]

log = logging.getLogger("atoll.trusthub.ca")

CA_PREFIX = "/atoll/trust/ca/"
_ATTEMPTS = 8


def ca_key(trust_domain: TrustDomain) -> str:
    return CA_PREFIX + trust_domain.name


@dataclass(frozen=True, slots=True)
class StoredCa:
    """A CA state and the store revision it was read at (for CAS)."""

    state: CaState
    revision: int


class FederationCa:
    def __init__(
        self,
        store: Store,
        *,
        trust_domain: TrustDomain,
        encryptor: KeyEncryptor,
        policy: RotationPolicy,
        clock: Callable[[], dt.datetime],
        factory: AuthorityFactory | None = None,
    ) -> None:
        self.store = store
        self.trust_domain = trust_domain
        self.encryptor = encryptor
        self.policy = policy
        self.clock = clock
        self.factory = factory or GeneratingAuthorityFactory(policy.key_type)
        self.key = ca_key(trust_domain)

    def _decode(self, data: bytes, revision: int) -> StoredCa:
        state = load_ca_state(data, self.encryptor)
        if state.trust_domain != self.trust_domain:
            raise CaStateCorruptError(
                f"{self.key} holds the CA of {state.trust_domain}, not {self.trust_domain}"
            )
        return StoredCa(state, revision)

    async def read(self) -> StoredCa | None:
        entry = await self.store.get(self.key)
        return None if entry is None else self._decode(entry.value, entry.mod_revision)

    async def load_or_create(self) -> StoredCa:
        """The stored CA, bootstrapping it (create-only write) if there is none."""
        for _ in range(_ATTEMPTS):
            found = await self.read()
            if found is not None:
                return found
            state = bootstrap_ca_state(
                self.trust_domain, now=self.clock(), policy=self.policy, factory=self.factory
            )
            try:
                entry = await self.store.put(
                    self.key, dump_ca_state(state, self.encryptor), expect=0
                )
            except ConflictError:
                continue  # another replica created it first: use theirs
            log.info(
                "federation CA created",
                extra={"trust_domain": self.trust_domain.name, "kek_id": self.encryptor.key_id},
            )
            return StoredCa(state, entry.mod_revision)
        raise ConflictError(self.key, expected=0, actual_revision=-1)

    async def rotate(self, *, force: bool = False) -> tuple[StoredCa, tuple[RotationAction, ...]]:
        """Apply what the schedule (or ``force``) calls for now, with CAS; may do nothing."""
        for _ in range(_ATTEMPTS):
            current = await self.load_or_create()
            state, actions = rotate(
                current.state,
                now=self.clock(),
                policy=self.policy,
                factory=self.factory,
                force=force,
            )
            if not actions:
                return current, actions
            try:
                entry = await self.store.put(
                    self.key, dump_ca_state(state, self.encryptor), expect=current.revision
                )
            except ConflictError:
                continue
            log.info(
                "federation CA rotated",
                extra={
                    "trust_domain": self.trust_domain.name,
                    "actions": [type(a).__name__ + ":" + a.kind for a in actions],
                    "sequence": state.sequence,
                    "forced": force,
                },
            )
            return StoredCa(state, entry.mod_revision), actions
        raise ConflictError(self.key, expected=-1, actual_revision=-1)

    async def watch(self) -> AsyncIterator[StoredCa]:
        """Every stored state, the current one first (forever)."""
        async for obs in list_and_watch(self.store, self.key):
            if isinstance(obs, Snapshot):
                for entry in obs.entries:
                    if entry.key == self.key:
                        yield self._decode(entry.value, entry.mod_revision)
                continue
            for ev in obs.events:
                if ev.key == self.key and ev.type is EventType.PUT:
                    yield self._decode(ev.entry.value, ev.revision)
