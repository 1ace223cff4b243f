"""The client side of the control plane's TLS: what agents and DNS servers connect with.

A client trusts **only the federation domain's bundle** for the server, and
gRPC checks the server certificate's DNS SAN against the target name
``control-plane.<fed>`` (``grpc.ssl_target_name_override``). The federation
CA puts that name only into control-plane SVIDs (agents' SVIDs carry no DNS
name), so the check pins the peer to a control-plane identity even though
gRPC's Python client offers no hook to read the server's URI SAN.

Credentials are built per connection from whatever identity is current
(:data:`~atoll.sync.client.CredentialsProvider`), so a renewed SVID or a
rotated federation bundle takes effect at the next (re)connection.

:class:`WorkloadIdentity` is the provider for components that get their SVID
from their agent's Workload API (DNS servers, gateways).
"""

from __future__ import annotations

import grpc

from atoll.errors import RetryableError
from atoll.sync.client import ChannelOption
from atoll.trusthub.naming import control_plane_server_name
from atoll_trust.bundle import TrustBundle
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.svid import X509Svid
from atoll_trust.tls import pooled_roots_pem
from atoll_trust.workload_api.client import X509Source

__all__ = [
    "IdentityNotReadyError",
    "WorkloadIdentity",
    "channel_credentials",
    "control_plane_channel_options",
]


class IdentityNotReadyError(RetryableError):
    """No SVID or federation bundle yet; the connection is retried later."""


def control_plane_channel_options(federation: TrustDomain) -> list[ChannelOption]:
    return [("grpc.ssl_target_name_override", control_plane_server_name(federation))]


def channel_credentials(
    svid: X509Svid | None, federation_bundle: TrustBundle
) -> grpc.ChannelCredentials:
    """TLS to the control plane: server verified against the federation bundle only;
    ``svid`` as the client certificate (None for enrollment, which has none yet)."""
    roots = pooled_roots_pem([federation_bundle])
    if not roots:
        raise IdentityNotReadyError(f"the bundle of {federation_bundle.trust_domain} has no CA")
    if svid is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=svid.private_key_pem(),
        certificate_chain=svid.chain_pem(),
    )


class WorkloadIdentity:
    """Credentials from an :class:`X509Source` (SVID and the federated federation bundle)."""

    def __init__(self, source: X509Source, *, federation: TrustDomain) -> None:
        self.source = source
        self.federation = federation

    def credentials(self) -> grpc.ChannelCredentials:
        ctx = self.source.current
        if ctx is None:
            why = f" ({self.source.last_error})" if self.source.last_error else ""
            raise IdentityNotReadyError(
                f"no SVID from the Workload API at {self.source.path} yet{why}"
            )
        bundle = ctx.bundles.get(self.federation)
        if bundle is None:
            raise IdentityNotReadyError(
                f"the Workload API has not sent the federation bundle of {self.federation} yet"
            )
        return channel_credentials(ctx.svid, bundle)

    def channel_options(self) -> list[ChannelOption]:
        return control_plane_channel_options(self.federation)
