"""The federation's trust wiring over real sockets: enrollment, mTLS sync, authorization.

A real control plane (SQLite store, mTLS sync port, TLS enrollment port) and
real agents in this process, on 127.0.70.1. Raw gRPC clients play the
attackers: no certificate, a foreign CA, a cross-signed certificate, a valid
SVID claiming another node, a valid agent writing another cluster's objects.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from atoll.aio import cancel_and_wait, spawn
from atoll.errors import FatalError
from atoll.model import (
    Endpoint,
    Metadata,
    ServiceExport,
    ServiceExportSpec,
    ServicePort,
    encode,
)
from atoll.sync import NodeInfo, SyncClient
from atoll.sync.v1 import enrollment_pb2 as epb
from atoll.sync.v1 import enrollment_pb2_grpc as epb_grpc
from atoll.sync.v1 import sync_pb2 as pb
from atoll.sync.v1 import sync_pb2_grpc as pb_grpc
from atoll.sync.wire import node_to_pb
from atoll.trusthub.client import (
    WorkloadIdentity,
    channel_credentials,
    control_plane_channel_options,
)
from atoll.trusthub.domains import cluster_resource
from atoll.trusthub.hub import TrustSettings
from atoll.trusthub.naming import parse_federation_domain
from atoll_agent.agent import Agent
from atoll_agent.catalog import FileSource
from atoll_agent.config import AgentConfig
from atoll_agent.trust.identity import AgentIdentity
from atoll_trust.bundle import parse_bundle
from atoll_trust.ca import mint_x509_svid
from atoll_trust.clock import system_clock
from atoll_trust.jose import generate_private_key
from atoll_trust.kek import generate_kek_text
from atoll_trust.rotation import RotationPolicy, bootstrap_ca_state
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.svid import X509Svid
from atoll_trust.testing import build_certificate
from atoll_trust.workload_api.client import X509Source
from tests.polling import eventually

from .conftest import RunningPlane, start_plane

HOST = "127.0.70.1"
FED = parse_federation_domain("atoll.lab")
H = dt.timedelta(hours=1)
PERMISSION_DENIED = 7


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(prefix="a70-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kek_file(short_dir: Path) -> Path:
    path = short_dir / "kek"
    path.write_text(generate_kek_text())
    path.chmod(0o600)
    return path


@pytest.fixture
async def plane(short_dir: Path, kek_file: Path) -> AsyncIterator[RunningPlane]:
    running = await start_plane(
        short_dir,
        host=HOST,
        insecure=False,
        trust=TrustSettings(kek_file=kek_file),
    )
    yield running
    await cancel_and_wait(running.task)


@pytest.fixture
async def api(plane: RunningPlane) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=plane.api, timeout=5.0) as client:
        yield client


async def join_token(api: httpx.AsyncClient, cluster: str, ttl: int = 600) -> str:
    r = await api.post("/v1/join-tokens", json={"cluster": cluster, "ttl_seconds": ttl})
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    return str(r.json()["token"])


async def bundle_file(api: httpx.AsyncClient, dir: Path) -> Path:
    path = dir / "federation-bundle.json"
    path.write_bytes((await api.get("/v1/trust/bundle")).content)
    return path


class Fleet:
    """Agents with mTLS, each with its own state dir, KEK and Workload API sockets."""

    def __init__(self, plane: RunningPlane, api: httpx.AsyncClient, dir: Path, kek: Path) -> None:
        self.plane, self.api, self.dir, self.kek = plane, api, dir, kek
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.agents: dict[str, Agent] = {}
        self.ports: dict[str, int] = {}

    async def start(self, cluster: str, *, token: str | None = "new") -> Agent:
        cat = self.dir / f"{cluster}.yaml"
        if not cat.exists():
            cat.write_text(
                yaml.safe_dump(
                    {
                        "services": [
                            {
                                "namespace": "demo",
                                "name": "web",
                                "export": True,
                                "ports": [{"name": "http", "port": 8080}],
                                "instances": [{"id": f"{cluster}-1", "address": "10.0.0.1"}],
                            }
                        ]
                    }
                )
            )
        if token == "new":
            token = await join_token(self.api, cluster)
        agent = Agent(
            AgentConfig(
                cluster=cluster,
                region="eu",
                control_plane=self.plane.sync,
                catalog_file=cat,
                listen_host=HOST,
                listen_port=0,
                state_dir=self.dir / cluster,
                join_token=token,
                federation_bundle_file=await bundle_file(self.api, self.dir),
                enroll_endpoint=self.plane.enroll,
                kek_file=self.kek,
                workloads={"dns": "atoll/dns", "web": "demo/web"},
                ca_publish_lead=0.0,
            ),
            source=FileSource(cat, interval=0.05),
        )
        self.agents[cluster] = agent

        def listening(port: int) -> None:
            self.ports[cluster] = port

        self.tasks[cluster] = spawn(agent.run(on_listening=listening), name=f"agent-{cluster}")
        return agent

    async def status(self, cluster: str) -> dict[str, object]:
        port = await eventually(f"{cluster}'s HTTP port", lambda: self.ports.get(cluster))
        async with httpx.AsyncClient(timeout=5.0) as http:
            doc: dict[str, object] = (await http.get(f"http://{HOST}:{port}/v1/status")).json()
        return doc

    async def stop(self, cluster: str) -> None:
        await cancel_and_wait(self.tasks.pop(cluster))


@pytest.fixture
async def fleet(
    plane: RunningPlane, api: httpx.AsyncClient, short_dir: Path, kek_file: Path
) -> AsyncIterator[Fleet]:
    f = Fleet(plane, api, short_dir, kek_file)
    yield f
    await cancel_and_wait(*f.tasks.values())


def connected(agent: Agent) -> bool:
    return agent.sync.status().connected


def held_sequences(agent: Agent) -> dict[str, int | None]:
    assert agent.authority is not None
    return {b.trust_domain.name: b.sequence for b in agent.authority.bundles}


async def nodes(api: httpx.AsyncClient) -> dict[str, bool]:
    return {n["id"]: n["connected"] for n in (await api.get("/v1/nodes")).json()}


def sync_channel(
    plane: RunningPlane, svid: X509Svid | None, bundle_plane: Agent
) -> grpc.aio.Channel:
    assert bundle_plane.identity is not None
    fed = bundle_plane.identity.federation_bundle
    assert fed is not None
    return grpc.aio.secure_channel(
        plane.sync, channel_credentials(svid, fed), options=control_plane_channel_options(FED)
    )


async def open_stream(
    channel: grpc.aio.Channel, node: NodeInfo, report: pb.Report | None = None
) -> list[pb.ServerMessage]:
    """Hello (and a report), then read up to the report's answer; raises AioRpcError."""
    call = pb_grpc.SyncStub(channel).Stream()
    await call.write(pb.ClientMessage(hello=pb.Hello(node=node_to_pb(node))))
    if report is not None:
        await call.write(pb.ClientMessage(report=report))
    seen: list[pb.ServerMessage] = []
    try:
        async with asyncio.timeout(10):
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                assert isinstance(msg, pb.ServerMessage)
                seen.append(msg)
                if report is None or msg.WhichOneof("message") == "report_ack":
                    break
    finally:
        call.cancel()
    return seen


# ---------------------------------------------------------------- the happy path


async def test_agents_enroll_and_sync_over_mtls(
    fleet: Fleet, api: httpx.AsyncClient, short_dir: Path
) -> None:
    a = await fleet.start("a")
    b = await fleet.start("b")

    def imported_from_both() -> bool:
        imp = b.imports.get("demo/web")
        return imp is not None and {t.cluster for t in imp.spec.targets} == {"a", "b"}

    await eventually("b imports web from a and b over mTLS", imported_from_both)
    assert await nodes(api) == {"agent/a": True, "agent/b": True}
    status = await fleet.status("a")
    assert status["spiffe_id"] == "spiffe://atoll.lab/cluster/a"
    assert status["trust_domain"] == "a.atoll.lab"
    # secrets at rest are owner-only
    for name in ("identity.json", "cluster-ca.json"):
        assert oct((short_dir / "a" / name).stat().st_mode & 0o777) == "0o600", name
    assert b"PRIVATE KEY" not in (short_dir / "a" / "cluster-ca.json").read_bytes()
    # every cluster's bundle reaches every other cluster (and the federation's)
    want = {"atoll.lab", "a.atoll.lab", "b.atoll.lab"}
    await eventually("a holds every bundle", lambda: set(held_sequences(a)) == want)
    await eventually("b holds every bundle", lambda: set(held_sequences(b)) == want)
    doc = (await api.get("/v1/trust/status")).json()
    assert doc["enabled"] and doc["federation_domain"] == "atoll.lab"
    assert {d["name"] for d in doc["domains"]} == {
        "federation/atoll-lab",
        "cluster/a",
        "cluster/b",
    }


async def test_bundle_change_reaches_every_federated_cluster(
    fleet: Fleet, api: httpx.AsyncClient
) -> None:
    agents = {c: await fleet.start(c) for c in ("a", "b", "c")}
    for name, agent in agents.items():
        await eventually(
            f"{name} holds a's first bundle",
            lambda agent=agent: held_sequences(agent).get("a.atoll.lab") == 1,  # type: ignore[misc]
        )
    r = await api.post("/v1/trust/rotate", json={"cluster": "a"})
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["rotate_generation"] == 1
    # a publishes its next CA (sequence 2): every federated cluster receives it
    for name, agent in agents.items():
        await eventually(
            f"{name} holds a's rotated bundle",
            lambda agent=agent: (held_sequences(agent).get("a.atoll.lab") or 0) >= 2,  # type: ignore[misc]
        )
    a = agents["a"]
    assert a.authority is not None
    assert len(a.authority.state.x509) == 2  # old CA still published
    stored = (await api.get("/v1/trustdomains", params={"role": "cluster"})).json()
    by_name = {d["metadata"]["name"]: d for d in stored}
    assert by_name["a"]["status"]["rotated_generation"] == 1
    assert by_name["a"]["spec"]["sequence"] >= 2
    assert by_name["b"]["spec"]["sequence"] == 1
    # the Workload API of b serves a's rotated bundle, with both CAs
    b_bundle = agents["b"].authority.bundles.get(TrustDomain("a.atoll.lab"))  # type: ignore[union-attr]
    assert b_bundle is not None and len(b_bundle.x509_authorities) == 2


async def test_restarted_agent_reuses_its_persisted_svid(
    fleet: Fleet, api: httpx.AsyncClient, short_dir: Path
) -> None:
    first = await fleet.start("a")
    await eventually("a connected", lambda: connected(first))
    assert first.identity is not None and first.identity.state is not None
    serial = first.identity.state.svid.leaf.serial_number
    used = first.config.join_token
    await fleet.stop("a")
    # the same (now used) token is ignored: the persisted SVID is enough
    again = await fleet.start("a", token=used)
    await eventually("a reconnected", lambda: connected(again))
    assert again.identity is not None and again.identity.state is not None
    assert again.identity.state.svid.leaf.serial_number == serial
    # a renewal over mTLS gives a new SVID for the same ID
    renewed = await again.identity.renew()
    assert renewed.svid.spiffe_id == FED.spiffe_id("cluster", "a")
    assert renewed.svid.leaf.serial_number != serial
    # an agent with neither identity nor token refuses to start, saying how to fix it
    stranger = AgentIdentity(
        cluster="z",
        federation=FED,
        state_dir=short_dir / "z",
        sync_target="unused:1",
        enroll_target=None,
        join_token=None,
        bundle_file=None,
        clock=system_clock,
    )
    with pytest.raises(FatalError, match="join-token"):
        await stranger.ensure()


# ---------------------------------------------------------------- join tokens


def _csr(key: object | None = None) -> bytes:
    key = key or generate_private_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(
            key,  # type: ignore[arg-type]
            hashes.SHA256(),
        )
    )
    return csr.public_bytes(serialization.Encoding.DER)


async def _enroll(
    plane: RunningPlane, api: httpx.AsyncClient, token: str, csr: bytes
) -> epb.Identity:
    bundle = parse_bundle((await api.get("/v1/trust/bundle")).content, trust_domain=FED)
    async with grpc.aio.secure_channel(
        plane.enroll, channel_credentials(None, bundle), options=control_plane_channel_options(FED)
    ) as ch:
        return await epb_grpc.EnrollmentStub(ch).Enroll(
            epb.EnrollRequest(join_token=token, csr=csr), timeout=10
        )


async def test_used_expired_and_forged_join_tokens_are_refused(
    plane: RunningPlane, api: httpx.AsyncClient
) -> None:
    token = await join_token(api, "a")
    # a malformed CSR is refused without burning the token
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _enroll(plane, api, token, b"not a csr")
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    ok = await _enroll(plane, api, token, _csr())
    assert ok.spiffe_id == "spiffe://atoll.lab/cluster/a"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _enroll(plane, api, token, _csr())
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "already used" in (info.value.details() or "")

    r = await api.post("/v1/join-tokens", json={"cluster": "b", "ttl_seconds": 1})
    short, expires = r.json()["token"], dt.datetime.fromisoformat(r.json()["expires_at"])
    await asyncio.sleep(max(0.0, (expires - system_clock()).total_seconds()) + 0.05)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _enroll(plane, api, short, _csr())
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (info.value.details() or "")

    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for bad, why in ((forged, "unknown"), ("hello", "not an Atoll join token")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _enroll(plane, api, bad, _csr())
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert why in (info.value.details() or "")
    # only a hash is stored: the token text appears nowhere in the store
    db = Path(plane.plane.config.store_url.removeprefix("sqlite://")).read_bytes()
    assert token.encode() not in db and token.rsplit(".", 1)[1].encode() not in db


# ---------------------------------------------------------------- authentication and authorization


async def test_no_certificate_or_foreign_certificate_fails_the_handshake(
    fleet: Fleet, api: httpx.AsyncClient
) -> None:
    a = await fleet.start("a")
    await eventually("a connected", lambda: connected(a))
    node = NodeInfo(id="agent/a", role="agent", cluster="a")
    stranger_td = TrustDomain("evil.example")
    stranger_ca = bootstrap_ca_state(
        stranger_td, now=system_clock() - H, policy=RotationPolicy()
    ).active_x509
    # a certificate claiming the agent's ID, from a CA nobody trusts
    forged = mint_x509_svid(
        stranger_ca, stranger_td.spiffe_id("cluster", "a"), now=system_clock(), ttl=H
    )
    for svid in (None, forged):
        async with sync_channel(fleet.plane, svid, a) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await open_stream(ch, node)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # TLS handshake refused
    assert await nodes(api) == {"agent/a": True}


async def test_wrong_domain_or_wrong_identity_is_refused(
    fleet: Fleet, api: httpx.AsyncClient
) -> None:
    a = await fleet.start("a")
    await fleet.start("b")
    await eventually("a and b connected", lambda: nodes(api))
    await eventually(
        "the control plane knows both cluster bundles",
        lambda: (
            fleet.plane.plane.trust is not None and len(fleet.plane.plane.trust.peer_bundles) == 3
        ),
    )
    assert a.authority is not None and a.identity is not None and a.identity.state is not None
    now = system_clock()
    a_ca = a.authority.state.active_x509
    # 1. cross-signed: the federation ID of agent a, signed by cluster a's CA. OpenSSL's pooled
    #    roots let it through the handshake; the per-domain check does not.
    key = generate_private_key()
    cross = X509Svid(
        FED.spiffe_id("cluster", "a"),
        (
            build_certificate(
                a_ca,
                uris=["spiffe://atoll.lab/cluster/a"],
                not_before=now - H,
                not_after=now + H,
                public_key=key.public_key(),
            ),
        ),
        key,
    )
    async with sync_channel(fleet.plane, cross, a) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await open_stream(ch, NodeInfo(id="agent/a", role="agent", cluster="a"))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "does not verify against the bundle of atoll.lab" in (info.value.details() or "")

    # 2. a valid cluster-domain SVID (a's DNS server) may not be the agent
    dns_svid = mint_x509_svid(
        a_ca, TrustDomain("a.atoll.lab").spiffe_id("atoll", "dns"), now=now, ttl=H
    )
    cases = [
        (dns_svid, NodeInfo(id="agent/a", role="agent", cluster="a")),
        # 3. agent a's own SVID may not be agent b, nor b's DNS server, nor use another node id
        (a.identity.state.svid, NodeInfo(id="agent/b", role="agent", cluster="b")),
        (a.identity.state.svid, NodeInfo(id="dns/a", role="dns", cluster="a")),
        (a.identity.state.svid, NodeInfo(id="agent/x", role="agent", cluster="a")),
        # 4. a's DNS SVID may not be b's DNS server
        (dns_svid, NodeInfo(id="dns/b", role="dns", cluster="b")),
    ]
    for svid, node in cases:
        async with sync_channel(fleet.plane, svid, a) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await open_stream(ch, node)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED, (str(svid.spiffe_id), node)
    # positive control: the same DNS SVID is admitted as a's DNS server
    async with sync_channel(fleet.plane, dns_svid, a) as ch:
        welcome = await open_stream(ch, NodeInfo(id="dns/a", role="dns", cluster="a"))
    assert welcome[0].WhichOneof("message") == "welcome"


async def test_agent_with_a_svid_cannot_write_b_objects(
    fleet: Fleet, api: httpx.AsyncClient
) -> None:
    a = await fleet.start("a")
    b = await fleet.start("b")
    await eventually("b's export stored", lambda: _exists(api, "/v1/exports/b/demo/web"))
    assert a.identity is not None and a.identity.state is not None and a.authority is not None
    me = NodeInfo(id="agent/a", role="agent", cluster="a")
    forged_export = ServiceExport(
        metadata=Metadata(name="web", namespace="demo"),
        spec=ServiceExportSpec(
            cluster="b", ports=[ServicePort(port=1)], endpoints=[Endpoint(address="6.6.6.6")]
        ),
    )
    # a's own CA state dressed up as b's trust domain
    assert b.authority is not None
    forged_domain = cluster_resource(
        b.authority.state, federation=FED, cluster="b", policy=RotationPolicy()
    ).model_copy(
        update={
            "spec": b.authority.report().spec.model_copy(
                update={"bundle": a.authority.report().spec.bundle}
            )
        }
    )
    reports = [
        pb.Report(
            sequence=1,
            type="ServiceExport",
            resources=[pb.Resource(name="b/demo/web", body=encode(forged_export))],
        ),
        pb.Report(
            sequence=2,
            type="TrustDomain",
            resources=[pb.Resource(name="cluster/b", body=encode(forged_domain))],
        ),
    ]
    for report in reports:
        async with sync_channel(fleet.plane, a.identity.state.svid, a) as ch:
            answers = await open_stream(ch, me, report)
        ack = answers[-1].report_ack
        assert ack.HasField("error"), report.type
        assert ack.error.code == PERMISSION_DENIED, ack.error.message
        assert "may" in ack.error.message
    stored = (await api.get("/v1/exports/b/demo/web")).json()
    assert [e["address"] for e in stored["spec"]["endpoints"]] == ["10.0.0.1"]
    domain_b = (await api.get("/v1/trustdomains", params={"role": "cluster"})).json()
    assert {d["metadata"]["name"]: d["spec"]["bundle"] for d in domain_b}["b"] == (
        b.authority.report().spec.bundle
    )


async def test_dns_server_connects_with_its_workload_api_svid(
    fleet: Fleet, api: httpx.AsyncClient, short_dir: Path
) -> None:
    a = await fleet.start("a")
    await eventually("a connected", lambda: connected(a))
    source = X509Source(short_dir / "a" / "workload" / "dns.sock")
    identity = WorkloadIdentity(source, federation=FED)
    dns = SyncClient(
        target=fleet.plane.sync,
        node=NodeInfo(id="dns/a", role="dns", cluster="a"),
        types=["ServiceImport"],
        credentials=identity.credentials,
        channel_options=identity.channel_options(),
    )
    tasks = [spawn(source.run(), name="svid"), spawn(dns.run(), name="dns")]
    try:
        await eventually("dns/a imports over mTLS", lambda: dns.held.items("ServiceImport"))
        ctx = await source.wait_ready()
        assert str(ctx.svid.spiffe_id) == "spiffe://a.atoll.lab/atoll/dns"
        assert {b.trust_domain.name for b in ctx.bundles} >= {"atoll.lab", "a.atoll.lab"}
        assert (await nodes(api))["dns/a"] is True
    finally:
        await cancel_and_wait(*tasks)


async def _exists(api: httpx.AsyncClient, path: str) -> bool:
    return (await api.get(path)).status_code == 200
