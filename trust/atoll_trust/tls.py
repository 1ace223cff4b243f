"""mTLS with SVIDs for asyncio sockets and gRPC, verifying each peer against its own domain.

The problem
-----------
Python's :mod:`ssl` (and gRPC's Python credentials) have no per-handshake
verification callback: OpenSSL verifies a peer against *all* loaded CA
certificates at once. Loading the bundles of every federated domain into one
context is exactly the pooled store SPIFFE forbids — domain B's CA would vouch
for ``spiffe://A/...``.

The approach: OpenSSL as a first filter, Atoll's verifier as the judge
----------------------------------------------------------------------
1. The handshake runs with ``CERT_REQUIRED`` against the roots of the domains
   this endpoint accepts (for a client: only the expected server's domain, so
   there is no pooling at all; for a server: the union, as a coarse filter).
   OpenSSL thereby proves the peer holds the private key of the certificate it
   presented and that *some* accepted root signed it.
2. Right after the handshake, before any application byte is read or written,
   :func:`verify_peer` (asyncio/ssl) or :func:`verify_grpc_peer` (gRPC) takes
   the peer's certificate chain, reads the SPIFFE ID from the leaf and runs
   :func:`~atoll_trust.verify.verify_x509_svid` against the bundle of *that ID's
   own domain*, then the caller's authorization rule. On failure the connection
   is closed (asyncio) or the call aborted with ``UNAUTHENTICATED`` (gRPC).

Where it plugs in
-----------------
* **asyncio TLS (gateways)**: ``asyncio.start_server(handler, ssl=build_server_context(...))``;
  the handler calls ``verify_peer(writer.get_extra_info("ssl_object"), bundles,
  now=clock())`` first and closes the writer on :class:`SvidVerificationError`.
  Clients use :func:`build_client_context` for the expected peer's domain and
  call :func:`verify_peer` with ``expected=`` the server's SPIFFE ID. Rotated
  SVIDs or bundles: build a new context; for a long-lived server set
  ``ctx.sni_callback`` to swap ``ssl_object.context`` to the newest context on
  each handshake.
* **gRPC (the sync channel)**: server credentials
  ``grpc.ssl_server_credentials([(key_pem, chain_pem)], root_certificates=pooled_roots_pem(bundles),
  require_client_auth=True)``; each RPC (or an interceptor) calls
  ``verify_grpc_peer(context.auth_context(), bundles, now=clock())`` — gRPC exposes
  the peer leaf as ``x509_pem_cert`` (and ``x509_pem_cert_chain`` where the core
  provides it). gRPC clients check the server's DNS name, which SVIDs do not
  carry by default: issue the control plane's SVID with a DNS SAN
  (``mint_x509_svid(..., dns_names=["control-plane.<domain>"])``) and set the
  channel option ``grpc.ssl_target_name_override`` to it, with
  ``root_certificates`` = the federation domain's roots only.

Private keys reach :meth:`ssl.SSLContext.load_cert_chain` through a file in a
fresh 0700 temporary directory that is removed right after loading (the stdlib
has no in-memory loader before Python 3.13).
"""

from __future__ import annotations

import _ssl
import datetime as dt
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from atoll_trust.bundle import BundleSet, TrustBundle
from atoll_trust.certload import load_der_certificate
from atoll_trust.errors import CERTIFICATE_DECODE_ERRORS, SvidVerificationError
from atoll_trust.spiffe_id import SpiffeId, TrustDomain
from atoll_trust.svid import X509Svid
from atoll_trust.verify import BundleSource, VerifiedX509Svid, verify_x509_svid

__all__ = [
    "Authorizer",
    "authorize_verified",
    "build_client_context",
    "build_endpoint_context",
    "build_server_context",
    "peer_chain",
    "pooled_roots_pem",
    "verify_grpc_peer",
    "verify_peer",
]

Authorizer = Callable[[SpiffeId], bool]
_ENCODING_DER: int = getattr(_ssl, "ENCODING_DER", 1)


def pooled_roots_pem(bundles: Iterable[TrustBundle]) -> bytes:
    """PEM of every CA in ``bundles`` — only for OpenSSL's first-pass filter."""
    return b"".join(
        c.public_bytes(serialization.Encoding.PEM) for b in bundles for c in b.x509_authorities
    )


def _load_svid(ctx: ssl.SSLContext, svid: X509Svid) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="atoll-svid-"))
    try:
        chain, key = tmp / "chain.pem", tmp / "key.pem"
        chain.write_bytes(svid.chain_pem())
        key.touch(mode=0o600)
        key.write_bytes(svid.private_key_pem())
        ctx.load_cert_chain(chain, key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _base(purpose: ssl.Purpose, svid: X509Svid | None, roots: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # SVIDs name SPIFFE IDs, not hosts; verify_peer checks the ID
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not roots:
        raise SvidVerificationError("no trust anchors to verify peers with")
    ctx.load_verify_locations(cadata=roots.decode("ascii"))
    if svid is not None:
        _load_svid(ctx, svid)
    return ctx


def build_server_context(
    svid: X509Svid, bundles: BundleSet, *, accept: Iterable[TrustDomain] | None = None
) -> ssl.SSLContext:
    """A server context that requires client SVIDs from ``accept`` (default: all bundles).

    Always pair it with :func:`verify_peer` after the handshake.
    """
    wanted = set(accept) if accept is not None else set(bundles.trust_domains)
    chosen = [b for b in bundles if b.trust_domain in wanted]
    return _base(ssl.Purpose.CLIENT_AUTH, svid, pooled_roots_pem(chosen))


def build_endpoint_context(svid: X509Svid) -> ssl.SSLContext:
    """A server context presenting ``svid`` that asks clients for nothing.

    For the SPIFFE bundle endpoint's https_spiffe profile: the bundle is
    public, so clients are anonymous; they authenticate the *server* (its SVID
    against the domain's bundle they already hold).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_NONE
    _load_svid(ctx, svid)
    return ctx


def build_client_context(svid: X509Svid | None, peer_bundle: TrustBundle) -> ssl.SSLContext:
    """A client context trusting only the expected server's domain."""
    return _base(ssl.Purpose.SERVER_AUTH, svid, pooled_roots_pem([peer_bundle]))


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[x509.Certificate, ...]:
    """The certificates the peer sent, leaf first (the leaf alone if the chain is hidden)."""
    getter = getattr(ssl_object, "get_unverified_chain", None)  # Python >= 3.13
    raw: Sequence[object] | None = getter() if getter is not None else None
    if raw is None:
        inner = getattr(ssl_object, "_sslobj", None)  # CPython 3.10-3.12 private API
        inner_getter = getattr(inner, "get_unverified_chain", None)
        raw = inner_getter() if inner_getter is not None else None
    certs: list[x509.Certificate] = []
    try:
        for item in raw or ():
            der = item if isinstance(item, bytes) else item.public_bytes(_ENCODING_DER)  # type: ignore[attr-defined]
            certs.append(load_der_certificate(der))
        if not certs:
            leaf = ssl_object.getpeercert(binary_form=True)
            if not leaf:
                raise SvidVerificationError("peer presented no certificate")
            certs.append(load_der_certificate(leaf))
    except CERTIFICATE_DECODE_ERRORS as exc:
        raise SvidVerificationError(f"peer certificate is not acceptable: {exc}") from exc
    return tuple(certs)


def authorize_verified(
    verified: VerifiedX509Svid, expected: SpiffeId | None, authorize: Authorizer | None
) -> VerifiedX509Svid:
    if expected is not None and verified.spiffe_id != expected:
        raise SvidVerificationError(f"peer is {verified.spiffe_id}, expected {expected}")
    if authorize is not None and not authorize(verified.spiffe_id):
        raise SvidVerificationError(f"peer {verified.spiffe_id} is not authorized")
    return verified


def verify_peer(
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
    bundles: BundleSource,
    *,
    now: dt.datetime,
    expected: SpiffeId | None = None,
    authorize: Authorizer | None = None,
) -> VerifiedX509Svid:
    """Post-handshake SPIFFE verification of a TLS peer (see the module docstring)."""
    if ssl_object is None:
        raise SvidVerificationError("connection is not TLS")
    verified = verify_x509_svid(peer_chain(ssl_object), bundles, now=now)
    return authorize_verified(verified, expected, authorize)


def verify_grpc_peer(
    auth_context: Mapping[str, Iterable[bytes]],
    bundles: BundleSource,
    *,
    now: dt.datetime,
    expected: SpiffeId | None = None,
    authorize: Authorizer | None = None,
) -> VerifiedX509Svid:
    """SPIFFE verification of a gRPC peer from ``ServicerContext.auth_context()``."""
    pems = list(auth_context.get("x509_pem_cert_chain") or auth_context.get("x509_pem_cert") or ())
    if not pems:
        raise SvidVerificationError("gRPC peer presented no certificate (is mTLS on?)")
    try:
        chain = tuple(c for pem in pems for c in x509.load_pem_x509_certificates(pem))
    except CERTIFICATE_DECODE_ERRORS as exc:
        raise SvidVerificationError(f"gRPC peer certificate is malformed: {exc}") from exc
    verified = verify_x509_svid(chain, bundles, now=now)
    return authorize_verified(verified, expected, authorize)
