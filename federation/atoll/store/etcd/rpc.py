"""A typed, failure-translating gRPC client for the etcd methods Atoll calls.

We do not use grpcio-tools' ``*_pb2_grpc`` service stubs: the ``grpc``
package ships no type information (so the stubs would be untyped anyway) and
generated stubs pin the grpcio version they were generated with. Instead each
method is a :class:`Method` constant (path + message types) and
:class:`EtcdRpc` calls it on a ``grpc.aio`` channel.

Failover. One channel is opened to every endpoint (target
``ipv4:a:p,b:p,...``) with the ``round_robin`` load-balancing policy by
default: a dead member's subchannel drops out of the rotation, so new calls
go to live members while gRPC reconnects in the background (backoff capped at
1 s so a restarted member rejoins quickly). ``pick_first`` sends everything to
the first reachable endpoint in list order and moves on when it fails.

A call that was in flight on a dying member fails with UNAVAILABLE;
idempotent calls (reads, lease keepalive/TTL/revoke) are retried here within
their deadline, writes are not (the write may have been applied: the caller
re-reads and re-decides, see ConflictError).

Every call carries etcd's ``hasleader=true`` metadata: a member that has lost
its leader then fails the call (or cancels the watch) at once with "no
leader" instead of hanging, and we move on to another member.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from atoll.aio import Backoff, Sleep
from atoll.errors import AtollError, FatalError, InvalidError, StoreUnavailableError
from atoll.store.etcd.api import etcdserver_pb2 as pb
from atoll.store.etcd.errors import translate_rpc_error

__all__ = [
    "COMPACT",
    "DELETE_RANGE",
    "LEASE_GRANT",
    "LEASE_KEEPALIVE",
    "LEASE_REVOKE",
    "LEASE_TTL",
    "PUT",
    "RANGE",
    "STATUS",
    "TXN",
    "WATCH",
    "EtcdRpc",
    "LoadBalancing",
    "Method",
    "Stream",
    "grpc_target",
]

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

#: etcd's "require leader" metadata (rpctypes.MetadataRequireLeaderKey)
_METADATA = (("hasleader", "true"),)

LoadBalancing = Literal["round_robin", "pick_first"]

_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


@dataclass(frozen=True, slots=True)
class Method(Generic[Req, Resp]):
    """One etcd RPC: its path and its message types."""

    path: str
    request: type[Req]
    response: type[Resp]


RANGE = Method("/etcdserverpb.KV/Range", pb.RangeRequest, pb.RangeResponse)
PUT = Method("/etcdserverpb.KV/Put", pb.PutRequest, pb.PutResponse)
DELETE_RANGE = Method("/etcdserverpb.KV/DeleteRange", pb.DeleteRangeRequest, pb.DeleteRangeResponse)
TXN = Method("/etcdserverpb.KV/Txn", pb.TxnRequest, pb.TxnResponse)
COMPACT = Method("/etcdserverpb.KV/Compact", pb.CompactionRequest, pb.CompactionResponse)
WATCH = Method("/etcdserverpb.Watch/Watch", pb.WatchRequest, pb.WatchResponse)
LEASE_GRANT = Method("/etcdserverpb.Lease/LeaseGrant", pb.LeaseGrantRequest, pb.LeaseGrantResponse)
LEASE_REVOKE = Method(
    "/etcdserverpb.Lease/LeaseRevoke", pb.LeaseRevokeRequest, pb.LeaseRevokeResponse
)
LEASE_KEEPALIVE = Method(
    "/etcdserverpb.Lease/LeaseKeepAlive", pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse
)
LEASE_TTL = Method(
    "/etcdserverpb.Lease/LeaseTimeToLive", pb.LeaseTimeToLiveRequest, pb.LeaseTimeToLiveResponse
)
STATUS = Method("/etcdserverpb.Maintenance/Status", pb.StatusRequest, pb.StatusResponse)


def grpc_target(endpoints: Sequence[tuple[str, int]]) -> str:
    """The gRPC target for ``(host, port)`` endpoints.

    IP literals of one family become a multi-address target (``ipv4:`` /
    ``ipv6:``) that round_robin spreads over; a single host name uses DNS.
    Several host names are refused: gRPC's DNS resolver takes one name only.
    """
    if not endpoints:
        raise InvalidError("at least one etcd endpoint is required", field="endpoints")
    families: set[int] = set()
    for host, _ in endpoints:
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            families.add(0)
    if families == {4}:
        return "ipv4:" + ",".join(f"{h}:{p}" for h, p in endpoints)
    if families == {6}:
        return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in endpoints)
    if len(endpoints) == 1:
        host, port = endpoints[0]
        return f"dns:///{host}:{port}"
    raise InvalidError(
        "several etcd endpoints must all be IP addresses of one family "
        f"(got {', '.join(h for h, _ in endpoints)}); use one DNS name or IP literals",
        field="endpoints",
    )


def _not_ours(exc: asyncio.CancelledError, what: str) -> AtollError:
    """grpc.aio raises CancelledError when the *call* is cancelled (e.g. the
    channel closed). Re-raise it when our own task is being cancelled; else it
    is a store failure, not a cancellation of the caller."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise exc
    return StoreUnavailableError(f"etcd {what} was cancelled (channel closed)")


class Stream(Generic[Req, Resp]):
    """A typed bidirectional stream call (watch, lease keepalive)."""

    def __init__(self, call: Any, translate: Callable[[grpc.aio.AioRpcError], AtollError]) -> None:
        self._call = call
        self._translate = translate

    async def send(self, request: Req) -> None:
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc) from exc
        except (grpc.aio.UsageError, RuntimeError) as exc:  # call already finished
            raise StoreUnavailableError(f"etcd stream closed: {exc}") from exc
        except asyncio.CancelledError as exc:
            raise _not_ours(exc, "stream") from None

    async def receive(self) -> Resp | None:
        """The next message, or None when the server ended the stream."""
        try:
            msg = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc) from exc
        except asyncio.CancelledError as exc:
            raise _not_ours(exc, "stream") from None
        if msg is grpc.aio.EOF:
            return None
        assert isinstance(msg, Message)
        return msg  # type: ignore[return-value]

    def cancel(self) -> None:
        self._call.cancel()


class EtcdRpc:
    """The channel plus typed calls; created lazily on the running event loop."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 5.0,
        load_balancing: LoadBalancing = "round_robin",
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if load_balancing not in ("round_robin", "pick_first"):
            raise InvalidError(f"unknown load balancing policy {load_balancing!r}")
        self.target = target
        self.timeout = timeout
        self.load_balancing = load_balancing
        self._sleep = sleep
        self._clock = clock
        self._channel: Any = None
        self._callables: dict[str, Any] = {}
        self._closed = False

    def _open(self) -> Any:
        if self._closed:
            raise FatalError(f"etcd store {self.target} is closed")
        if self._channel is None:
            options = (*_CHANNEL_OPTIONS, ("grpc.lb_policy_name", self.load_balancing))
            self._channel = grpc.aio.insecure_channel(self.target, options=options)
        return self._channel

    @staticmethod
    def _translate(
        exc: grpc.aio.AioRpcError, *, lease: int | None = None, revision: int | None = None
    ) -> AtollError:
        return translate_rpc_error(
            exc.code().name, exc.details() or "", lease=lease, revision=revision
        )

    async def unary(
        self,
        method: Method[Req, Resp],
        request: Req,
        *,
        idempotent: bool,
        lease: int | None = None,
        revision: int | None = None,
    ) -> Resp:
        """Call ``method``; retry retryable failures within the deadline if idempotent."""
        channel = self._open()
        callable_ = self._callables.get(method.path)
        if callable_ is None:
            callable_ = self._callables[method.path] = channel.unary_unary(
                method.path,
                request_serializer=method.request.SerializeToString,
                response_deserializer=method.response.FromString,
            )
        deadline = self._clock() + self.timeout
        backoff = Backoff(base=0.05, cap=0.5, floor=0.02)
        while True:
            remaining = deadline - self._clock()
            try:
                response = await callable_(
                    request, timeout=max(remaining, 0.01), metadata=_METADATA
                )
            except asyncio.CancelledError as exc:
                raise _not_ours(exc, method.path) from None
            except grpc.aio.AioRpcError as exc:
                error = self._translate(exc, lease=lease, revision=revision)
                delay = backoff.next_delay()
                if (
                    not idempotent
                    or not isinstance(error, StoreUnavailableError)
                    or self._closed
                    or self._clock() + delay >= deadline
                ):
                    raise error from exc
                await self._sleep(delay)
                continue
            assert isinstance(response, method.response)
            return response

    def stream(
        self, method: Method[Req, Resp], *, timeout: float | None = None
    ) -> Stream[Req, Resp]:
        """Open a bidirectional stream (no deadline unless ``timeout``)."""
        call = self._open().stream_stream(
            method.path,
            request_serializer=method.request.SerializeToString,
            response_deserializer=method.response.FromString,
        )(metadata=_METADATA, timeout=timeout)
        return Stream(call, self._translate)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close(grace=None)
