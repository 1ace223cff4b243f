"""The control plane's server side of TLS: its SVID and credentials that reload themselves.

Each replica holds its own X.509-SVID ``spiffe://<fed>/control-plane`` (with
the DNS SAN ``control-plane.<fed>``, the name gRPC clients check), minted
from the shared federation CA with a fresh key per replica; the key never
leaves the process. :func:`plan_server_svid` decides when to re-mint (pure):
none yet, half its life gone, or the CA that signs now is another one
(:func:`~atoll_trust.rotation.svid_needs_renewal`).

:class:`ServerTls` turns the current SVID and the client roots into gRPC
server credentials that follow changes without a restart: grpcio's
``dynamic_ssl_server_credentials`` asks a *fetcher* for a new configuration
on every TLS handshake; the fetcher answers ``None`` ("unchanged") unless the
material's version moved since it last answered. Established connections keep
the certificate they negotiated; the next handshake gets the new one.

Two credentials come from the same material:

* the **sync port** requires a client certificate that chains to the pooled
  roots of every domain a peer may come from (the federation domain and every
  cluster domain); that is only OpenSSL's coarse filter — each stream is then
  verified against the bundle of *its own* domain by
  :class:`~atoll.trusthub.authz.SpiffeAuthorizer` (see :mod:`atoll_trust.tls`);
* the **enrollment port** authenticates only the server: grpcio offers no
  "request but do not require" mode, so the RPC that must work without a
  client certificate (Enroll) gets its own port.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import grpc

from atoll.trusthub.naming import control_plane_id, control_plane_server_name
from atoll_trust.ca import mint_x509_svid
from atoll_trust.rotation import CaState, RotationPolicy, svid_needs_renewal
from atoll_trust.svid import X509Svid

__all__ = ["ServerTls", "TlsMaterial", "mint_server_svid", "plan_server_svid"]


def plan_server_svid(current: X509Svid | None, ca: CaState, *, now: dt.datetime) -> bool:
    """True when the replica must mint a new control-plane SVID now."""
    if current is None:
        return True
    if now >= current.not_after:
        return True
    return svid_needs_renewal(current, now=now, active=ca.active_x509)


def mint_server_svid(ca: CaState, *, now: dt.datetime, policy: RotationPolicy) -> X509Svid:
    fed = ca.trust_domain
    return mint_x509_svid(
        ca.active_x509,
        control_plane_id(fed),
        now=now,
        ttl=policy.x509_svid_ttl,
        key_type=policy.key_type,
        dns_names=[control_plane_server_name(fed)],
    )


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    version: int
    key_pem: bytes
    chain_pem: bytes
    #: PEM of every CA a client certificate may chain to (OpenSSL's first filter)
    client_roots_pem: bytes

    def configuration(self, *, with_roots: bool) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key_pem, self.chain_pem)],
            root_certificates=self.client_roots_pem if with_roots else None,
        )


class ServerTls:
    """The current server material and gRPC credentials that reload it."""

    def __init__(self) -> None:
        self._material: TlsMaterial | None = None
        self._lock = threading.Lock()  # fetchers run on gRPC's handshake threads

    @property
    def material(self) -> TlsMaterial | None:
        return self._material

    def update(self, svid: X509Svid, client_roots_pem: bytes) -> bool:
        """Install new material if it differs; returns True when it changed."""
        key, chain = svid.private_key_pem(), svid.chain_pem()
        with self._lock:
            old = self._material
            if (
                old is not None
                and old.key_pem == key
                and old.chain_pem == chain
                and old.client_roots_pem == client_roots_pem
            ):
                return False
            self._material = TlsMaterial(
                version=(old.version + 1) if old else 1,
                key_pem=key,
                chain_pem=chain,
                client_roots_pem=client_roots_pem,
            )
            return True

    def credentials(self, *, require_client_auth: bool) -> grpc.ServerCredentials:
        """Credentials that pick up every later :meth:`update` at the next handshake."""
        first = self._material
        if first is None:
            raise RuntimeError("ServerTls has no material yet; call update() first")
        served = [first.version]
        lock = self._lock

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            with lock:
                current = self._material
                if current is None or current.version == served[0]:
                    return None
                served[0] = current.version
            return current.configuration(with_roots=require_client_auth)

        # grpc documents None as "keep the current configuration"; its stub omits it
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], fetch)
        return grpc.dynamic_ssl_server_credentials(
            first.configuration(with_roots=require_client_auth),
            fetcher,
            require_client_authentication=require_client_auth,
        )
