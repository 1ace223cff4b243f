"""The Workload API over real unix sockets: our own gRPC client, then py-spiffe and openssl.

py-spiffe runs in a separate process (its generated protos clash with ours in one
process). It does not verify trust, so everything it receives is verified here
again with Atoll's verifier, and the SVID chain is checked by ``openssl verify
-x509_strict`` against its domain's bundle.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from atoll_trust.bundle import BundleSet, parse_bundle, render_bundle
from atoll_trust.clock import system_clock
from atoll_trust.rotation import (
    CaState,
    GeneratingAuthorityFactory,
    RotationPolicy,
    bootstrap_ca_state,
    rotate,
)
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.verify import parse_der_chain, verify_jwt_svid, verify_x509_svid
from atoll_trust.workload_api import (
    SECURITY_HEADER,
    IdentityManager,
    SnapshotHub,
    WorkloadApiServer,
    WorkloadRegistration,
    WorkloadSocket,
)
from atoll_trust.workload_api import workload_pb2 as pb
from atoll_trust.workload_api import workload_pb2_grpc as pb_grpc

A, B = TrustDomain("a.atoll"), TrustDomain("b.atoll")
WEB, DB = A.spiffe_id("web"), A.spiffe_id("db")
POLICY = RotationPolicy(min_publish_lead=dt.timedelta(0))
Metadata = tuple[tuple[str, str], ...]
HEADER: Metadata = ((SECURITY_HEADER, "true"),)
TIMEOUT = 10.0


@dataclass
class Lab:
    dir: Path
    hub: SnapshotHub
    identities: IdentityManager
    server: WorkloadApiServer
    ca_state: CaState
    foreign: CaState

    def socket(self, workload: str) -> Path:
        return self.dir / f"{workload}.sock"

    def rotate_own_ca(self) -> None:
        """Force a rotation of domain A (publish, then activate) and re-issue SVIDs."""
        now = system_clock()
        state, _ = rotate(
            self.ca_state, now=now, policy=POLICY, factory=GeneratingAuthorityFactory(), force=True
        )
        state, actions = rotate(state, now=now, policy=POLICY, factory=GeneratingAuthorityFactory())
        assert actions, "forced rotation did not activate"
        self.ca_state = state
        self.identities.set_ca_state(state)
        self.identities.refresh()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # unix socket paths must stay under 108 bytes: pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(prefix="atoll-wl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def lab(short_dir: Path) -> AsyncIterator[Lab]:
    now = system_clock()
    own = bootstrap_ca_state(A, now=now, policy=POLICY)
    foreign = bootstrap_ca_state(B, now=now, policy=POLICY)
    hub = SnapshotHub(A)
    identities = IdentityManager(hub, ca_state=own, policy=POLICY, clock=system_clock)
    identities.register(WorkloadRegistration("web", (WEB,)))
    identities.register(WorkloadRegistration("db", (DB,)))
    identities.refresh(bundles=BundleSet([foreign.bundle()]))
    server = WorkloadApiServer(hub=hub, identities=identities, clock=system_clock)
    lab = Lab(short_dir, hub, identities, server, own, foreign)
    for name in ("web", "db"):
        await server.add_workload(WorkloadSocket(name, lab.socket(name)))
    yield lab
    await server.stop(grace=0.1)


def _stub(path: Path) -> tuple[grpc.aio.Channel, pb_grpc.SpiffeWorkloadAPIAsyncStub]:
    channel = grpc.aio.insecure_channel(f"unix:{path}")
    return channel, pb_grpc.SpiffeWorkloadAPIStub(channel)


R = TypeVar("R")


async def _next(call: grpc.aio.UnaryStreamCall[Any, R]) -> R:
    msg = await asyncio.wait_for(call.read(), TIMEOUT)
    if msg is grpc.aio.EOF:
        raise AssertionError("the server ended a stream it must keep open")
    return cast(R, msg)


def _bundles(lab: Lab) -> BundleSet:
    return lab.hub.current.bundles


async def test_security_header_is_required_on_every_method(lab: Lab) -> None:
    channel, stub = _stub(lab.socket("web"))
    async with channel:
        calls: list[Callable[[Metadata], Awaitable[object]]] = [
            lambda md: stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=md).read(),
            lambda md: stub.FetchX509Bundles(pb.X509BundlesRequest(), metadata=md).read(),
            lambda md: stub.FetchJWTBundles(pb.JWTBundlesRequest(), metadata=md).read(),
            lambda md: stub.FetchJWTSVID(pb.JWTSVIDRequest(audience=["x"]), metadata=md),
            lambda md: stub.ValidateJWTSVID(
                pb.ValidateJWTSVIDRequest(audience="x", svid="y"), metadata=md
            ),
        ]
        bad_metadata = [
            (),
            ((SECURITY_HEADER, "false"),),
            ((SECURITY_HEADER, "true"), (SECURITY_HEADER, "true")),
        ]
        for call in calls:
            for md in bad_metadata:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await asyncio.wait_for(call(md), TIMEOUT)
                assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert "security header" in (info.value.details() or "")


async def test_x509_stream_full_state_first_then_rotation_on_the_same_stream(lab: Lab) -> None:
    channel, stub = _stub(lab.socket("web"))
    async with channel:
        stream = stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER)
        first = await _next(stream)
        assert [s.spiffe_id for s in first.svids] == [str(WEB)]
        assert set(first.federated_bundles) == {"spiffe://b.atoll"}
        chain = parse_der_chain(first.svids[0].x509_svid)
        assert verify_x509_svid(chain, _bundles(lab), now=system_clock()).spiffe_id == WEB
        assert serialization.load_der_private_key(first.svids[0].x509_svid_key, None)
        assert parse_der_chain(first.svids[0].bundle) == lab.ca_state.bundle().x509_authorities
        old_issuer = chain[0].issuer

        lab.rotate_own_ca()
        second = await _next(stream)
        new_chain = parse_der_chain(second.svids[0].x509_svid)
        assert new_chain[0] != chain[0]
        assert new_chain[0].issuer != old_issuer
        assert len(parse_der_chain(second.svids[0].bundle)) == 2  # old CA still published
        assert verify_x509_svid(new_chain, _bundles(lab), now=system_clock()).spiffe_id == WEB

        # a federated bundle change reaches the open stream too
        rotated_b, _ = rotate(
            lab.foreign,
            now=system_clock(),
            policy=POLICY,
            factory=GeneratingAuthorityFactory(),
            force=True,
        )
        lab.identities.refresh(bundles=_bundles(lab).with_bundle(rotated_b.bundle()))
        third = await _next(stream)
        assert len(parse_der_chain(third.federated_bundles["spiffe://b.atoll"])) == 2
        assert third.svids[0].x509_svid == second.svids[0].x509_svid
        stream.cancel()


async def test_each_socket_serves_only_its_workload(lab: Lab) -> None:
    for name, sid in (("web", WEB), ("db", DB)):
        channel, stub = _stub(lab.socket(name))
        async with channel:
            stream = stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER)
            msg = await _next(stream)
            assert [s.spiffe_id for s in msg.svids] == [str(sid)]
            stream.cancel()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.FetchJWTSVID(
                    pb.JWTSVIDRequest(audience=["x"], spiffe_id=str(DB if name == "web" else WEB)),
                    metadata=HEADER,
                )
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert oct(lab.socket("web").stat().st_mode & 0o777) == "0o600"


async def test_bundle_streams(lab: Lab) -> None:
    channel, stub = _stub(lab.socket("web"))
    async with channel:
        xb = stub.FetchX509Bundles(pb.X509BundlesRequest(), metadata=HEADER)
        jb = stub.FetchJWTBundles(pb.JWTBundlesRequest(), metadata=HEADER)
        x1 = await _next(xb)
        j1 = await _next(jb)
        assert set(x1.bundles) == set(j1.bundles) == {"spiffe://a.atoll", "spiffe://b.atoll"}
        jwks = json.loads(j1.bundles["spiffe://a.atoll"])
        assert [k["kid"] for k in jwks["keys"]] == [lab.ca_state.active_jwt.key_id]
        lab.rotate_own_ca()
        x2 = await _next(xb)
        j2 = await _next(jb)
        assert len(parse_der_chain(x2.bundles["spiffe://a.atoll"])) == 2
        assert len(json.loads(j2.bundles["spiffe://a.atoll"])["keys"]) == 2
        xb.cancel()
        jb.cancel()


async def test_jwt_fetch_and_validate(lab: Lab) -> None:
    channel, stub = _stub(lab.socket("web"))
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.FetchJWTSVID(pb.JWTSVIDRequest(), metadata=HEADER)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.FetchJWTSVID(
                pb.JWTSVIDRequest(audience=["x"], spiffe_id="nope"), metadata=HEADER
            )
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        resp = await stub.FetchJWTSVID(pb.JWTSVIDRequest(audience=["svc"]), metadata=HEADER)
        token = resp.svids[0].svid
        assert resp.svids[0].spiffe_id == str(WEB)
        assert (
            verify_jwt_svid(token, _bundles(lab), audience="svc", now=system_clock()).spiffe_id
            == WEB
        )
        ok = await stub.ValidateJWTSVID(
            pb.ValidateJWTSVIDRequest(audience="svc", svid=token), metadata=HEADER
        )
        assert ok.spiffe_id == str(WEB)
        assert ok.claims["sub"] == str(WEB)
        assert ok.claims.get_or_create_list("aud")[0] == "svc"
        for request in (
            pb.ValidateJWTSVIDRequest(audience="other", svid=token),
            pb.ValidateJWTSVIDRequest(audience="svc", svid=token[:-4] + "AAAA"),
            pb.ValidateJWTSVIDRequest(audience="", svid=token),
            pb.ValidateJWTSVIDRequest(audience="svc", svid=""),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ValidateJWTSVID(request, metadata=HEADER)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- py-spiffe, separate process

PY_SPIFFE_CLIENT = r"""
import json, queue, sys
from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient
from spiffe.spiffe_id.spiffe_id import TrustDomain
from spiffe.svid.jwt_svid import JwtSvid

def der(c):
    return c.public_bytes(serialization.Encoding.DER).hex()

def say(**kw):
    print(json.dumps(kw), flush=True)

client = WorkloadApiClient(default_timeout=10)  # SPIFFE_ENDPOINT_SOCKET from the environment
svid = client.fetch_x509_svid()
say(event="svid", spiffe_id=str(svid.spiffe_id), chain=[der(c) for c in svid.cert_chain])
bundles = client.fetch_x509_bundles()
say(event="bundles", bundles={str(b.trust_domain): [der(c) for c in b.x509_authorities]
                              for b in bundles.bundles})
jwt = client.fetch_jwt_svid(audience={"svc"})
jwt_bundles = client.fetch_jwt_bundles()
own = jwt_bundles.get_bundle_for_trust_domain(TrustDomain("a.atoll"))
checked = JwtSvid.parse_and_validate(jwt.token, own, {"svc"})
validated = client.validate_jwt_svid(jwt.token, "svc")
say(event="jwt", token=jwt.token, checked=str(checked.spiffe_id),
    validated=str(validated.spiffe_id),
    jwt_domains=sorted(str(b.trust_domain) for b in jwt_bundles.bundles))

updates = queue.Queue()
handle = client.stream_x509_contexts(on_success=updates.put, on_error=lambda e: updates.put(e))
for n in range(2):
    ctx = updates.get(timeout=20)
    if isinstance(ctx, Exception):
        say(event="error", error=repr(ctx)); sys.exit(1)
    s = ctx.default_svid
    say(event="stream", n=n, spiffe_id=str(s.spiffe_id), chain=[der(c) for c in s.cert_chain],
        federated=sorted(str(b.trust_domain) for b in ctx.x509_bundle_set.bundles))
handle.cancel()
client.close()
"""


def _certs(hexes: list[str]) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_der_x509_certificate(bytes.fromhex(h)) for h in hexes)


async def _read_event(proc: asyncio.subprocess.Process) -> dict[str, object]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line:
        err = await proc.stderr.read() if proc.stderr else b""
        raise AssertionError(f"py-spiffe client ended early: {err.decode()[-2000:]}")
    event: dict[str, object] = json.loads(line)
    return event


async def test_py_spiffe_client_conformance_and_rotation(lab: Lab) -> None:
    if importlib.util.find_spec("spiffe") is None:  # never import it here: protos clash
        pytest.skip("the spiffe package (py-spiffe) is not installed")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PY_SPIFFE_CLIENT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{lab.socket('web')}"},
    )
    try:
        svid_event = await _read_event(proc)
        assert svid_event["spiffe_id"] == str(WEB)
        chain = _certs(svid_event["chain"])  # type: ignore[arg-type]
        assert verify_x509_svid(chain, _bundles(lab), now=system_clock()).spiffe_id == WEB

        bundles_event = await _read_event(proc)
        got = bundles_event["bundles"]
        assert isinstance(got, dict) and set(got) == {"a.atoll", "b.atoll"}
        assert set(_certs(got["a.atoll"])) == set(lab.ca_state.bundle().x509_authorities)
        assert set(_certs(got["b.atoll"])) == set(lab.foreign.bundle().x509_authorities)

        jwt_event = await _read_event(proc)
        assert jwt_event["checked"] == jwt_event["validated"] == str(WEB)
        assert jwt_event["jwt_domains"] == ["a.atoll", "b.atoll"]
        token = jwt_event["token"]
        assert isinstance(token, str)
        assert (
            verify_jwt_svid(token, _bundles(lab), audience="svc", now=system_clock()).spiffe_id
            == WEB
        )

        first = await _read_event(proc)
        assert first["n"] == 0 and first["federated"] == ["a.atoll", "b.atoll"]
        first_chain = _certs(first["chain"])  # type: ignore[arg-type]
        lab.rotate_own_ca()
        second = await _read_event(proc)
        assert second["n"] == 1 and second["spiffe_id"] == str(WEB)
        second_chain = _certs(second["chain"])  # type: ignore[arg-type]
        assert second_chain[0] != first_chain[0]
        assert second_chain[0].issuer != first_chain[0].issuer
        verified = verify_x509_svid(second_chain, _bundles(lab), now=system_clock())
        assert verified.chain[-1] == lab.ca_state.active_x509.certificate
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ---------------------------------------------------------------- openssl


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
async def test_openssl_x509_strict_accepts_the_svid_chain(lab: Lab, short_dir: Path) -> None:
    channel, stub = _stub(lab.socket("web"))
    async with channel:
        stream = stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER)
        msg = await _next(stream)
        stream.cancel()
    leaf = parse_der_chain(msg.svids[0].x509_svid)[0]
    roots = parse_der_chain(msg.svids[0].bundle)
    leaf_pem = short_dir / "leaf.pem"
    roots_pem = short_dir / "roots.pem"
    leaf_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    roots_pem.write_bytes(b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots))
    for purpose in ("sslclient", "sslserver"):
        result = await asyncio.to_thread(
            subprocess.run,
            [
                "openssl",
                "verify",
                "-x509_strict",
                "-purpose",
                purpose,
                "-CAfile",
                str(roots_pem),
                str(leaf_pem),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip().endswith(": OK")
    # and the foreign domain's bundle does not vouch for it
    foreign_pem = short_dir / "foreign.pem"
    foreign_pem.write_bytes(
        b"".join(
            c.public_bytes(serialization.Encoding.PEM)
            for c in lab.foreign.bundle().x509_authorities
        )
    )
    result = await asyncio.to_thread(
        subprocess.run,
        ["openssl", "verify", "-x509_strict", "-CAfile", str(foreign_pem), str(leaf_pem)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    # bundle JSON of the domain parses back to the same anchors
    assert (
        parse_bundle(
            render_bundle(lab.ca_state.bundle()),
            trust_domain=A,
        ).x509_authorities
        == roots
    )
