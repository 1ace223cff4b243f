"""The sync server: the grpc.aio edge around :class:`~atoll.sync.pushing.Subscription`.

One :meth:`SyncServicer.Stream` call serves one subscriber. Its life:

1. The first message must be ``Hello``; the node identity is validated, the
   :class:`Authorizer` admits it, and a newer stream of the same node id
   replaces an older one (the old stream is closed).
2. The server answers ``Welcome`` (heartbeat interval, lease TTL) and creates
   one subscription per requested type, resumed from the client's versions.
3. A single loop then handles, in order, everything that happens to the
   stream: table changes (coalesced per type), ACK/NACK, reports, heartbeat
   acks. One loop per stream means no locks: subscription state is only
   touched here. Heartbeats are the exception: the stream's reader renews the
   node's lease as soon as one arrives and only queues the ack, because the
   loop may be waiting for a slow subscriber to take a large push, and a node
   that is slow to read is still alive (measured: at 1,000 agents, initial
   pushes of several MB stalled loops past the lease TTL and expired
   thousands of healthy clusters' leases; tests/bench/bench_sync.py).

Concurrency: all streams share the :class:`~atoll.sync.table.ResourceTable`
objects, which only notify; each stream computes its own push when its loop
gets to it, so a slow subscriber delays nobody but itself.

Authentication and authorization are not its business either: the stream's
:class:`Peer` (address and TLS auth context) and the Hello's node go to an
:class:`Authorizer`, which raises :class:`UnauthenticatedError` (no or bad
client certificate → ``UNAUTHENTICATED``) or :class:`PermissionDeniedError`
(a verified peer that may not be this node → ``PERMISSION_DENIED``). The
trust layer's implementation is :class:`atoll.trusthub.authz.SpiffeAuthorizer`;
:class:`AllowAll` is the explicit development mode (``--insecure``).

What the server does with reports and heartbeats is not its business: it hands
them to a :class:`ReportSink` (the control plane stores exports and renews
leases). Errors the sink raises as :class:`~atoll.errors.UserError` go back to
the client in the ``ReportAck``; anything else is logged and reported as an
internal error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from grpc import aio

from atoll.aio import spawn
from atoll.errors import AtollError, InvalidError, UserError
from atoll.sync import metrics
from atoll.sync.pushing import NackRecord, Push, Subscription
from atoll.sync.table import Item, ResourceTable
from atoll.sync.v1 import sync_pb2 as pb
from atoll.sync.wire import NodeInfo, encode_push, item_from_pb, node_from_pb

__all__ = [
    "AllowAll",
    "Authorizer",
    "NodeStatus",
    "Peer",
    "PermissionDeniedError",
    "ReportSink",
    "SubscriptionStatus",
    "SyncServicer",
    "UnauthenticatedError",
    "add_sync_servicer",
]

log = logging.getLogger("atoll.sync.server")

HELLO_TIMEOUT = 10.0
# google.rpc.Code values used in Status messages
_INVALID_ARGUMENT = 3
_PERMISSION_DENIED = 7
_INTERNAL = 13


class PermissionDeniedError(UserError):
    """The node may not do what it asked."""


class UnauthenticatedError(UserError):
    """The peer did not prove who it is (no client certificate, or one that fails to verify)."""


@dataclass(frozen=True, slots=True)
class Peer:
    """The other end of a stream as transport security saw it."""

    address: str
    #: ``ServicerContext.auth_context()``: empty on plaintext channels
    auth: Mapping[str, Sequence[bytes]] = field(default_factory=dict)


class Authorizer(Protocol):
    """Decides who may be which node, and what a node may see and report."""

    def admit(self, node: NodeInfo, peer: Peer) -> None:
        """Raise UnauthenticatedError or PermissionDeniedError to refuse the stream."""

    def visible(self, node: NodeInfo, type_: str) -> Callable[[str], bool] | None:
        """A filter on resource names of ``type_`` for this node; None = all."""

    def may_report(self, node: NodeInfo, type_: str) -> bool: ...


class AllowAll:
    """Development-mode authorizer: every node sees everything, reports anything."""

    def admit(self, node: NodeInfo, peer: Peer) -> None:
        return None

    def visible(self, node: NodeInfo, type_: str) -> Callable[[str], bool] | None:
        return None

    def may_report(self, node: NodeInfo, type_: str) -> bool:
        return True


class ReportSink(Protocol):
    async def node_connected(self, node: NodeInfo) -> None: ...

    async def node_report(self, node: NodeInfo, type_: str, items: Sequence[Item]) -> None:
        """Store a node's full current set of ``type_``; raise UserError to reject it."""

    async def node_heartbeat(self, node: NodeInfo) -> float:
        """Renew the node's liveness; returns the seconds left on its lease."""
        ...

    async def node_disconnected(self, node: NodeInfo) -> None: ...


@dataclass(frozen=True, slots=True)
class SubscriptionStatus:
    type: str
    acked_version: str
    pending_nonce: str | None
    held: int
    pushes: int
    nacks: int
    last_nack: NackRecord | None
    last_nack_at: float | None


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: NodeInfo
    peer: str
    connected: bool
    connected_at: float
    disconnected_at: float | None
    subscriptions: tuple[SubscriptionStatus, ...]
    reports: int
    last_report_error: str | None


@dataclass(slots=True)
class _Stream:
    node: NodeInfo
    peer: str
    connected_at: float
    #: client messages, changed table types (str), ready heartbeat acks, None = end
    inbox: asyncio.Queue[pb.ClientMessage | pb.ServerMessage | str | None] = field(
        default_factory=asyncio.Queue
    )
    dirty: set[str] = field(default_factory=set)
    subs: dict[str, Subscription] = field(default_factory=dict)
    nack_at: dict[str, float] = field(default_factory=dict)
    reports: int = 0
    last_report_error: str | None = None
    closed: bool = False

    def notify(self, type_: str) -> None:
        if type_ not in self.dirty:
            self.dirty.add(type_)
            self.inbox.put_nowait(type_)

    def status(self, *, connected: bool, now: float) -> NodeStatus:
        return NodeStatus(
            node=self.node,
            peer=self.peer,
            connected=connected,
            connected_at=self.connected_at,
            disconnected_at=None if connected else now,
            subscriptions=tuple(
                SubscriptionStatus(
                    type=s.type,
                    acked_version=s.acked_version,
                    pending_nonce=s.inflight.nonce if s.inflight else None,
                    held=len(s.held),
                    pushes=s.pushes,
                    nacks=s.nacks,
                    last_nack=s.last_nack,
                    last_nack_at=self.nack_at.get(s.type),
                )
                for s in self.subs.values()
            ),
            reports=self.reports,
            last_report_error=self.last_report_error,
        )


def _auth_context(
    context: aio.ServicerContext[pb.ClientMessage, pb.ServerMessage],
) -> dict[str, tuple[bytes, ...]]:
    return {k: tuple(v) for k, v in (context.auth_context() or {}).items()}


def _status(code: int, message: str, resources: Sequence[str] = ()) -> pb.Status:
    return pb.Status(code=code, message=message, resources=list(resources))


def _serialize(msg: pb.ServerMessage | bytes) -> bytes:
    """Pushes arrive pre-encoded (:func:`~atoll.sync.wire.encode_push`); the rest is
    serialized as usual."""
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


def add_sync_servicer(servicer: SyncServicer, server: aio.Server) -> None:
    """Register the Sync service on ``server`` (instead of the generated helper, whose
    serializer would re-encode every pre-encoded push)."""
    handler = grpc.method_handlers_generic_handler(
        "atoll.sync.v1.Sync",
        {
            "Stream": grpc.stream_stream_rpc_method_handler(
                servicer.Stream,
                request_deserializer=pb.ClientMessage.FromString,
                response_serializer=_serialize,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))


class SyncServicer:
    """Serves the Sync stream from a set of resource tables."""

    def __init__(
        self,
        *,
        server_id: str,
        tables: Mapping[str, ResourceTable],
        sink: ReportSink,
        authorizer: Authorizer | None = None,
        heartbeat_interval: float = 1.0,
        lease_ttl: float = 5.0,
        max_resources_per_push: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server_id = server_id
        self.tables = tables
        self.sink = sink
        self.authorizer: Authorizer = authorizer or AllowAll()
        self.heartbeat_interval = heartbeat_interval
        self.lease_ttl = lease_ttl
        self.max_resources = max_resources_per_push
        self.clock = clock
        self._streams: dict[str, _Stream] = {}
        self._gone: dict[str, NodeStatus] = {}
        self._nonces = itertools.count(1)

    # -- introspection -----------------------------------------------------
    def node_statuses(self) -> list[NodeStatus]:
        now = self.clock()
        live = [s.status(connected=True, now=now) for s in self._streams.values()]
        return sorted([*live, *self._gone.values()], key=lambda n: n.node.id)

    def _next_nonce(self) -> str:
        return f"{self.server_id}-{next(self._nonces)}"

    # -- the stream --------------------------------------------------------
    async def Stream(
        self,
        request_iterator: AsyncIterator[pb.ClientMessage],
        context: aio.ServicerContext[pb.ClientMessage, pb.ServerMessage],
    ) -> AsyncIterator[pb.ServerMessage | bytes]:
        peer = context.peer() or "unknown"
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                first = await anext(aiter(request_iterator), None)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello within 10 s")
        if first is None or first.WhichOneof("message") != "hello":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message of a stream must be Hello"
            )
        try:
            node = node_from_pb(first.hello.node).validate()
            types = self._check_subscriptions(first.hello)
            self.authorizer.admit(node, Peer(peer, _auth_context(context)))
        except UnauthenticatedError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except PermissionDeniedError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except InvalidError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        stream = _Stream(node=node, peer=peer, connected_at=self.clock())
        old = self._streams.get(node.id)
        if old is not None:
            log.info("node reconnected; closing its older stream", extra={"node": node.id})
            old.closed = True
            old.inbox.put_nowait(None)
        self._streams[node.id] = stream
        self._gone.pop(node.id, None)
        metrics.CONNECTED.labels(role=node.role).inc()
        log.info(
            "node connected",
            extra={"node": node.id, "role": node.role, "peer": peer, "types": sorted(types)},
        )
        reader = spawn(self._read(request_iterator, stream), name=f"sync-read:{node.id}")
        try:
            await self.sink.node_connected(node)
            yield pb.ServerMessage(
                welcome=pb.Welcome(
                    server_id=self.server_id,
                    heartbeat_interval_ms=int(self.heartbeat_interval * 1000),
                    lease_ttl_ms=int(self.lease_ttl * 1000),
                )
            )
            for type_, sub in types.items():
                stream.subs[type_] = Subscription.resume(
                    type_,
                    initial_versions=dict(sub.initial_versions),
                    next_nonce=self._next_nonce,
                    visible=self.authorizer.visible(node, type_),
                    max_resources=self.max_resources,
                )
                self.tables[type_].listen(stream.notify)
                stream.notify(type_)
            async for out in self._loop(stream):
                yield out
        finally:
            for type_ in stream.subs:
                self.tables[type_].unlisten(stream.notify)
            reader.cancel()
            metrics.CONNECTED.labels(role=node.role).dec()
            if self._streams.get(node.id) is stream:
                del self._streams[node.id]
                self._gone[node.id] = stream.status(connected=False, now=self.clock())
                with contextlib.suppress(Exception):
                    await self.sink.node_disconnected(node)
                log.info("node disconnected", extra={"node": node.id})

    def _check_subscriptions(self, hello: pb.Hello) -> dict[str, pb.Subscription]:
        types: dict[str, pb.Subscription] = {}
        for sub in hello.subscriptions:
            if sub.type not in self.tables:
                raise InvalidError(
                    f"unknown resource type {sub.type!r}; this server serves {sorted(self.tables)}",
                    field="hello.subscriptions",
                )
            if sub.type in types:
                raise InvalidError(
                    f"type {sub.type!r} subscribed twice", field="hello.subscriptions"
                )
            types[sub.type] = sub
        return types

    async def _read(self, requests: AsyncIterator[pb.ClientMessage], stream: _Stream) -> None:
        try:
            async for msg in requests:
                if msg.WhichOneof("message") == "heartbeat":
                    stream.inbox.put_nowait(await self._on_heartbeat(stream, msg.heartbeat))
                else:
                    stream.inbox.put_nowait(msg)
        except (aio.AioRpcError, asyncio.CancelledError):
            pass
        except Exception as exc:  # e.g. the server stopping under the stream
            log.debug("stream reader ended", extra={"node": stream.node.id, "error": repr(exc)})
        finally:
            stream.inbox.put_nowait(None)

    async def _loop(self, stream: _Stream) -> AsyncIterator[pb.ServerMessage | bytes]:
        while not stream.closed:
            event = await stream.inbox.get()
            if event is None:
                return
            if isinstance(event, str):
                stream.dirty.discard(event)
                push = stream.subs[event].offer(self.tables[event].snapshot())
            elif isinstance(event, pb.ServerMessage):  # a heartbeat ack (lease already renewed)
                yield event
                continue
            else:
                kind = event.WhichOneof("message")
                if kind == "ack":
                    push = self._on_ack(stream, event.ack)
                elif kind == "report":
                    yield await self._on_report(stream, event.report)
                    continue
                else:
                    log.warning(
                        "ignoring unexpected message", extra={"node": stream.node.id, "kind": kind}
                    )
                    continue
            if push is not None:
                metrics.PUSHES.labels(type=push.type).inc()
                yield encode_push(push)

    async def _on_heartbeat(self, stream: _Stream, hb: pb.Heartbeat) -> pb.ServerMessage:
        try:
            remaining = await self.sink.node_heartbeat(stream.node)
        except AtollError as exc:
            log.warning(
                "heartbeat not recorded", extra={"node": stream.node.id, "reason": str(exc)}
            )
            remaining = 0.0
        return pb.ServerMessage(
            heartbeat_ack=pb.HeartbeatAck(
                sequence=hb.sequence, lease_remaining_ms=max(0, int(remaining * 1000))
            )
        )

    def _on_ack(self, stream: _Stream, ack: pb.Ack) -> Push | None:
        sub = stream.subs.get(ack.type)
        if sub is None:
            log.warning("ack for a type not subscribed", extra={"node": stream.node.id})
            return None
        if ack.HasField("error"):
            inflight = sub.inflight
            push = sub.nack(ack.nonce, ack.error.message)
            if inflight is not None and inflight.nonce == ack.nonce:
                stream.nack_at[ack.type] = self.clock()
                metrics.NACKS.labels(type=ack.type).inc()
                log.warning(
                    "node rejected a push (NACK)",
                    extra={
                        "node": stream.node.id,
                        "type": ack.type,
                        "version": inflight.system_version,
                        "resources": [it.name for it in inflight.resources][:20],
                        "reason": ack.error.message,
                    },
                )
            return push
        return sub.ack(ack.nonce)

    async def _on_report(self, stream: _Stream, report: pb.Report) -> pb.ServerMessage:
        node = stream.node
        error: pb.Status | None = None
        if not self.authorizer.may_report(node, report.type):
            error = _status(_PERMISSION_DENIED, f"node {node.id} may not report {report.type!r}")
        else:
            try:
                await self.sink.node_report(
                    node, report.type, [item_from_pb(r) for r in report.resources]
                )
            except PermissionDeniedError as exc:
                error = _status(_PERMISSION_DENIED, str(exc))
            except UserError as exc:
                error = _status(_INVALID_ARGUMENT, str(exc))
            except AtollError as exc:
                error = _status(_INTERNAL, f"report not stored, will retry: {exc}")
            except Exception as exc:
                log.exception("report handling failed", extra={"node": node.id})
                error = _status(_INTERNAL, f"internal error: {type(exc).__name__}")
        stream.reports += 1
        stream.last_report_error = error.message if error is not None else None
        metrics.REPORTS.labels(type=report.type, result="error" if error else "ok").inc()
        if error is not None:
            log.warning(
                "report rejected",
                extra={"node": node.id, "type": report.type, "reason": error.message},
            )
        return pb.ServerMessage(report_ack=pb.ReportAck(sequence=report.sequence, error=error))
