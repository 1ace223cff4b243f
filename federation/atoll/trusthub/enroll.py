"""The Enrollment service: SVIDs for agents, against a join token or the current SVID.

* ``Enroll`` (enrollment port, server-authenticated TLS): the CSR is checked
  first (a malformed request does not burn the token), then the token is
  redeemed once (:class:`~atoll.trusthub.tokens.JoinTokens`), then the
  federation CA's active key signs an X.509-SVID ``spiffe://<fed>/cluster/<X>``
  for the CSR's public key, X being the cluster the token was issued for.
* ``Renew`` (sync port, mTLS): the caller's certificate is verified against
  the federation bundle only; it must be an agent identity, and the new SVID
  names the same ID (the request cannot ask for another one).

Both answer with the SVID chain and the federation bundle, so an agent learns
the CA's next key (published well before it signs) from every renewal as well
as from the sync stream. Refusals: a bad CSR is ``INVALID_ARGUMENT``; a
refused token or certificate ``UNAUTHENTICATED``; a verified non-agent
``PERMISSION_DENIED`` — each with a one-line reason.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from atoll.errors import InvalidError
from atoll.sync.v1 import enrollment_pb2 as pb
from atoll.sync.v1 import enrollment_pb2_grpc as pb_grpc
from atoll.trusthub import metrics
from atoll.trusthub.naming import agent_id
from atoll.trusthub.tokens import JoinTokenError, JoinTokens
from atoll_trust.bundle import BundleSet, render_bundle
from atoll_trust.ca import issue_x509_svid
from atoll_trust.errors import IssuanceError, SvidVerificationError
from atoll_trust.jose import PublicKey
from atoll_trust.rotation import CaState, RotationPolicy
from atoll_trust.spiffe_id import SpiffeId, TrustDomain
from atoll_trust.tls import verify_grpc_peer

__all__ = ["EnrollmentServicer", "agent_cluster", "public_key_from_csr"]

log = logging.getLogger("atoll.trusthub.enroll")
MAX_CSR_BYTES = 16 * 1024


def public_key_from_csr(der: bytes) -> PublicKey:
    """The public key of a DER PKCS#10 CSR whose self-signature verifies."""
    if not der or len(der) > MAX_CSR_BYTES:
        raise InvalidError(f"csr must be 1-{MAX_CSR_BYTES} bytes of DER", field="csr")
    try:
        csr = x509.load_der_x509_csr(der)
        key = csr.public_key()
        valid = csr.is_signature_valid
    except ValueError as exc:
        raise InvalidError(f"csr is not a DER PKCS#10 request: {exc}", field="csr") from exc
    if not valid:
        raise InvalidError("csr signature does not verify (proof of key possession)", field="csr")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size >= 256:
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    raise InvalidError("csr key must be EC P-256/384/521 or RSA >= 2048 bits", field="csr")


def agent_cluster(spiffe_id: SpiffeId, federation: TrustDomain) -> str | None:
    """The cluster of an agent identity ``spiffe://<fed>/cluster/<X>``, else None."""
    segs = spiffe_id.segments
    if spiffe_id.trust_domain == federation and len(segs) == 2 and segs[0] == "cluster":
        return segs[1]
    return None


class EnrollmentServicer(pb_grpc.EnrollmentServicer):
    def __init__(
        self,
        *,
        federation: TrustDomain,
        tokens: JoinTokens,
        ca: Callable[[], CaState],
        policy: RotationPolicy,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.federation = federation
        self.tokens = tokens
        self.ca = ca
        self.policy = policy
        self.clock = clock

    async def _refuse(
        self, context: Any, rpc: str, code: grpc.StatusCode, message: str
    ) -> NoReturn:
        metrics.ENROLLMENTS.labels(rpc=rpc, result=code.name.lower()).inc()
        log.warning("%s refused", rpc, extra={"peer": context.peer(), "reason": message})
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    def _issue(self, spiffe_id: SpiffeId, key: PublicKey) -> pb.Identity:
        ca = self.ca()
        svid = issue_x509_svid(
            ca.active_x509,
            spiffe_id,
            public_key=key,
            now=self.clock(),
            ttl=self.policy.x509_svid_ttl,
        )
        return pb.Identity(
            spiffe_id=str(spiffe_id),
            x509_svid=svid.chain_der(),
            federation_domain=self.federation.name,
            federation_bundle=render_bundle(ca.bundle(refresh_hint=self.policy.refresh_hint)),
        )

    async def Enroll(self, request: pb.EnrollRequest, context: Any) -> pb.Identity:
        try:
            key = public_key_from_csr(request.csr)
        except InvalidError as exc:
            await self._refuse(context, "enroll", grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            cluster = await self.tokens.redeem(request.join_token)
        except JoinTokenError as exc:
            await self._refuse(context, "enroll", grpc.StatusCode.UNAUTHENTICATED, str(exc))
        try:
            identity = self._issue(agent_id(self.federation, cluster), key)
        except IssuanceError as exc:
            await self._refuse(context, "enroll", grpc.StatusCode.UNAVAILABLE, str(exc))
        metrics.ENROLLMENTS.labels(rpc="enroll", result="ok").inc()
        log.info("agent enrolled", extra={"cluster": cluster, "spiffe_id": identity.spiffe_id})
        return identity

    async def Renew(self, request: pb.RenewRequest, context: Any) -> pb.Identity:
        try:
            key = public_key_from_csr(request.csr)
        except InvalidError as exc:
            await self._refuse(context, "renew", grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        ca = self.ca()
        auth = {k: tuple(v) for k, v in (context.auth_context() or {}).items()}
        try:
            peer = verify_grpc_peer(
                auth,
                BundleSet([ca.bundle(refresh_hint=self.policy.refresh_hint)]),
                now=self.clock(),
            )
        except SvidVerificationError as exc:
            await self._refuse(context, "renew", grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if agent_cluster(peer.spiffe_id, self.federation) is None:
            await self._refuse(
                context,
                "renew",
                grpc.StatusCode.PERMISSION_DENIED,
                f"{peer.spiffe_id} is not an agent identity; only agents renew here",
            )
        try:
            identity = self._issue(peer.spiffe_id, key)
        except IssuanceError as exc:
            await self._refuse(context, "renew", grpc.StatusCode.UNAVAILABLE, str(exc))
        metrics.ENROLLMENTS.labels(rpc="renew", result="ok").inc()
        log.info("agent SVID renewed", extra={"spiffe_id": identity.spiffe_id})
        return identity
