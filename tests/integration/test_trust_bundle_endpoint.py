"""The SPIFFE bundle endpoint and the federation client, over real HTTPS on loopback.

One control plane serves its federation domain's bundle endpoint (https_spiffe);
a second federation (another domain, store and KEK) registers it as a foreign
domain and its leader fetches it. https_web is served with a self-signed Web
PKI certificate the client is told to trust.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll.aio import cancel_and_wait, spawn
from atoll.model import BundleEndpointSpec
from atoll.trusthub.endpoint import BundleEndpoint, parse_request_head
from atoll.trusthub.foreign import fetch_bundle
from atoll.trusthub.hub import TrustSettings
from atoll_trust.bundle import parse_bundle, render_bundle
from atoll_trust.clock import system_clock
from atoll_trust.federation import FetchFailed, FetchSucceeded
from atoll_trust.kek import generate_kek_text
from atoll_trust.rotation import RotationPolicy, bootstrap_ca_state
from atoll_trust.spiffe_id import TrustDomain
from tests.certkit import self_signed
from tests.polling import eventually

from .conftest import RunningPlane, start_plane

HOST = "127.0.70.2"
FED = TrustDomain("atoll.lab")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="a70b-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def kek(dir: Path, name: str) -> Path:
    path = dir / name
    path.write_text(generate_kek_text())
    path.chmod(0o600)
    return path


@pytest.fixture
async def home(short_dir: Path) -> AsyncIterator[RunningPlane]:
    (short_dir / "home").mkdir()
    plane = await start_plane(
        short_dir / "home",
        host=HOST,
        insecure=False,
        trust=TrustSettings(kek_file=kek(short_dir, "home.kek")),
        bundle_endpoint=True,
        server_id="home",
    )
    await eventually("the bundle endpoint listening", lambda: plane.plane.bundle_port)
    yield plane
    await cancel_and_wait(plane.task)


def endpoint_url(plane: RunningPlane, path: str = "/") -> str:
    return f"https://{HOST}:{plane.plane.bundle_port}{path}"


def spiffe_endpoint(
    url: str, spiffe_id: str = "spiffe://atoll.lab/control-plane"
) -> BundleEndpointSpec:
    return BundleEndpointSpec(url=url, profile="https_spiffe", spiffe_id=spiffe_id)


async def test_https_spiffe_endpoint_serves_the_federation_bundle(home: RunningPlane) -> None:
    assert home.plane.trust is not None
    anchor = home.plane.trust.federation_bundle()
    now = system_clock()
    got = await fetch_bundle(spiffe_endpoint(endpoint_url(home)), anchor, now)
    assert isinstance(got, FetchSucceeded), got
    assert parse_bundle(got.document, trust_domain=FED) == anchor
    # the client refuses a server that is not the expected identity ...
    wrong = await fetch_bundle(
        spiffe_endpoint(endpoint_url(home), "spiffe://atoll.lab/cluster/x"), anchor, now
    )
    assert isinstance(wrong, FetchFailed) and "endpoint identity refused" in wrong.error
    # ... or whose certificate does not chain to the bundle it holds for the domain
    stranger = bootstrap_ca_state(FED, now=now, policy=RotationPolicy()).bundle()
    untrusted = await fetch_bundle(spiffe_endpoint(endpoint_url(home)), stranger, now)
    assert isinstance(untrusted, FetchFailed)
    missing = await fetch_bundle(spiffe_endpoint(endpoint_url(home, "/other")), anchor, now)
    assert isinstance(missing, FetchFailed) and "404" in missing.error
    no_anchor = await fetch_bundle(spiffe_endpoint(endpoint_url(home)), None, now)
    assert isinstance(no_anchor, FetchFailed) and "bootstrap bundle" in no_anchor.error


async def test_garbage_requests_get_400_and_never_the_bundle(home: RunningPlane) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for raw in (
        b"\x00\xff garbage\r\n\r\n",
        b"GET nope HTTP/1.1\r\n\r\n",
        b"get / HTTP/1.1\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(HOST, home.plane.bundle_port, ssl=ctx)
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400"), answer[:40]
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == ("GET", "/")


async def test_another_federation_fetches_it_and_keeps_the_last_good_bundle(
    home: RunningPlane, short_dir: Path
) -> None:
    assert home.plane.trust is not None
    anchor = home.plane.trust.federation_bundle()
    (short_dir / "other").mkdir()
    other = await start_plane(
        short_dir / "other",
        host=HOST,
        insecure=False,
        trust=TrustSettings(federation_domain="other.lab", kek_file=kek(short_dir, "other.kek")),
        server_id="other",
    )
    try:
        async with httpx.AsyncClient(base_url=other.api, timeout=5.0) as api:
            r = await api.put(
                "/v1/trust/federations/atoll-lab",
                json={
                    "trust_domain": "atoll.lab",
                    "endpoint": {
                        "url": endpoint_url(home),
                        "profile": "https_spiffe",
                        "spiffe_id": "spiffe://atoll.lab/control-plane",
                    },
                    "bundle": render_bundle(anchor).decode(),
                },
            )
            assert r.status_code == 201, r.text
            # a second foreign domain whose endpoint is down: its bootstrap bundle stays
            dead = bootstrap_ca_state(
                TrustDomain("dead.example"), now=system_clock(), policy=RotationPolicy()
            )
            r = await api.put(
                "/v1/trust/federations/dead",
                json={
                    "trust_domain": "dead.example",
                    "endpoint": {"url": f"https://{HOST}:9/", "profile": "https_web"},
                    "bundle": render_bundle(dead.bundle()).decode(),
                },
            )
            assert r.status_code == 201, r.text
            # the federation's own domain cannot be registered as foreign
            r = await api.put(
                "/v1/trust/federations/mine",
                json={
                    "trust_domain": "x.other.lab",
                    "endpoint": {"url": "https://x.example/", "profile": "https_web"},
                },
            )
            assert r.status_code == 422 and "inside the federation" in r.json()["error"]

            async def rows() -> dict[str, Any] | None:
                doc = (await api.get("/v1/trust/status")).json()
                found = {d["name"]: d for d in doc["domains"]}
                ok = found.get("foreign/atoll-lab", {}).get("last_fetch_success")
                failed = found.get("foreign/dead", {}).get("last_fetch_error")
                return found if ok and failed else None

            found = await eventually("both endpoints polled", rows)
            assert found["foreign/atoll-lab"]["last_fetch_error"] is None
            assert found["foreign/atoll-lab"]["sequence"] == anchor.sequence
            assert found["foreign/atoll-lab"]["next_fetch"] is not None
            assert found["foreign/dead"]["sequence"] == 1  # the last good bundle is kept
            stored = (await api.get("/v1/trustdomains", params={"role": "foreign"})).json()
            kept = {d["metadata"]["name"]: d["spec"]["bundle"] for d in stored}["dead"]
            assert parse_bundle(kept, trust_domain=TrustDomain("dead.example")) == dead.bundle()
    finally:
        await cancel_and_wait(other.task)


async def test_https_web_profile(short_dir: Path) -> None:
    bundle = bootstrap_ca_state(FED, now=system_clock(), policy=RotationPolicy()).bundle()
    web = self_signed("bundle.test", ip_addresses=[HOST], ca=True, now=system_clock())
    cert, key = web.write_pem(short_dir / "web.pem", short_dir / "web.key")
    endpoint = BundleEndpoint(bundle=lambda: bundle, svid=lambda: None, web_cert=cert, web_key=key)
    ports: list[int] = []
    task = spawn(endpoint.serve(HOST, 0, on_listening=ports.append), name="web-endpoint")
    try:
        await eventually("listening", lambda: ports)
        spec = BundleEndpointSpec(url=f"https://{HOST}:{ports[0]}/", profile="https_web")
        trusting = ssl.create_default_context(cafile=str(cert))
        got = await fetch_bundle(spec, None, system_clock(), web_verify=trusting)
        assert isinstance(got, FetchSucceeded)
        assert parse_bundle(got.document, trust_domain=FED) == bundle
        # without trusting that certificate (the system roots) the fetch fails
        refused = await fetch_bundle(spec, None, system_clock())
        assert isinstance(refused, FetchFailed)
    finally:
        await cancel_and_wait(task)
