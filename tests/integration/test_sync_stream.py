"""The sync protocol over real gRPC sockets on loopback: push, ACK/NACK,
resume, reports, heartbeats, reconnect with persisted state."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc import aio

from atoll.aio import Backoff, cancel_and_wait, spawn
from atoll.errors import InvalidError
from atoll.model import Metadata, Region, RegionSpec, encode
from atoll.sync import (
    HeldState,
    Item,
    NodeInfo,
    PermissionDeniedError,
    ResourceTable,
    SyncClient,
    SyncServicer,
)
from atoll.sync.server import add_sync_servicer
from atoll.sync.v1 import sync_pb2 as pb
from atoll.sync.v1 import sync_pb2_grpc as pb_grpc
from tests.polling import eventually

HOST = "127.0.0.1"


def region(name: str, version: str, lat: float = 10.0) -> Item:
    r = Region(metadata=Metadata(name=name), spec=RegionSpec(latitude=lat))
    return Item(name=name, version=version, body=encode(r))


class RecordingSink:
    def __init__(self) -> None:
        self.reports: list[tuple[str, str, list[str]]] = []
        self.heartbeats = 0
        self.connected: list[str] = []
        self.disconnected: list[str] = []

    async def node_connected(self, node: NodeInfo) -> None:
        self.connected.append(node.id)

    async def node_disconnected(self, node: NodeInfo) -> None:
        self.disconnected.append(node.id)

    async def node_heartbeat(self, node: NodeInfo) -> float:
        self.heartbeats += 1
        return 4.5

    async def node_report(self, node: NodeInfo, type_: str, items: Sequence[Item]) -> None:
        if any(it.name.startswith("bad") for it in items):
            raise InvalidError("bad item name")
        if any(it.name.startswith("theirs") for it in items):
            raise PermissionDeniedError("not yours")
        self.reports.append((node.id, type_, [it.name for it in items]))


class Server:
    def __init__(self, table: ResourceTable, sink: RecordingSink) -> None:
        self.table = table
        self.sink = sink
        self.servicer = SyncServicer(
            server_id="test", tables={"Region": table}, sink=sink, heartbeat_interval=0.1
        )
        self.server: aio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self.server = aio.server()
        add_sync_servicer(self.servicer, self.server)
        self.port = self.server.add_insecure_port(f"{HOST}:{port}")
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    table = ResourceTable("Region")
    table.replace_all([region("eu", "1"), region("us", "1")])
    srv = Server(table, RecordingSink())
    await srv.start()
    yield srv
    await srv.stop()


def make_client(target: str, tmp_path: Path | None = None, **kw: object) -> SyncClient:
    return SyncClient(
        target=target,
        node=NodeInfo(id="agent/a", role="agent", cluster="a"),
        types=["Region"],
        state_file=(tmp_path / "held.json") if tmp_path else None,
        backoff=Backoff(base=0.05, cap=0.2, rng=random.Random(1)),
        **kw,  # type: ignore[arg-type]
    )


def versions(state: HeldState) -> dict[str, str]:
    return state.versions("Region")


async def test_push_ack_and_updates(server: Server) -> None:
    seen: list[dict[str, str]] = []

    async def on_update(state: HeldState, types: frozenset[str]) -> None:
        seen.append(versions(state))

    client = make_client(server.target, on_update=on_update)
    task = spawn(client.run(), name="client")
    try:
        await eventually(
            "the expected state", lambda: versions(client.held) == {"eu": "1", "us": "1"}
        )
        server.table.apply([region("eu", "2")], removals=["us"])
        await eventually("the expected state", lambda: versions(client.held) == {"eu": "2"})
        node = server.servicer.node_statuses()[0]
        await eventually(
            "the server to record the ACK",
            lambda: server.servicer.node_statuses()[0].subscriptions[0].acked_version == "2",
        )
        assert node.connected and node.node.id == "agent/a"
        assert seen[-1] == {"eu": "2"}
        assert client.status().deltas_accepted >= 2
    finally:
        await cancel_and_wait(task)


async def test_nack_keeps_old_state_and_is_visible(server: Server) -> None:
    client = make_client(server.target)
    task = spawn(client.run(), name="client")
    try:
        await eventually("the expected state", lambda: "eu" in versions(client.held))
        server.table.apply([Item(name="eu", version="7", body=b'{"kind":"Region"}')])
        await eventually("the expected state", lambda: client.status().deltas_rejected == 1)
        assert versions(client.held)["eu"] == "1", "rejected delta must not be applied"
        await eventually(
            "the expected state",
            lambda: server.servicer.node_statuses()[0].subscriptions[0].nacks == 1,
        )
        sub = server.servicer.node_statuses()[0].subscriptions[0]
        assert sub.last_nack is not None and "eu@7" in sub.last_nack.message
        # a newer good version goes through; the bad one was never resent
        server.table.apply([region("eu", "8")])
        await eventually("the expected state", lambda: versions(client.held).get("eu") == "8")
        assert client.status().deltas_rejected == 1
    finally:
        await cancel_and_wait(task)


async def test_reports_and_heartbeats(server: Server) -> None:
    client = make_client(server.target, heartbeat=True)
    client.set_report("Region", [region("mine", "0")])
    task = spawn(client.run(), name="client")
    try:
        await eventually(
            "the expected state", lambda: ("agent/a", "Region", ["mine"]) in server.sink.reports
        )
        await eventually("the expected state", lambda: server.sink.heartbeats >= 3)
        await eventually("the expected state", lambda: client.status().lease_remaining == 4.5)
        client.set_report("Region", [region("bad-one", "0")])
        await eventually("the expected state", lambda: "Region" in client.status().report_errors)
        assert "bad item name" in client.status().report_errors["Region"]
        client.set_report("Region", [region("theirs", "0")])
        await eventually(
            "the expected state",
            lambda: "not yours" in client.status().report_errors.get("Region", ""),
        )
        client.set_report("Region", [region("mine", "0"), region("mine2", "0")])
        await eventually("the expected state", lambda: not client.status().report_errors)
        assert server.sink.reports[-1] == ("agent/a", "Region", ["mine", "mine2"])
    finally:
        await cancel_and_wait(task)


async def test_resume_sends_only_difference_and_state_survives_restart(
    server: Server, tmp_path: Path
) -> None:
    client = make_client(server.target, tmp_path)
    task = spawn(client.run(), name="client")
    await eventually("the expected state", lambda: versions(client.held) == {"eu": "1", "us": "1"})
    await cancel_and_wait(task)
    await server.stop()
    # server gone: a new client process starts from the persisted state
    restarted = make_client(server.target, tmp_path)
    assert versions(restarted.held) == {"eu": "1", "us": "1"}
    server.table.apply([region("us", "2")])
    await server.start(server.port)
    task = spawn(restarted.run(), name="client2")
    try:
        await eventually(
            "the expected state", lambda: versions(restarted.held) == {"eu": "1", "us": "2"}
        )
        sub = server.servicer.node_statuses()[0].subscriptions[0]
        assert sub.pushes == 1, "resume should need exactly one push"
    finally:
        await cancel_and_wait(task)


async def test_client_reconnects_after_server_restart(server: Server) -> None:
    client = make_client(server.target)
    task = spawn(client.run(), name="client")
    try:
        await eventually("the expected state", lambda: client.connected)
        await server.stop()
        await eventually("the expected state", lambda: not client.connected)
        assert versions(client.held) == {"eu": "1", "us": "1"}, "keeps serving last state"
        server.table.apply([region("ap", "1")])
        await server.start(server.port)
        await eventually("the expected state", lambda: "ap" in versions(client.held))
        assert client.status().connects >= 2
    finally:
        await cancel_and_wait(task)


async def test_corrupt_state_file_is_discarded(server: Server, tmp_path: Path) -> None:
    (tmp_path / "held.json").write_text(
        '{"format":1,"kind":"atoll.sync.held-state","payload":{"x":1}'
    )
    client = make_client(server.target, tmp_path)
    assert client.held.types == {}
    assert list(tmp_path.glob("held.json.corrupt-*")), "corrupt file moved aside"


@pytest.mark.parametrize(
    ("first", "code", "text"),
    [
        (
            pb.ClientMessage(heartbeat=pb.Heartbeat(sequence=1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Hello",
        ),
        (
            pb.ClientMessage(hello=pb.Hello(node=pb.Node(id="x", role="wizard"))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "node.role",
        ),
        (
            pb.ClientMessage(
                hello=pb.Hello(
                    node=pb.Node(id="agent/a", role="agent", cluster="a"),
                    subscriptions=[pb.Subscription(type="Nope")],
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown resource type",
        ),
    ],
)
async def test_bad_hello_is_refused(
    server: Server, first: pb.ClientMessage, code: grpc.StatusCode, text: str
) -> None:
    async with aio.insecure_channel(server.target) as ch:
        call = pb_grpc.SyncStub(ch).Stream()
        await call.write(first)
        with pytest.raises(aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == code
        assert text in (err.value.details() or "")
        with contextlib.suppress(Exception):
            call.cancel()
