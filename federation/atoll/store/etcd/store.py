"""EtcdStore: the production :class:`~atoll.store.base.Store`, on etcd v3's gRPC API.

The Store model *is* etcd's (see :mod:`atoll.store.base`), so each operation
maps onto one RPC:

* ``get``/``list``/``revision`` -> ``KV.Range`` (linearizable). ``list``
  pages through large prefixes, pinning every page to the first page's
  revision so the listing is one consistent snapshot.
* ``put``/``delete`` with ``expect`` -> ``KV.Txn`` comparing ``mod_revision``
  (``expect=0``: ``create_revision == 0``, i.e. absent); the failure branch
  reads the key so the ConflictError carries its actual revision. The new
  entry's create revision and version come from ``prev_kv``, not a second read.
* leases -> ``Lease.LeaseGrant``/``LeaseRevoke``/``LeaseTimeToLive`` and one
  request/response on a ``LeaseKeepAlive`` stream (etcd answers TTL 0 for a
  lease that is gone).
* ``watch`` -> ``Watch.Watch``, self-resuming (:mod:`atoll.store.etcd.watch`).
* ``compact`` -> ``KV.Compact`` (physical, so it has taken effect on return).

Connection handling, retries and error translation live in
:mod:`atoll.store.etcd.rpc`. The channel opens lazily on the first call, so
the constructor does no I/O and may run outside an event loop; all calls must
then come from that one loop. etcd keeps history until its own compaction
(``--auto-compaction-*`` flags or :meth:`compact`): this class never compacts
by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence

from atoll.aio import Backoff, Sleep
from atoll.errors import CompactedError, ConflictError, LeaseNotFoundError, StoreUnavailableError
from atoll.store.base import Entry, LeaseId, Listing, WatchBatch, prefix_end
from atoll.store.etcd.api import etcdserver_pb2 as pb
from atoll.store.etcd.rpc import (
    COMPACT,
    DELETE_RANGE,
    LEASE_GRANT,
    LEASE_KEEPALIVE,
    LEASE_REVOKE,
    LEASE_TTL,
    PUT,
    RANGE,
    STATUS,
    TXN,
    EtcdRpc,
    LoadBalancing,
    grpc_target,
)
from atoll.store.etcd.watch import entry_from_kv, watch_range
from atoll.store.keys import (
    check_expect,
    check_lease,
    check_revision,
    check_ttl,
    check_value,
    encode_key,
    encode_prefix,
)

__all__ = ["EtcdStore"]

#: keys per Range page when listing
_PAGE = 1000
#: a key no Atoll key can equal (keys are printable ASCII): ``revision()`` reads it
_PROBE = b"\x00"


def _range(prefix: bytes) -> tuple[bytes, bytes]:
    """etcd's (key, range_end) for a prefix; the empty prefix is every key."""
    if not prefix:
        return b"\x00", b"\x00"
    return prefix, prefix_end(prefix)


class EtcdStore:
    """A Store on an etcd v3 cluster; see the module docstring."""

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        *,
        timeout: float = 5.0,
        load_balancing: LoadBalancing = "round_robin",
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self._sleep = sleep
        self._clock = clock
        self._rpc = EtcdRpc(
            grpc_target(self.endpoints),
            timeout=timeout,
            load_balancing=load_balancing,
            sleep=sleep,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"EtcdStore({self._rpc.target!r})"

    # -- reads -----------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        response = await self._rpc.unary(
            RANGE, pb.RangeRequest(key=encode_key(key)), idempotent=True
        )
        return entry_from_kv(response.kvs[0]) if response.kvs else None

    async def list(self, prefix: str) -> Listing:
        start, end = _range(encode_prefix(prefix))
        for _ in range(5):  # a compaction between two pages restarts the listing
            try:
                return await self._list_pages(start, end)
            except CompactedError:
                continue
        return await self._list_pages(start, end)

    async def _list_pages(self, start: bytes, end: bytes) -> Listing:
        entries: list[Entry] = []
        revision = 0
        key = start
        while True:
            response = await self._rpc.unary(
                RANGE,
                pb.RangeRequest(key=key, range_end=end, limit=_PAGE, revision=revision),
                idempotent=True,
                revision=revision,
            )
            if not revision:
                revision = response.header.revision
            entries.extend(entry_from_kv(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return Listing(entries=tuple(entries), revision=revision)
            key = response.kvs[-1].key + b"\x00"

    async def revision(self) -> int:
        response = await self._rpc.unary(
            RANGE, pb.RangeRequest(key=_PROBE, count_only=True), idempotent=True
        )
        return response.header.revision

    # -- writes ------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expect: int | None = None,
        lease: LeaseId | None = None,
    ) -> Entry:
        raw = encode_key(key)
        check_value(value)
        check_expect(expect)
        lease_id = 0 if lease is None else check_lease(lease)
        request = pb.PutRequest(key=raw, value=value, lease=lease_id, prev_kv=True)
        if expect is None:
            put = await self._rpc.unary(PUT, request, idempotent=False, lease=lease_id)
            revision = put.header.revision
        else:
            txn = await self._rpc.unary(
                TXN,
                pb.TxnRequest(
                    compare=[_compare(raw, expect)],
                    success=[pb.RequestOp(request_put=request)],
                    failure=[pb.RequestOp(request_range=pb.RangeRequest(key=raw))],
                ),
                idempotent=False,
                lease=lease_id,
            )
            if not txn.succeeded:
                raise _conflict(key, expect, txn)
            put = txn.responses[0].response_put
            revision = txn.header.revision
        prev = put.prev_kv if put.HasField("prev_kv") else None
        return Entry(
            key=key,
            value=value,
            create_revision=prev.create_revision if prev else revision,
            mod_revision=revision,
            version=prev.version + 1 if prev else 1,
            lease=lease,
        )

    async def delete(self, key: str, *, expect: int | None = None) -> int | None:
        raw = encode_key(key)
        check_expect(expect)
        if expect is None:
            response = await self._rpc.unary(
                DELETE_RANGE, pb.DeleteRangeRequest(key=raw), idempotent=False
            )
            return response.header.revision if response.deleted else None
        txn = await self._rpc.unary(
            TXN,
            pb.TxnRequest(
                compare=[_compare(raw, expect)],
                success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=raw))],
                failure=[pb.RequestOp(request_range=pb.RangeRequest(key=raw))],
            ),
            idempotent=False,
        )
        if not txn.succeeded:
            raise _conflict(key, expect, txn)
        if not txn.responses[0].response_delete_range.deleted:  # expect=0 on an absent key
            raise ConflictError(key, expected=expect, actual_revision=0)
        return txn.header.revision

    async def delete_prefix(self, prefix: str) -> int:
        start, end = _range(encode_prefix(prefix))
        response = await self._rpc.unary(
            DELETE_RANGE, pb.DeleteRangeRequest(key=start, range_end=end), idempotent=False
        )
        return response.deleted

    # -- leases -------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> LeaseId:
        response = await self._rpc.unary(
            LEASE_GRANT, pb.LeaseGrantRequest(TTL=check_ttl(ttl)), idempotent=False
        )
        return LeaseId(response.ID)

    async def keepalive(self, lease: LeaseId) -> int:
        lease_id = check_lease(lease)
        deadline = self._clock() + self._rpc.timeout
        backoff = Backoff(base=0.05, cap=0.5, floor=0.02)
        while True:
            stream = self._rpc.stream(LEASE_KEEPALIVE, timeout=max(deadline - self._clock(), 0.01))
            try:
                await stream.send(pb.LeaseKeepAliveRequest(ID=lease_id))
                response = await stream.receive()
            except LeaseNotFoundError:
                raise LeaseNotFoundError(lease_id) from None
            except StoreUnavailableError:
                delay = backoff.next_delay()
                if self._clock() + delay >= deadline or self._rpc.closed:
                    raise
                await self._sleep(delay)
                continue
            finally:
                stream.cancel()
            if response is None or response.TTL <= 0:
                raise LeaseNotFoundError(lease_id)
            return response.TTL

    async def lease_remaining(self, lease: LeaseId) -> float | None:
        lease_id = check_lease(lease)
        try:
            response = await self._rpc.unary(
                LEASE_TTL, pb.LeaseTimeToLiveRequest(ID=lease_id), idempotent=True, lease=lease_id
            )
        except LeaseNotFoundError:
            return None
        return None if response.TTL < 0 else float(response.TTL)

    async def revoke(self, lease: LeaseId) -> None:
        lease_id = check_lease(lease)
        try:
            await self._rpc.unary(
                LEASE_REVOKE, pb.LeaseRevokeRequest(ID=lease_id), idempotent=True, lease=lease_id
            )
        except LeaseNotFoundError:
            return

    # -- history --------------------------------------------------------------------------

    def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchBatch]:
        start, end = _range(encode_prefix(prefix))
        check_revision(start_revision, field="start_revision")
        return watch_range(
            self._rpc,
            start,
            end,
            start_revision,
            sleep=self._sleep,
            backoff=Backoff(base=0.05, cap=1.0, floor=0.02),
        )

    async def compact(self, revision: int) -> None:
        check_revision(revision, field="revision")
        try:
            await self._rpc.unary(
                COMPACT,
                pb.CompactionRequest(revision=revision, physical=True),
                idempotent=True,
                revision=revision,
            )
        except CompactedError:
            return  # already compacted at or beyond `revision`

    # -- cluster ----------------------------------------------------------------------------

    async def status(self) -> pb.StatusResponse:
        """Maintenance status of whichever member answers (leader id, raft index...)."""
        return await self._rpc.unary(STATUS, pb.StatusRequest(), idempotent=True)

    async def close(self) -> None:
        await self._rpc.close()


def _compare(key: bytes, expect: int) -> pb.Compare:
    if expect == 0:
        return pb.Compare(
            key=key,
            target=pb.Compare.CREATE,
            result=pb.Compare.EQUAL,
            create_revision=0,
        )
    return pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=expect)


def _conflict(key: str, expect: int, txn: pb.TxnResponse) -> ConflictError:
    kvs = txn.responses[0].response_range.kvs if txn.responses else ()
    actual = kvs[0].mod_revision if kvs else 0
    return ConflictError(key, expected=expect, actual_revision=actual)
