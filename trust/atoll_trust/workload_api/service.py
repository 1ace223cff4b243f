"""The ``SpiffeWorkloadAPI`` gRPC servicer for one workload (one socket).

Pure builders turn a :class:`~atoll_trust.workload_api.state.WorkloadSnapshot`
into response messages; the servicer only checks the security header, streams
builder output and maps errors to gRPC status codes (SPIFFE Workload API
standard):

* every call must carry metadata ``workload.spiffe.io: true`` exactly once,
  otherwise ``INVALID_ARGUMENT``;
* streams send the full state at once, then a message whenever what *this*
  caller sees changed; they never end from the server side (the client or
  server shutdown cancels them);
* a caller with no SVID yet waits for one on ``FetchX509SVID``; ``FetchJWTSVID``
  for an identity the caller does not hold is ``PERMISSION_DENIED``; bad requests
  (no audience, unparsable SPIFFE ID) are ``INVALID_ARGUMENT``;
* ``ValidateJWTSVID`` checks the token against the bundle of its ``sub``'s own
  trust domain; a failed validation is ``INVALID_ARGUMENT`` with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2

from atoll_trust.bundle import render_jwks
from atoll_trust.clock import Clock
from atoll_trust.errors import InvalidSpiffeIdError, IssuanceError, JwtSvidError
from atoll_trust.spiffe_id import parse_spiffe_id
from atoll_trust.verify import verify_jwt_svid
from atoll_trust.workload_api import workload_pb2 as pb
from atoll_trust.workload_api import workload_pb2_grpc as pb_grpc
from atoll_trust.workload_api.state import IdentityManager, SnapshotHub, WorkloadSnapshot

__all__ = [
    "SECURITY_HEADER",
    "WorkloadApiServicer",
    "build_jwt_bundles_response",
    "build_x509_bundles_response",
    "build_x509_svid_response",
]

SECURITY_HEADER = "workload.spiffe.io"
log = logging.getLogger("atoll.trust.workload_api")
M = TypeVar("M")


def build_x509_svid_response(snap: WorkloadSnapshot, workload: str) -> pb.X509SVIDResponse | None:
    """The caller's SVIDs with their own domain's bundle, plus federated bundles."""
    svids = snap.svids_for(workload)
    if not svids:
        return None
    resp = pb.X509SVIDResponse()
    for svid in svids:
        own = snap.bundles.get(svid.spiffe_id.trust_domain)
        resp.svids.append(
            pb.X509SVID(
                spiffe_id=str(svid.spiffe_id),
                x509_svid=svid.chain_der(),
                x509_svid_key=svid.private_key_der(),
                bundle=own.x509_der() if own is not None else b"",
                hint=svid.hint,
            )
        )
    for bundle in snap.bundles:
        if bundle.trust_domain != snap.trust_domain and bundle.x509_authorities:
            resp.federated_bundles[str(bundle.trust_domain.id)] = bundle.x509_der()
    return resp


def build_x509_bundles_response(snap: WorkloadSnapshot) -> pb.X509BundlesResponse:
    resp = pb.X509BundlesResponse()
    for bundle in snap.bundles:
        if bundle.x509_authorities:
            resp.bundles[str(bundle.trust_domain.id)] = bundle.x509_der()
    return resp


def build_jwt_bundles_response(snap: WorkloadSnapshot) -> pb.JWTBundlesResponse:
    resp = pb.JWTBundlesResponse()
    for bundle in snap.bundles:
        resp.bundles[str(bundle.trust_domain.id)] = render_jwks(bundle)
    return resp


def _has_security_header(context: Any) -> bool:
    values = [v for k, v in (context.invocation_metadata() or ()) if k == SECURITY_HEADER]
    return values == ["true"]


class WorkloadApiServicer(pb_grpc.SpiffeWorkloadAPIServicer):
    """Serves the identities of one workload, named by the socket it listens on."""

    def __init__(
        self, workload: str, *, hub: SnapshotHub, identities: IdentityManager, clock: Clock
    ) -> None:
        self._workload = workload
        self._hub = hub
        self._identities = identities
        self._clock = clock

    async def _check_header(self, context: Any) -> None:
        if not _has_security_header(context):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request"
            )

    async def _stream(
        self, context: Any, build: Callable[[WorkloadSnapshot], M | None]
    ) -> AsyncIterator[M]:
        await self._check_header(context)
        snap = self._hub.current
        last: bytes | None = None
        while True:
            msg = build(snap)
            if msg is not None:
                wire = msg.SerializeToString(deterministic=True)  # type: ignore[attr-defined]
                if wire != last:
                    last = wire
                    yield msg
            snap = await self._hub.wait_newer(snap.version)

    async def FetchX509SVID(
        self, request: pb.X509SVIDRequest, context: Any
    ) -> AsyncIterator[pb.X509SVIDResponse]:
        async for msg in self._stream(
            context, lambda s: build_x509_svid_response(s, self._workload)
        ):
            yield msg

    async def FetchX509Bundles(
        self, request: pb.X509BundlesRequest, context: Any
    ) -> AsyncIterator[pb.X509BundlesResponse]:
        async for msg in self._stream(context, build_x509_bundles_response):
            yield msg

    async def FetchJWTBundles(
        self, request: pb.JWTBundlesRequest, context: Any
    ) -> AsyncIterator[pb.JWTBundlesResponse]:
        async for msg in self._stream(context, build_jwt_bundles_response):
            yield msg

    async def FetchJWTSVID(self, request: pb.JWTSVIDRequest, context: Any) -> pb.JWTSVIDResponse:
        await self._check_header(context)
        audience = [a for a in request.audience]
        if not audience or any(not a for a in audience):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        held = [s.spiffe_id for s in self._hub.current.svids_for(self._workload)]
        reg = next((w for w in self._identities.workloads if w.name == self._workload), None)
        entitled = list(reg.spiffe_ids) if reg is not None else held
        if request.spiffe_id:
            try:
                wanted = parse_spiffe_id(request.spiffe_id)
            except InvalidSpiffeIdError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                raise  # unreachable: abort raises
            if wanted not in entitled:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"caller is not entitled to {wanted}",
                )
            entitled = [wanted]
        if not entitled:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued to caller")
        resp = pb.JWTSVIDResponse()
        try:
            for sid in entitled:
                token = self._identities.issue_jwt(sid, audience)
                resp.svids.append(pb.JWTSVID(spiffe_id=str(sid), svid=token.token))
        except IssuanceError as exc:
            log.warning(
                "JWT-SVID issuance failed", extra={"workload": self._workload, "error": str(exc)}
            )
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot issue JWT-SVID: {exc}")
        return resp

    async def ValidateJWTSVID(
        self, request: pb.ValidateJWTSVIDRequest, context: Any
    ) -> pb.ValidateJWTSVIDResponse:
        await self._check_header(context)
        if not request.audience:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "svid must be specified")
        try:
            verified = verify_jwt_svid(
                request.svid,
                self._hub.current.bundles,
                audience=request.audience,
                now=self._clock(),
            )
        except JwtSvidError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        claims = struct_pb2.Struct()
        claims.update(dict(verified.claims))
        return pb.ValidateJWTSVIDResponse(spiffe_id=str(verified.spiffe_id), claims=claims)
