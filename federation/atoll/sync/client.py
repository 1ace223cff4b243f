"""The sync client: one library for every subscriber (agents, DNS, gateways).

:class:`SyncClient` keeps one stream to the control plane alive for as long as
:meth:`SyncClient.run` runs:

* It starts from the persisted last-known-good state (if any), so a subscriber
  restarted while the control plane is down serves what it had.
* It connects, says Hello with the versions it holds (resume), and applies
  each Delta through :func:`~atoll.sync.receiving.apply_delta`: validated as a
  whole, persisted, handed to ``on_update``, *then* ACKed — an ACK means "in
  effect". A rejected delta is NACKed with the reason and nothing changes.
* Reports are state of the world per type: :meth:`set_report` replaces the
  latest set, which is sent once per change and again after every reconnect.
* Heartbeats (agents only) run at the interval the server's Welcome names.
* ``on_acked`` (optional, synchronous) is told each time the ACK of an
  accepted delta has been written: an instrumentation point for apply latency
  (the fan-out benchmark times "applied and acknowledged" with it).
* A broken stream is retried forever with exponential backoff and full
  jitter; the delay resets once a stream has been welcomed.
* Transport security: ``credentials`` is either fixed channel credentials or
  a *provider* called before every connection, so a renewed SVID (or a
  rotated trust bundle) is used from the next connection on without
  rebuilding the client; ``channel_options`` adds options such as
  ``grpc.ssl_target_name_override``. A provider that cannot produce
  credentials yet raises an :class:`~atoll.errors.AtollError`, which counts
  as a failed connection (logged, retried with backoff).

Time, randomness and the channel are injected, so the loop is testable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc
from grpc import aio

from atoll.aio import Backoff, cancel_and_wait, spawn
from atoll.errors import AtollError
from atoll.model import decode, kind_by_name
from atoll.statefile import load_state, save_state
from atoll.sync import metrics
from atoll.sync.receiving import HeldState, Validator, apply_delta
from atoll.sync.table import Item
from atoll.sync.v1 import sync_pb2 as pb
from atoll.sync.v1 import sync_pb2_grpc as pb_grpc
from atoll.sync.wire import NodeInfo, items_to_pb, node_to_pb, push_from_pb

__all__ = ["ChannelOption", "ClientStatus", "CredentialsProvider", "SyncClient", "schema_validator"]

log = logging.getLogger("atoll.sync.client")

STATE_KIND = "atoll.sync.held-state"
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

OnUpdate = Callable[[HeldState, frozenset[str]], Awaitable[None]]
#: builds channel credentials for the next connection (e.g. from the current SVID)
CredentialsProvider = Callable[[], grpc.ChannelCredentials]
ChannelOption = tuple[str, str | int]
#: (type, state now held); called right after the ACK of an accepted delta is written
OnAcked = Callable[[str, HeldState], None]


def schema_validator(extra: Validator | None = None) -> Validator:
    """Validate bodies against their kind's schema, then with ``extra``."""

    def validate(type_: str, item: Item) -> None:
        obj = decode(kind_by_name(type_), item.body)
        path = "/".join(obj.path())
        if path != item.name:
            raise ValueError(f"body names {path!r}, resource is called {item.name!r}")
        if extra is not None:
            extra(type_, item)

    return validate


@dataclass(frozen=True, slots=True)
class ClientStatus:
    connected: bool
    server_id: str
    last_error: str
    connects: int
    deltas_accepted: int
    deltas_rejected: int
    last_rejection: str
    report_errors: Mapping[str, str]
    lease_remaining: float | None


@dataclass(slots=True)
class _Report:
    sequence: int
    items: tuple[Item, ...]
    #: pending -> sent -> acked | rejected; back to pending on reconnect or transient error
    state: str = "pending"


@dataclass(slots=True)
class _Counters:
    connects: int = 0
    accepted: int = 0
    rejected: int = 0
    last_rejection: str = ""
    last_error: str = ""
    server_id: str = ""
    lease_remaining: float | None = None
    report_errors: dict[str, str] = field(default_factory=dict)


class SyncClient:
    def __init__(
        self,
        *,
        target: str,
        node: NodeInfo,
        types: Sequence[str],
        validate: Validator | None = None,
        state_file: Path | None = None,
        on_update: OnUpdate | None = None,
        on_acked: OnAcked | None = None,
        credentials: grpc.ChannelCredentials | CredentialsProvider | None = None,
        channel_options: Sequence[ChannelOption] = (),
        heartbeat: bool = False,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.target = target
        self.node = node.validate()
        self.types = tuple(types)
        self.validate = validate or schema_validator()
        self.state_file = state_file
        self.on_update = on_update
        self.on_acked = on_acked
        self.credentials = credentials
        self.channel_options = [*CHANNEL_OPTIONS, *channel_options]
        self.heartbeat = heartbeat
        self.backoff = backoff or Backoff(base=0.2, cap=5.0)
        self.sleep = sleep
        self.held = self._load()
        self._reports: dict[str, _Report] = {}
        self._report_seq = 0
        self._counters = _Counters()
        self._connected = asyncio.Event()
        self._wake_reports = asyncio.Event()
        self._write_lock = asyncio.Lock()

    # -- public ------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def status(self) -> ClientStatus:
        c = self._counters
        return ClientStatus(
            connected=self.connected,
            server_id=c.server_id,
            last_error=c.last_error,
            connects=c.connects,
            deltas_accepted=c.accepted,
            deltas_rejected=c.rejected,
            last_rejection=c.last_rejection,
            report_errors=MappingProxyType(dict(c.report_errors)),
            lease_remaining=c.lease_remaining,
        )

    def set_report(self, type_: str, items: Sequence[Item]) -> None:
        """Replace the full set of ``type_`` this node reports; sent as soon as possible."""
        frozen = tuple(sorted(items, key=lambda it: it.name))
        current = self._reports.get(type_)
        if current is not None and current.items == frozen:
            return
        self._report_seq += 1
        self._reports[type_] = _Report(sequence=self._report_seq, items=frozen)
        self._wake_reports.set()

    async def run(self) -> None:
        """Keep a stream open forever (until cancelled)."""
        if self.on_update is not None and self.held.types:
            await self.on_update(self.held, frozenset(self.held.types))
        while True:
            self._counters.connects += 1
            metrics.CLIENT_RECONNECTS.inc()
            try:
                await self._session()
                self._counters.last_error = "stream closed by the server"
            except aio.AioRpcError as exc:
                self._counters.last_error = f"{exc.code().name}: {exc.details()}"
            except asyncio.InvalidStateError:
                # grpc.aio raises this from write() once the RPC has ended (server gone)
                self._counters.last_error = "stream ended while writing"
            except AtollError as exc:
                self._counters.last_error = str(exc)
            except Exception as exc:
                # the loop's one catch-all: a bug in one session must not end the
                # subscriber, which keeps serving its last-known-good state
                log.exception("sync session failed", extra={"node": self.node.id})
                self._counters.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self._connected.clear()
                metrics.CLIENT_CONNECTED.set(0)
            delay = self.backoff.next_delay()
            log.info(
                "sync stream down; reconnecting",
                extra={
                    "node": self.node.id,
                    "target": self.target,
                    "error": self._counters.last_error,
                    "retry_in_s": round(delay, 2),
                },
            )
            await self.sleep(delay)

    # -- one connection ----------------------------------------------------
    def _channel(self) -> aio.Channel:
        creds = self.credentials
        if creds is None:
            return aio.insecure_channel(self.target, options=self.channel_options)
        if not isinstance(creds, grpc.ChannelCredentials):
            creds = creds()
        return aio.secure_channel(self.target, creds, options=self.channel_options)

    async def _session(self) -> None:
        async with self._channel() as channel:
            call = pb_grpc.SyncStub(channel).Stream()
            hello = pb.Hello(
                node=node_to_pb(self.node),
                subscriptions=[
                    pb.Subscription(type=t, initial_versions=self.held.versions(t))
                    for t in self.types
                ],
            )
            await call.write(pb.ClientMessage(hello=hello))
            tasks: list[asyncio.Task[Any]] = []
            try:
                while True:
                    msg = await call.read()
                    if msg is aio.EOF:
                        return
                    assert isinstance(msg, pb.ServerMessage)
                    kind = msg.WhichOneof("message")
                    if kind == "welcome":
                        tasks = self._welcomed(call, msg.welcome)
                    elif kind == "delta":
                        await self._on_delta(call, msg.delta)
                    elif kind == "report_ack":
                        self._on_report_ack(msg.report_ack)
                    elif kind == "heartbeat_ack":
                        self._counters.lease_remaining = msg.heartbeat_ack.lease_remaining_ms / 1000
            finally:
                await cancel_and_wait(*tasks)
                call.cancel()

    def _welcomed(self, call: Any, welcome: pb.Welcome) -> list[asyncio.Task[Any]]:
        self._counters.server_id = welcome.server_id
        self._counters.last_error = ""
        self.backoff.reset()
        self._connected.set()
        metrics.CLIENT_CONNECTED.set(1)
        log.info(
            "sync stream up",
            extra={"node": self.node.id, "server": welcome.server_id, "target": self.target},
        )
        for rep in self._reports.values():
            rep.state = "pending"
        self._wake_reports.set()
        tasks = [
            spawn(self._writer_task(self._send_reports(call)), name=f"sync-reports:{self.node.id}")
        ]
        if self.heartbeat:
            interval = max(0.1, welcome.heartbeat_interval_ms / 1000 or 1.0)
            tasks.append(
                spawn(
                    self._writer_task(self._heartbeats(call, interval)),
                    name=f"sync-hb:{self.node.id}",
                )
            )
        return tasks

    async def _write(self, call: Any, msg: pb.ClientMessage) -> None:
        async with self._write_lock:
            await call.write(msg)

    async def _writer_task(self, work: Awaitable[None]) -> None:
        """Run a background writer of this session; a stream that ends under it is not
        an error of its own (the session's reader sees the end and reconnects)."""
        try:
            await work
        except (asyncio.InvalidStateError, aio.AioRpcError):
            return

    async def _send_reports(self, call: Any) -> None:
        while True:
            await self._wake_reports.wait()
            self._wake_reports.clear()
            for type_, rep in list(self._reports.items()):
                if rep.state != "pending":
                    continue
                rep.state = "sent"
                await self._write(
                    call,
                    pb.ClientMessage(
                        report=pb.Report(
                            sequence=rep.sequence, type=type_, resources=items_to_pb(rep.items)
                        )
                    ),
                )

    async def _wake_later(self, delay: float) -> None:
        await self.sleep(delay)
        self._wake_reports.set()

    async def _heartbeats(self, call: Any, interval: float) -> None:
        seq = 0
        while True:
            seq += 1
            await self._write(call, pb.ClientMessage(heartbeat=pb.Heartbeat(sequence=seq)))
            await self.sleep(interval)

    def _on_report_ack(self, ack: pb.ReportAck) -> None:
        for type_, rep in self._reports.items():
            if rep.sequence != ack.sequence:
                continue
            if ack.HasField("error"):
                self._counters.report_errors[type_] = ack.error.message
                log.warning(
                    "report rejected by the control plane",
                    extra={"node": self.node.id, "type": type_, "reason": ack.error.message},
                )
                if ack.error.code == 13:  # INTERNAL: transient on the server side; resend
                    rep.state = "pending"
                    spawn(self._wake_later(1.0), name=f"sync-report-retry:{self.node.id}")
                else:
                    rep.state = "rejected"
            else:
                rep.state = "acked"
                self._counters.report_errors.pop(type_, None)

    async def _on_delta(self, call: Any, delta: pb.Delta) -> None:
        push = push_from_pb(delta)
        if push.type not in self.types:
            error = f"not subscribed to {push.type!r}"
            decision_error: str | None = error
        else:
            decision = apply_delta(self.held, push, self.validate)
            decision_error = decision.error
            if decision.accepted:
                try:
                    self._persist(decision.state)
                    if self.on_update is not None:
                        await self.on_update(decision.state, frozenset({push.type}))
                except Exception as exc:
                    log.exception("applying an accepted delta failed", extra={"node": self.node.id})
                    decision_error = f"subscriber failed to apply: {type(exc).__name__}: {exc}"
                else:
                    self.held = decision.state
        if decision_error is None:
            self._counters.accepted += 1
            metrics.CLIENT_APPLIED.labels(type=push.type, result="ack").inc()
            ack = pb.Ack(type=push.type, nonce=push.nonce)
        else:
            self._counters.rejected += 1
            self._counters.last_rejection = decision_error
            metrics.CLIENT_APPLIED.labels(type=push.type, result="nack").inc()
            log.warning(
                "rejected a delta (NACK)",
                extra={
                    "node": self.node.id,
                    "type": push.type,
                    "version": push.system_version,
                    "reason": decision_error,
                },
            )
            ack = pb.Ack(
                type=push.type,
                nonce=push.nonce,
                error=pb.Status(code=3, message=decision_error),
            )
        await self._write(call, pb.ClientMessage(ack=ack))
        if decision_error is None and self.on_acked is not None:
            self.on_acked(push.type, self.held)

    # -- persistence -------------------------------------------------------
    def _persist(self, state: HeldState) -> None:
        if self.state_file is None:
            return
        payload = {
            "node": self.node.id,
            "system_versions": dict(state.system_versions),
            "types": {
                t: {
                    name: {"version": it.version, "body": base64.b64encode(it.body).decode()}
                    for name, it in items.items()
                }
                for t, items in state.types.items()
            },
        }
        save_state(self.state_file, STATE_KIND, payload)

    def _load(self) -> HeldState:
        if self.state_file is None:
            return HeldState()
        payload = load_state(self.state_file, STATE_KIND)
        if payload is None:
            return HeldState()
        try:
            return self._held_from(payload)
        except (AtollError, ValueError, KeyError, TypeError) as exc:
            aside = self.state_file.with_name(self.state_file.name + ".rejected")
            with contextlib.suppress(OSError):
                self.state_file.replace(aside)
            log.warning(
                "discarded persisted sync state that no longer validates",
                extra={"path": str(self.state_file), "reason": str(exc), "moved_to": str(aside)},
            )
            return HeldState()

    def _held_from(self, payload: Any) -> HeldState:
        if payload["node"] != self.node.id:
            raise ValueError(f"state belongs to node {payload['node']!r}")
        state = HeldState()
        for type_, entries in payload["types"].items():
            if type_ not in self.types:
                continue
            items = {
                name: Item(name=name, version=str(e["version"]), body=base64.b64decode(e["body"]))
                for name, e in entries.items()
            }
            for item in items.values():
                self.validate(type_, item)
            state = state.with_type(type_, items, str(payload["system_versions"].get(type_, "")))
        return state
