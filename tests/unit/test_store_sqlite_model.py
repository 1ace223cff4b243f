"""SqliteStore against a tiny in-memory model of the Store semantics (hypothesis, stateful).

The model is the etcd data model written as plainly as possible: one global
revision; per key create/mod revision and version; CAS on mod_revision
(0 = absent); leases with a TTL on an injected clock whose expiry (checked
before every call, oldest deadline first) deletes their keys in one revision;
``delete_prefix`` is one revision; a history log for watches and compaction.
Hypothesis drives random sequences of calls through both and compares every
result, the full listing and the watch history.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from atoll.errors import CompactedError, ConflictError, LeaseNotFoundError
from atoll.store.base import Event, EventType
from atoll.store.sqlite import SqliteStore
from atoll.store.watching import watch_closing

KEYS = ["a", "a/x", "a/y", "ab", "b/1", "b/2"]
PREFIXES = ["", "a", "a/", "b/", "a/x", "zzz"]


@dataclass
class MEntry:
    value: bytes
    create: int
    mod: int
    version: int
    lease: int | None


@dataclass
class Model:
    now: float = 1000.0
    revision: int = 1
    compacted: int = 0
    next_lease: int = 1
    kv: dict[str, MEntry] = field(default_factory=dict)
    leases: dict[int, tuple[int, float]] = field(default_factory=dict)  # id -> (ttl, expiry)
    log: list[tuple[int, EventType, str, bytes]] = field(default_factory=list)

    def _delete_keys(self, keys: list[str]) -> None:
        if not keys:
            return
        self.revision += 1
        for key in sorted(keys):
            del self.kv[key]
            self.log.append((self.revision, EventType.DELETE, key, b""))

    def sweep(self) -> None:
        expired = sorted(
            (expiry, lease) for lease, (_, expiry) in self.leases.items() if expiry <= self.now
        )
        for _, lease in expired:
            self._delete_keys([k for k, e in self.kv.items() if e.lease == lease])
            del self.leases[lease]

    def put(self, key: str, value: bytes, expect: int | None, lease: int | None) -> int | str:
        self.sweep()
        current = self.kv.get(key)
        if expect is not None and (current.mod if current else 0) != expect:
            return "conflict"
        if lease is not None and lease not in self.leases:
            return "no-lease"
        self.revision += 1
        create = current.create if current else self.revision
        version = current.version + 1 if current else 1
        self.kv[key] = MEntry(value, create, self.revision, version, lease)
        self.log.append((self.revision, EventType.PUT, key, value))
        return self.revision

    def delete(self, key: str, expect: int | None) -> int | str | None:
        self.sweep()
        current = self.kv.get(key)
        if expect is not None and (current is None or current.mod != expect):
            return "conflict"
        if current is None:
            return None
        self._delete_keys([key])
        return self.revision

    def delete_prefix(self, prefix: str) -> int:
        self.sweep()
        keys = [k for k in self.kv if k.startswith(prefix)]
        self._delete_keys(keys)
        return len(keys)

    def grant(self, ttl: int) -> int:
        self.sweep()
        lease = self.next_lease
        self.next_lease += 1
        self.leases[lease] = (ttl, self.now + ttl)
        return lease

    def keepalive(self, lease: int) -> int | str:
        self.sweep()
        if lease not in self.leases:
            return "no-lease"
        ttl, _ = self.leases[lease]
        self.leases[lease] = (ttl, self.now + ttl)
        return ttl

    def revoke(self, lease: int) -> None:
        self.sweep()
        if lease in self.leases:
            self._delete_keys([k for k, e in self.kv.items() if e.lease == lease])
            del self.leases[lease]


expects = st.one_of(st.none(), st.just(0), st.just("current"), st.integers(1, 40))


@settings(max_examples=60, stateful_step_count=40, deadline=None)
class StoreMachine(RuleBasedStateMachine):
    @initialize()
    def open(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="atoll-model-"))
        self.model = Model()
        self.loop = asyncio.new_event_loop()
        self.store = SqliteStore(
            self.dir / "s.db",
            clock=lambda: self.model.now,
            synchronous="OFF",
            retain_revisions=None,
            sweep_interval=0,
        )

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.loop.run_until_complete(self.store.close())
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def expect_for(self, key: str, expect: int | str | None) -> int | None:
        if expect == "current":
            entry = self.model.kv.get(key)
            return entry.mod if entry else 0
        assert not isinstance(expect, str)
        return expect

    @rule(key=st.sampled_from(KEYS), value=st.binary(max_size=6), expect=expects)
    def put(self, key: str, value: bytes, expect: int | str | None) -> None:
        exp = self.expect_for(key, expect)
        want = self.model.put(key, value, exp, None)
        try:
            got: int | str = self.run(self.store.put(key, value, expect=exp)).mod_revision
        except ConflictError:
            got = "conflict"
        assert got == want

    @precondition(lambda self: bool(self.model.next_lease > 1))
    @rule(key=st.sampled_from(KEYS), value=st.binary(max_size=4), pick=st.integers(0, 10))
    def put_leased(self, key: str, value: bytes, pick: int) -> None:
        lease = 1 + pick % (self.model.next_lease - 1)
        want = self.model.put(key, value, None, lease)
        try:
            got: int | str = self.run(self.store.put(key, value, lease=lease)).mod_revision  # type: ignore[arg-type]
        except LeaseNotFoundError:
            got = "no-lease"
        assert got == want

    @rule(key=st.sampled_from(KEYS), expect=expects)
    def delete(self, key: str, expect: int | str | None) -> None:
        exp = self.expect_for(key, expect)
        want = self.model.delete(key, exp)
        try:
            got = self.run(self.store.delete(key, expect=exp))
        except ConflictError:
            got = "conflict"
        assert got == want

    @rule(prefix=st.sampled_from(PREFIXES))
    def delete_prefix(self, prefix: str) -> None:
        assert self.run(self.store.delete_prefix(prefix)) == self.model.delete_prefix(prefix)

    @rule(ttl=st.integers(1, 5))
    def grant(self, ttl: int) -> None:
        assert self.run(self.store.grant_lease(ttl)) == self.model.grant(ttl)

    @precondition(lambda self: bool(self.model.next_lease > 1))
    @rule(pick=st.integers(0, 10))
    def keepalive(self, pick: int) -> None:
        lease = 1 + pick % (self.model.next_lease - 1)
        want = self.model.keepalive(lease)
        try:
            got: int | str = self.run(self.store.keepalive(lease))  # type: ignore[arg-type]
        except LeaseNotFoundError:
            got = "no-lease"
        assert got == want

    @precondition(lambda self: bool(self.model.next_lease > 1))
    @rule(pick=st.integers(0, 10))
    def revoke(self, pick: int) -> None:
        lease = 1 + pick % (self.model.next_lease - 1)
        self.model.revoke(lease)
        self.run(self.store.revoke(lease))  # type: ignore[arg-type]

    @rule(dt=st.sampled_from([0.5, 1.0, 2.0, 4.5]))
    def advance_time(self, dt: float) -> None:
        self.model.now += dt

    @rule(back=st.integers(0, 5))
    def compact(self, back: int) -> None:
        self.model.sweep()
        target = max(1, self.model.revision - back)
        self.run(self.store.compact(target))
        self.model.compacted = max(self.model.compacted, target)

    @rule(prefix=st.sampled_from(PREFIXES), back=st.integers(0, 8))
    def watch_history(self, prefix: str, back: int) -> None:
        self.model.sweep()
        start = max(1, self.model.revision - back)
        want = [
            (rev, kind, key, value)
            for rev, kind, key, value in self.model.log
            if rev >= start and key.startswith(prefix)
        ]
        if start < self.model.compacted:
            try:
                self.run(self.read(prefix, start, 1))
            except CompactedError as exc:
                assert exc.compacted_revision == self.model.compacted
                return
            raise AssertionError("watch from a compacted revision did not raise")
        got = self.run(self.read(prefix, start, len(want)))
        assert [(e.revision, e.type, e.key, e.entry.value) for e in got] == want

    async def read(self, prefix: str, start: int, count: int) -> list[Event]:
        events: list[Event] = []
        if count == 0:
            return events
        async with (
            asyncio.timeout(5),
            watch_closing(self.store, prefix, start_revision=start) as batches,
        ):
            async for batch in batches:
                events.extend(batch.events)
                if len(events) >= count:
                    break
        return events

    @invariant()
    def same_state(self) -> None:
        if not hasattr(self, "store"):
            return
        self.model.sweep()
        listing = self.run(self.store.list(""))
        assert listing.revision == self.model.revision
        assert [
            (e.key, e.value, e.create_revision, e.mod_revision, e.version, e.lease)
            for e in listing.entries
        ] == [
            (k, e.value, e.create, e.mod, e.version, e.lease)
            for k, e in sorted(self.model.kv.items())
        ]


TestStoreModel = StoreMachine.TestCase
