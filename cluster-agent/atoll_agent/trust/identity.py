"""The agent's federation identity: enroll once with a join token, persist, renew over mTLS.

The agent's X.509-SVID ``spiffe://<fed>/cluster/<X>`` is what it presents on
the sync stream. Its life:

1. **Start** (:func:`decide_startup`, pure): a persisted, unexpired SVID is
   used as is — a restarted agent needs no token, and a token given again is
   ignored (it was used up anyway). With no usable SVID, a join token is
   required; without one the agent stops with a message saying how to get one.
2. **Enroll**: a fresh key (never leaves the process or its state file), a
   CSR over it, ``Enroll`` on the control plane's enrollment port with TLS that
   trusts only the federation bundle from ``--federation-bundle`` and checks
   the control plane's name. The answer is accepted only if
   (:func:`accept_identity`, pure) the SVID verifies against the federation
   bundle, names exactly this cluster's agent ID and carries our public key.
3. **Persist** ``identity.json`` (0600, atomic): chain, key, federation
   bundle. The key is protected by file permissions, like an SSH host key;
   the *CA* keys are what the KEK seals.
4. **Renew** at half the SVID's life with ``Renew`` over the sync port's mTLS,
   authenticated by the current SVID; failures retry with backoff until the
   SVID expires, after which only a new join token helps (as with SPIRE).
5. **Federation bundle updates** arrive with every renewal and over the sync
   stream (the ``federation/...`` TrustDomain); they are stored through
   :meth:`~atoll_trust.bundle.BundleSet.with_bundle` (never a lower sequence)
   and persisted, so the agent keeps trusting the control plane across its CA
   rotations even after a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from atoll.aio import Backoff, Sleep
from atoll.errors import AtollError, FatalError
from atoll.fileio import write_private_file
from atoll.sync.client import ChannelOption
from atoll.sync.v1 import enrollment_pb2 as pb
from atoll.sync.v1 import enrollment_pb2_grpc as pb_grpc
from atoll.trusthub.client import (
    IdentityNotReadyError,
    channel_credentials,
    control_plane_channel_options,
)
from atoll.trusthub.naming import agent_id
from atoll_trust.bundle import BundleSet, TrustBundle, parse_bundle, render_bundle
from atoll_trust.errors import BundleRejectedError, InvalidBundleError, SvidVerificationError
from atoll_trust.jose import KeyType, PrivateKey, generate_private_key
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.svid import X509Svid
from atoll_trust.verify import check_x509_svid_leaf, parse_der_chain, verify_x509_svid

__all__ = [
    "AgentIdentity",
    "EnrollmentRefusedError",
    "IdentityState",
    "accept_identity",
    "decide_startup",
    "load_identity",
    "renewal_time",
]

log = logging.getLogger("atoll.agent.identity")

IDENTITY_FILE = "identity.json"
_VERSION = 1
RPC_TIMEOUT = 10.0


class EnrollmentRefusedError(FatalError):
    """The control plane refused the join token (used, expired, unknown): do not retry."""


@dataclass(frozen=True, slots=True)
class IdentityState:
    svid: X509Svid
    federation_bundle: TrustBundle


def _spki(key: object) -> bytes:
    der: bytes = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def dump_identity(state: IdentityState) -> bytes:
    return json.dumps(
        {
            "version": _VERSION,
            "spiffe_id": str(state.svid.spiffe_id),
            "chain_pem": state.svid.chain_pem().decode(),
            "key_pem": state.svid.private_key_pem().decode(),
            "federation_domain": state.federation_bundle.trust_domain.name,
            "federation_bundle": render_bundle(state.federation_bundle).decode(),
        },
        indent=2,
    ).encode()


def load_identity(path: Path, *, federation: TrustDomain) -> IdentityState | None:
    """The persisted identity, None if there is none; a damaged file is fatal."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(data)
        if doc["version"] != _VERSION or doc["federation_domain"] != federation.name:
            raise ValueError(
                f"identity is for {doc.get('federation_domain')!r}, version {doc.get('version')}"
            )
        chain = tuple(x509.load_pem_x509_certificates(doc["chain_pem"].encode()))
        key = serialization.load_pem_private_key(doc["key_pem"].encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("unsupported key type")
        if _spki(key.public_key()) != _spki(chain[0].public_key()):
            raise ValueError("the key does not match the SVID")
        bundle = parse_bundle(doc["federation_bundle"], trust_domain=federation)
        spiffe_id = check_x509_svid_leaf(chain[0])
    except (ValueError, KeyError, TypeError, AtollError) as exc:
        raise FatalError(
            f"the agent identity in {path} is unusable ({exc}); delete it and enroll again "
            "with a new join token"
        ) from exc
    return IdentityState(X509Svid(spiffe_id, chain, key), bundle)


def decide_startup(
    persisted: IdentityState | None, *, has_token: bool, now: dt.datetime
) -> Literal["use", "enroll"]:
    """Use the persisted SVID, or enroll with the token; raise FatalError if neither works."""
    if persisted is not None and now < persisted.svid.not_after:
        return "use"
    if has_token:
        return "enroll"
    if persisted is not None:
        raise FatalError(
            f"the agent's SVID expired at {persisted.svid.not_after.isoformat()}; enroll again "
            "with a new join token (`atoll join-token create --cluster NAME`)"
        )
    raise FatalError(
        "this agent has no identity yet: start it with --join-token (create one with "
        "`atoll join-token create --cluster NAME`) and --federation-bundle, or run with "
        "--insecure in development"
    )


def renewal_time(svid: X509Svid) -> dt.datetime:
    """Renew at half the SVID's life."""
    return svid.not_before + (svid.not_after - svid.not_before) / 2


def accept_identity(
    resp: pb.Identity,
    *,
    key: PrivateKey,
    cluster: str,
    federation: TrustDomain,
    trusted: TrustBundle,
    now: dt.datetime,
) -> IdentityState:
    """Check an Enroll/Renew answer (see the module docstring); raise SvidVerificationError."""
    if resp.federation_domain != federation.name:
        raise SvidVerificationError(
            f"the control plane serves federation {resp.federation_domain!r}, not {federation}"
        )
    try:
        offered = parse_bundle(resp.federation_bundle, trust_domain=federation)
        bundle = BundleSet([trusted]).with_bundle(offered).get(federation) or trusted
    except (InvalidBundleError, BundleRejectedError) as exc:
        log.warning("ignoring the federation bundle in the answer", extra={"error": str(exc)})
        bundle = trusted
    chain = parse_der_chain(resp.x509_svid)
    verified = verify_x509_svid(chain, BundleSet([bundle]), now=now)
    want = agent_id(federation, cluster)
    if verified.spiffe_id != want:
        raise SvidVerificationError(f"issued SVID names {verified.spiffe_id}, expected {want}")
    if _spki(chain[0].public_key()) != _spki(key.public_key()):
        raise SvidVerificationError("issued SVID is not for the key this agent sent")
    return IdentityState(X509Svid(want, chain, key), bundle)


def _csr(key: PrivateKey) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


class AgentIdentity:
    def __init__(
        self,
        *,
        cluster: str,
        federation: TrustDomain,
        state_dir: Path,
        sync_target: str,
        enroll_target: str | None,
        join_token: str | None,
        bundle_file: Path | None,
        clock: Callable[[], dt.datetime],
        key_type: KeyType = KeyType.EC_P256,
        sleep: Sleep = asyncio.sleep,
        backoff: Backoff | None = None,
    ) -> None:
        self.cluster = cluster
        self.federation = federation
        self.path = state_dir / IDENTITY_FILE
        self.sync_target = sync_target
        self.enroll_target = enroll_target
        self.join_token = join_token
        self.bundle_file = bundle_file
        self.clock = clock
        self.key_type = key_type
        self.sleep = sleep
        self.backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.state: IdentityState | None = None
        self.last_error = ""
        self._ready = asyncio.Event()
        self._bundle_changed: Callable[[TrustBundle], None] | None = None

    # -- what others use ----------------------------------------------------------
    @property
    def federation_bundle(self) -> TrustBundle | None:
        return self.state.federation_bundle if self.state is not None else None

    def credentials(self) -> grpc.ChannelCredentials:
        """mTLS credentials for the sync stream (raises until the identity exists)."""
        if self.state is None:
            raise IdentityNotReadyError("the agent has not enrolled yet")
        return channel_credentials(self.state.svid, self.state.federation_bundle)

    def channel_options(self) -> list[ChannelOption]:
        return control_plane_channel_options(self.federation)

    def on_bundle_change(self, callback: Callable[[TrustBundle], None]) -> None:
        self._bundle_changed = callback

    def update_federation_bundle(self, bundle: TrustBundle) -> bool:
        """Take a newer federation bundle (sync stream); raises BundleRejectedError if lower."""
        if self.state is None:
            return False
        current = BundleSet([self.state.federation_bundle])
        updated = current.with_bundle(bundle)
        if updated is current:
            return False
        self._set(replace(self.state, federation_bundle=bundle))
        return True

    def _set(self, state: IdentityState) -> None:
        old = self.state
        write_private_file(self.path, dump_identity(state))
        self.state = state
        self._ready.set()
        if self._bundle_changed is not None and (
            old is None or old.federation_bundle != state.federation_bundle
        ):
            self._bundle_changed(state.federation_bundle)

    # -- start ----------------------------------------------------------------------
    async def ensure(self) -> IdentityState:
        """Load or enroll (retrying while the control plane is unreachable)."""
        persisted = load_identity(self.path, federation=self.federation)
        decision = decide_startup(
            persisted, has_token=self.join_token is not None, now=self.clock()
        )
        if decision == "use":
            assert persisted is not None
            if self.join_token is not None:
                log.info(
                    "using the persisted SVID; ignoring --join-token",
                    extra={"path": str(self.path)},
                )
            self.state = persisted
            self._ready.set()
            if self._bundle_changed is not None:
                self._bundle_changed(persisted.federation_bundle)
            return persisted
        trusted = self._bootstrap_bundle()
        while True:
            try:
                state = await self._enroll(trusted)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    raise EnrollmentRefusedError(f"enrollment refused: {exc.details()}") from exc
                self.last_error = f"{exc.code().name}: {exc.details()}"
            except SvidVerificationError as exc:
                self.last_error = f"enrollment answer refused: {exc}"
            else:
                self.backoff.reset()
                self._set(state)
                log.info("enrolled", extra={"spiffe_id": str(state.svid.spiffe_id)})
                return state
            delay = self.backoff.next_delay()
            log.warning(
                "enrollment failed; retrying", extra={"error": self.last_error, "retry_in_s": delay}
            )
            await self.sleep(delay)

    def _bootstrap_bundle(self) -> TrustBundle:
        assert self.bundle_file is not None
        try:
            data = self.bundle_file.read_bytes()
        except OSError as exc:
            raise FatalError(
                f"cannot read the federation bundle {self.bundle_file}: {exc}"
            ) from exc
        try:
            return parse_bundle(data, trust_domain=self.federation)
        except InvalidBundleError as exc:
            raise FatalError(f"federation bundle {self.bundle_file}: {exc}") from exc

    async def _enroll(self, trusted: TrustBundle) -> IdentityState:
        assert self.enroll_target is not None and self.join_token is not None
        key = generate_private_key(self.key_type)
        creds = channel_credentials(None, trusted)
        async with grpc.aio.secure_channel(
            self.enroll_target, creds, options=self.channel_options()
        ) as channel:
            resp = await pb_grpc.EnrollmentStub(channel).Enroll(
                pb.EnrollRequest(join_token=self.join_token, csr=_csr(key)), timeout=RPC_TIMEOUT
            )
        return accept_identity(
            resp,
            key=key,
            cluster=self.cluster,
            federation=self.federation,
            trusted=trusted,
            now=self.clock(),
        )

    # -- renewal ----------------------------------------------------------------------
    async def renew(self) -> IdentityState:
        """One Renew call over mTLS with the current SVID."""
        assert self.state is not None
        key = generate_private_key(self.key_type)
        async with grpc.aio.secure_channel(
            self.sync_target, self.credentials(), options=self.channel_options()
        ) as channel:
            resp = await pb_grpc.EnrollmentStub(channel).Renew(
                pb.RenewRequest(csr=_csr(key)), timeout=RPC_TIMEOUT
            )
        state = accept_identity(
            resp,
            key=key,
            cluster=self.cluster,
            federation=self.federation,
            trusted=self.state.federation_bundle,
            now=self.clock(),
        )
        self._set(state)
        log.info(
            "SVID renewed",
            extra={
                "spiffe_id": str(state.svid.spiffe_id),
                "not_after": state.svid.not_after.isoformat(),
            },
        )
        return state

    async def run(self) -> None:
        """Renew at half-life forever (after :meth:`ensure`)."""
        await self._ready.wait()
        while True:
            assert self.state is not None
            wait = (renewal_time(self.state.svid) - self.clock()).total_seconds()
            if wait > 0:
                await self.sleep(min(wait, 60.0))
                continue
            try:
                await self.renew()
                self.backoff.reset()
                self.last_error = ""
            except (grpc.aio.AioRpcError, SvidVerificationError, AtollError) as exc:
                self.last_error = str(exc)
                delay = self.backoff.next_delay()
                log.warning(
                    "SVID renewal failed; retrying",
                    extra={"error": self.last_error, "retry_in_s": delay},
                )
                await self.sleep(delay)
