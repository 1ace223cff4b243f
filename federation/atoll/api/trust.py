"""The REST API's trust routes: join tokens, bundles, rotation, federation, status.

* ``POST /v1/join-tokens`` — a one-time, expiring token for one cluster. The
  token is in the response body exactly once (``Cache-Control: no-store``);
  the control plane keeps only its hash.
* ``GET /v1/trust/bundle`` — the federation domain's SPIFFE bundle JSON
  (what ``atoll up`` hands to agents; operators can pin it out of band).
* ``GET /v1/trust/status`` — domains, sequences, bundle ages, CA expiry, next
  rotation, federation relationships, last fetch per foreign endpoint.
* ``POST /v1/trust/rotate`` — ask a cluster's agent (``cluster``) or the leader
  (``federation: true``) to force one CA rotation.
* ``PUT /v1/trust/federations/{name}``, ``DELETE`` — foreign domains and their
  bundle endpoints.
* ``GET /v1/trustdomains`` — the stored TrustDomain resources.

On a control plane started with ``--insecure`` there is no federation CA: the
routes that need it answer 422 saying so.

Like the rest of the REST API these routes have no authentication of their own
yet: whoever reaches the API can create join tokens. Bind the API to a
trusted interface (the lab binds loopback).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Protocol

from fastapi import APIRouter, Response
from pydantic import Field

from atoll.control.repo import Repo, mutate
from atoll.errors import InvalidError, NotFoundError
from atoll.model import BundleEndpointSpec, DnsLabel, TrustDomain
from atoll.model.base import Frozen
from atoll.model.trust import domain_label
from atoll.trusthub.domains import foreign_resource
from atoll.trusthub.tokens import MAX_TOKEN_TTL, IssuedToken
from atoll_trust.bundle import TrustBundle, render_bundle
from atoll_trust.rotation import CaState, RotationPolicy, next_rotation_event
from atoll_trust.spiffe_id import TrustDomain as SpiffeTrustDomain

__all__ = [
    "AuthorityView",
    "JoinTokenRequest",
    "JoinTokenView",
    "RotateRequest",
    "TrustApi",
    "TrustStatusView",
    "build_trust_router",
]


class TrustDisabledError(InvalidError):
    """A trust route on a control plane without a federation CA (422)."""


class TrustApi(Protocol):
    """What the routes need from the control plane's trust hub."""

    federation: SpiffeTrustDomain
    policy: RotationPolicy

    @property
    def ca_state(self) -> CaState: ...

    def federation_bundle(self) -> TrustBundle: ...

    async def create_join_token(self, cluster: str, ttl: dt.timedelta) -> IssuedToken: ...

    async def request_rotation(self, path: tuple[str, str]) -> TrustDomain: ...


class JoinTokenRequest(Frozen):
    cluster: DnsLabel
    ttl_seconds: int = Field(3600, ge=1, le=int(MAX_TOKEN_TTL.total_seconds()))


class JoinTokenView(Frozen):
    token: str
    cluster: str
    expires_at: dt.datetime


class RotateRequest(Frozen):
    cluster: DnsLabel | None = None
    federation: bool = False


class FederateRequest(Frozen):
    trust_domain: str = Field(min_length=1, max_length=255)
    endpoint: BundleEndpointSpec
    #: the domain's current bundle JSON (https_spiffe's bootstrap)
    bundle: str | None = Field(None, max_length=1 << 20)
    federates_with: list[str] = Field(default_factory=list, max_length=1000)


class AuthorityView(Frozen):
    kind: str
    key_id: str
    state: str
    not_before: dt.datetime
    not_after: dt.datetime
    published_at: dt.datetime


class DomainRow(Frozen):
    name: str
    role: str
    trust_domain: str
    sequence: int
    refresh_hint: int
    updated_at: dt.datetime | None
    ca_not_after: dt.datetime | None
    next_rotation: dt.datetime | None
    federates_with: list[str]
    rotate_generation: int
    rotated_generation: int
    endpoint: str | None
    profile: str | None
    last_fetch: dt.datetime | None
    last_fetch_success: dt.datetime | None
    last_fetch_error: str | None
    next_fetch: dt.datetime | None


class TrustStatusView(Frozen):
    enabled: bool
    federation_domain: str | None
    ca_sequence: int | None
    ca_not_after: dt.datetime | None
    next_rotation: dt.datetime | None
    authorities: list[AuthorityView]
    domains: list[DomainRow]


def _row(res: TrustDomain) -> DomainRow:
    s, st = res.spec, res.status
    fetch = st.fetch
    return DomainRow(
        name=f"{res.metadata.namespace}/{res.metadata.name}",
        role=s.role,
        trust_domain=s.trust_domain,
        sequence=s.sequence,
        refresh_hint=s.refresh_hint,
        updated_at=st.updated_at,
        ca_not_after=st.ca_not_after,
        next_rotation=st.next_rotation,
        federates_with=list(s.federates_with),
        rotate_generation=s.rotate_generation,
        rotated_generation=st.rotated_generation,
        endpoint=s.endpoint.url if s.endpoint else None,
        profile=s.endpoint.profile if s.endpoint else None,
        last_fetch=fetch.last_attempt if fetch else None,
        last_fetch_success=fetch.last_success if fetch else None,
        last_fetch_error=fetch.last_error if fetch else None,
        next_fetch=fetch.next_poll_at if fetch else None,
    )


def _authorities(ca: CaState) -> list[AuthorityView]:
    rows = [
        AuthorityView(
            kind="x509",
            key_id=s.key_id,
            state=s.state.value,
            not_before=s.authority.not_before,
            not_after=s.authority.not_after,
            published_at=s.published_at,
        )
        for s in ca.x509
    ]
    rows += [
        AuthorityView(
            kind="jwt",
            key_id=s.key_id,
            state=s.state.value,
            not_before=s.authority.not_before,
            not_after=s.authority.not_after,
            published_at=s.published_at,
        )
        for s in ca.jwt
    ]
    return rows


def build_trust_router(
    repo: Repo, trust: TrustApi | None, *, clock: Callable[[], dt.datetime]
) -> APIRouter:
    router = APIRouter(tags=["trust"])

    def need() -> TrustApi:
        if trust is None:
            raise TrustDisabledError(
                "trust is disabled: this control plane runs with --insecure (no federation CA)"
            )
        return trust

    @router.post("/v1/join-tokens", status_code=201)
    async def create_join_token(body: JoinTokenRequest, response: Response) -> JoinTokenView:
        issued = await need().create_join_token(
            body.cluster, dt.timedelta(seconds=body.ttl_seconds)
        )
        response.headers["Cache-Control"] = "no-store"
        return JoinTokenView(
            token=issued.token, cluster=issued.cluster, expires_at=issued.expires_at
        )

    @router.get("/v1/trust/bundle")
    async def federation_bundle() -> Response:
        return Response(render_bundle(need().federation_bundle()), media_type="application/json")

    @router.get("/v1/trust/status")
    async def trust_status() -> TrustStatusView:
        domains, _ = await repo.list(TrustDomain)
        rows = [_row(d) for d in domains]
        if trust is None:
            return TrustStatusView(
                enabled=False,
                federation_domain=None,
                ca_sequence=None,
                ca_not_after=None,
                next_rotation=None,
                authorities=[],
                domains=rows,
            )
        ca = trust.ca_state
        return TrustStatusView(
            enabled=True,
            federation_domain=trust.federation.name,
            ca_sequence=ca.sequence,
            ca_not_after=ca.active_x509.not_after,
            next_rotation=next_rotation_event(ca, policy=trust.policy),
            authorities=_authorities(ca),
            domains=rows,
        )

    @router.post("/v1/trust/rotate", status_code=202)
    async def rotate(body: RotateRequest) -> TrustDomain:
        hub = need()
        if body.federation == (body.cluster is not None):
            raise InvalidError("name exactly one of cluster or federation", field="cluster")
        if body.cluster is not None:
            return await hub.request_rotation(("cluster", body.cluster))
        return await hub.request_rotation(("federation", domain_label(hub.federation.name)))

    @router.get("/v1/trustdomains")
    async def list_trust_domains(role: str | None = None) -> list[TrustDomain]:
        domains, _ = await (repo.list(TrustDomain, role) if role else repo.list(TrustDomain))
        return domains

    @router.put("/v1/trust/federations/{name}")
    async def federate(name: DnsLabel, body: FederateRequest, response: Response) -> TrustDomain:
        hub = need()
        path = ("foreign", name)
        existed = await repo.get(TrustDomain, path) is not None

        def change(current: TrustDomain | None) -> TrustDomain | None:
            return foreign_resource(
                trust_domain=body.trust_domain,
                endpoint=body.endpoint,
                federation=hub.federation,
                stored=current,
                now=clock(),
                name=name,
                bootstrap=body.bundle,
                federates_with=body.federates_with,
            )

        stored = await mutate(repo, TrustDomain, path, change)
        assert stored is not None
        response.status_code = 200 if existed else 201
        return stored

    @router.delete("/v1/trust/federations/{name}", status_code=204)
    async def unfederate(name: DnsLabel) -> Response:
        if not await repo.delete(TrustDomain, ("foreign", name)):
            raise NotFoundError(f"foreign trust domain {name!r} not found")
        return Response(status_code=204)

    return router
