"""The synchronous heart of :class:`~atoll.store.sqlite.SqliteStore`: all its SQL.

An instance is created, used and closed on one thread (the store's DB thread);
nothing here is async or thread-safe, and nothing here knows about asyncio.
The async facade in :mod:`atoll.store.sqlite` queues calls onto that thread.

Data model (etcd's MVCC, reduced — see :mod:`atoll.store.base`):

* ``meta``: the current ``revision`` (1 for an empty store, like etcd), the
  ``compact_revision`` (history below it is gone; 0 = never compacted) and
  ``next_lease`` (lease ids are never reused, even across restarts).
* ``kv``: the live keys with create/mod revision, version and lease.
* ``history``: one row per change (``rev``, ``seq`` within the revision), the
  source of watch-from-revision. It is trimmed by :meth:`compact` and by the
  automatic retention of the last ``retain_revisions`` revisions.
* ``leases``: TTL and *wall-clock* expiry (``clock()`` is injected, by default
  ``time.time``), so a lease outlives a restart while it is within its TTL.

Every write is atomic — its own transaction, or a savepoint inside a group
commit (:meth:`SqliteEngine.run_batch`) — and bumps the revision once (a
``delete_prefix`` or the expiry of a lease with many keys is one revision with
several events, as in etcd). Expired leases are swept at the start of every
call, so no reader ever sees a key whose lease has run out, and the deletions
get their own revisions before the caller's write.

The database is owned by one process: an exclusive ``flock`` on
``<db>.lock`` is taken before SQLite opens the file and held until
:meth:`close`. A file that is not SQLite, or is SQLite but not an Atoll store,
is refused with :class:`~atoll.errors.FatalError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from atoll.errors import (
    CompactedError,
    ConflictError,
    FatalError,
    InvalidError,
    LeaseNotFoundError,
)
from atoll.store.base import Entry, Event, EventType, LeaseId, Listing, prefix_end
from atoll.store.keys import decode_key

__all__ = ["HistoryRead", "Outcome", "SqliteEngine", "Synchronous"]

Synchronous = Literal["FULL", "NORMAL", "OFF"]

#: "ATOL" — marks a file as an Atoll store (SQLite's PRAGMA application_id)
APPLICATION_ID: Final = 0x41544F4C
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER
) WITHOUT ROWID;
CREATE INDEX kv_lease ON kv (lease) WHERE lease IS NOT NULL;
CREATE TABLE history (
    rev INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    key BLOB NOT NULL,
    kind INTEGER NOT NULL,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER,
    PRIMARY KEY (rev, seq)
) WITHOUT ROWID;
CREATE TABLE leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX leases_expiry ON leases (expires_at);
INSERT INTO meta VALUES ('revision', 1), ('compact_revision', 0), ('next_lease', 1);
"""

_PUT, _DELETE = 0, 1

#: a call's result or the exception it raised
Outcome = tuple[object, BaseException | None]


def _outcome(call: Callable[[], object]) -> Outcome:
    try:
        return call(), None
    except Exception as exc:
        return None, exc


@dataclass(frozen=True, slots=True)
class HistoryRead:
    """One read of the history table for a watcher."""

    events: tuple[Event, ...]
    #: every revision up to here has been examined (events or not)
    scanned_to: int


@dataclass(frozen=True, slots=True)
class _Row:
    create_rev: int
    mod_rev: int
    version: int


def _range_clause(prefix: bytes) -> tuple[str, tuple[bytes, ...]]:
    if not prefix:
        return "1", ()
    return "key >= ? AND key < ?", (prefix, prefix_end(prefix))


def _lock(lock_path: Path) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        where = (
            "in this process"
            if holder == str(os.getpid())
            else f"in another process (pid {holder})"
        )
        raise FatalError(
            f"{lock_path.with_suffix('')} is already open {where} (lock {lock_path}); "
            "an embedded store has exactly one owner: close the other store first"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class SqliteEngine:
    """Synchronous store operations on one SQLite connection (one thread only)."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float],
        synchronous: Synchronous = "FULL",
        retain_revisions: int | None = 10_000,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise InvalidError(f"synchronous must be FULL, NORMAL or OFF, not {synchronous!r}")
        if retain_revisions is not None and retain_revisions < 1:
            raise InvalidError("retain_revisions must be >= 1 or None (keep all history)")
        self._clock = clock
        self._retain = retain_revisions
        #: trim history in steps, not on every write
        self._trim_step = max(1, (retain_revisions or 1) // 16)
        self.path = path
        self._in_batch = False
        if not path.parent.is_dir():
            raise FatalError(f"cannot open store {path}: directory {path.parent} does not exist")
        self._lock_fd = _lock(path.with_name(path.name + ".lock"))
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._open(synchronous)
            self._reload()
        except sqlite3.Error as exc:
            self._release()
            raise FatalError(f"cannot open store {path}: not a usable SQLite file ({exc})") from exc
        except BaseException:
            self._release()
            raise

    # -- lifecycle -------------------------------------------------------------

    def _open(self, synchronous: Synchronous) -> None:
        db = self._db
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        fresh = app_id == 0 and tables == 0
        if not fresh and app_id != APPLICATION_ID:
            raise FatalError(
                f"{self.path} is an SQLite database but not an Atoll store "
                f"(application_id {app_id:#x}); refusing to touch it"
            )
        if not fresh:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise FatalError(
                    f"{self.path} has store schema version {version}; "
                    f"this Atoll reads version {SCHEMA_VERSION}"
                )
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise FatalError(f"{self.path}: cannot switch to WAL journal mode (got {mode})")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        if fresh:
            # one transaction: a crash leaves either no store or a whole one
            db.executescript(
                "BEGIN IMMEDIATE;"
                f"PRAGMA application_id = {APPLICATION_ID};"
                f"PRAGMA user_version = {SCHEMA_VERSION};" + _SCHEMA + "COMMIT;"
            )

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            self._db.close()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def close(self) -> None:
        self._release()

    # -- helpers ---------------------------------------------------------------

    @contextlib.contextmanager
    def _txn(self) -> Iterator[None]:
        """One atomic write: its own transaction, or a savepoint inside a batch."""
        if self._in_batch:
            self._db.execute("SAVEPOINT op")
            try:
                yield
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK TO op")
                    self._db.execute("RELEASE op")
                self._reload()
                raise
            self._db.execute("RELEASE op")
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._reload()
            raise
        self._db.execute("COMMIT")

    def _reload(self) -> None:
        self.revision = self._meta("revision")
        self.compact_revision = self._meta("compact_revision")

    def run_batch(self, calls: Sequence[Callable[[], object]]) -> list[Outcome]:
        """Run calls in order inside one transaction: one commit (one fsync) for all.

        Each call's writes are atomic on their own (a savepoint), so one failing
        call (a lost CAS) does not undo the others. Nothing is acknowledged
        before the commit: a failed commit fails every call of the batch.
        """
        if len(calls) == 1:
            return [_outcome(calls[0])]
        self._db.execute("BEGIN IMMEDIATE")
        self._in_batch = True
        outcomes: list[Outcome] = []
        try:
            for call in calls:
                outcomes.append(_outcome(call))
                if not self._db.in_transaction:  # SQLite rolled the whole batch back
                    raise sqlite3.OperationalError("transaction rolled back by SQLite")
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._reload()
            failed: Outcome = (None, FatalError(f"store {self.path}: commit failed ({exc})"))
            return [*([failed] * len(outcomes)), *(_outcome(c) for c in calls[len(outcomes) :])]
        finally:
            self._in_batch = False
        return outcomes

    def _meta(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def _set_meta(self, name: str, value: int) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE name = ?", (value, name))

    def _row(self, key: bytes) -> _Row | None:
        row = self._db.execute(
            "SELECT create_rev, mod_rev, version FROM kv WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else _Row(row[0], row[1], row[2])

    def _bump(self) -> int:
        """Start a new revision inside the current transaction."""
        self.revision += 1
        self._set_meta("revision", self.revision)
        if self._retain is not None:
            floor = self.revision - self._retain
            if floor - self.compact_revision >= self._trim_step:
                self._compact_to(floor)
        return self.revision

    def _compact_to(self, revision: int) -> None:
        self._db.execute("DELETE FROM history WHERE rev < ?", (revision,))
        self.compact_revision = revision
        self._set_meta("compact_revision", revision)

    def _record_delete(self, rev: int, keys: list[bytes]) -> None:
        for seq, key in enumerate(keys):
            self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
            self._db.execute(
                "INSERT INTO history VALUES (?, ?, ?, ?, x'', 0, 0, NULL)",
                (rev, seq, key, _DELETE),
            )

    def _delete_lease(self, lease: int) -> None:
        """Delete a lease and its keys (one revision if it had keys)."""
        keys = [
            r[0]
            for r in self._db.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,))
        ]
        if keys:
            self._record_delete(self._bump(), keys)
        self._db.execute("DELETE FROM leases WHERE id = ?", (lease,))

    def _lease_alive(self, lease: int) -> bool:
        row = self._db.execute("SELECT expires_at FROM leases WHERE id = ?", (lease,)).fetchone()
        return row is not None and row[0] > self._clock()

    # -- lease expiry ------------------------------------------------------------

    def sweep(self) -> int:
        """Delete every expired lease and its keys; returns how many leases expired."""
        now = self._clock()
        expired = [
            r[0]
            for r in self._db.execute(
                "SELECT id FROM leases WHERE expires_at <= ? ORDER BY expires_at, id", (now,)
            )
        ]
        for lease in expired:
            with self._txn():
                self._delete_lease(lease)
        return len(expired)

    # -- reads ---------------------------------------------------------------------

    def get(self, key: bytes) -> Entry | None:
        self.sweep()
        row = self._db.execute(
            "SELECT key, value, create_rev, mod_rev, version, lease FROM kv WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else _entry(row)

    def list(self, prefix: bytes) -> Listing:
        self.sweep()
        where, args = _range_clause(prefix)
        rows = self._db.execute(
            "SELECT key, value, create_rev, mod_rev, version, lease FROM kv "
            f"WHERE {where} ORDER BY key",
            args,
        ).fetchall()
        return Listing(entries=tuple(_entry(r) for r in rows), revision=self.revision)

    def current_revision(self) -> int:
        self.sweep()
        return self.revision

    # -- writes --------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, expect: int | None, lease: int | None) -> Entry:
        self.sweep()
        with self._txn():
            row = self._row(key)
            _check_expect(key, expect, row)
            if lease is not None and not self._lease_alive(lease):
                raise LeaseNotFoundError(lease)
            rev = self._bump()
            create = row.create_rev if row else rev
            version = row.version + 1 if row else 1
            self._db.execute(
                "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)",
                (key, value, create, rev, version, lease),
            )
            self._db.execute(
                "INSERT INTO history VALUES (?, 0, ?, ?, ?, ?, ?, ?)",
                (rev, key, _PUT, value, create, version, lease),
            )
        return Entry(
            key=decode_key(key),
            value=value,
            create_revision=create,
            mod_revision=rev,
            version=version,
            lease=None if lease is None else LeaseId(lease),
        )

    def delete(self, key: bytes, expect: int | None) -> int | None:
        self.sweep()
        with self._txn():
            row = self._row(key)
            if expect is not None and (row is None or row.mod_rev != expect):
                raise ConflictError(
                    decode_key(key), expected=expect, actual_revision=row.mod_rev if row else 0
                )
            if row is None:
                return None
            rev = self._bump()
            self._record_delete(rev, [key])
        return rev

    def delete_prefix(self, prefix: bytes) -> int:
        self.sweep()
        where, args = _range_clause(prefix)
        with self._txn():
            keys = [r[0] for r in self._db.execute(f"SELECT key FROM kv WHERE {where}", args)]
            if keys:
                self._record_delete(self._bump(), sorted(keys))
        return len(keys)

    # -- leases --------------------------------------------------------------------

    def grant_lease(self, ttl: int) -> LeaseId:
        self.sweep()
        with self._txn():
            lease = self._meta("next_lease")
            self._set_meta("next_lease", lease + 1)
            self._db.execute(
                "INSERT INTO leases VALUES (?, ?, ?)", (lease, ttl, self._clock() + ttl)
            )
        return LeaseId(lease)

    def keepalive(self, lease: int) -> int:
        self.sweep()
        with self._txn():
            row = self._db.execute("SELECT ttl FROM leases WHERE id = ?", (lease,)).fetchone()
            if row is None:
                raise LeaseNotFoundError(lease)
            ttl = int(row[0])
            self._db.execute(
                "UPDATE leases SET expires_at = ? WHERE id = ?", (self._clock() + ttl, lease)
            )
        return ttl

    def lease_remaining(self, lease: int) -> float | None:
        self.sweep()
        row = self._db.execute("SELECT expires_at FROM leases WHERE id = ?", (lease,)).fetchone()
        return None if row is None else max(0.0, float(row[0]) - self._clock())

    def revoke(self, lease: int) -> None:
        self.sweep()
        with self._txn():
            self._delete_lease(lease)

    # -- history -------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        self.sweep()
        if revision > self.revision:
            raise InvalidError(
                f"cannot compact to revision {revision}: the store is at {self.revision}",
                field="revision",
            )
        if revision <= self.compact_revision:
            return
        with self._txn():
            self._compact_to(revision)

    def read_history(self, prefix: bytes, after: int, max_revisions: int) -> HistoryRead:
        """Events under ``prefix`` with ``after < rev <= after + max_revisions``."""
        self.sweep()
        if after + 1 < self.compact_revision:
            raise CompactedError(after + 1, self.compact_revision)
        upper = min(self.revision, after + max_revisions)
        if upper <= after:
            return HistoryRead(events=(), scanned_to=after)
        where, args = _range_clause(prefix)
        rows = self._db.execute(
            "SELECT rev, key, kind, value, create_rev, version, lease FROM history "
            f"WHERE rev > ? AND rev <= ? AND {where} ORDER BY rev, seq",
            (after, upper, *args),
        ).fetchall()
        events = tuple(
            Event(
                type=EventType.PUT if kind == _PUT else EventType.DELETE,
                entry=Entry(
                    key=decode_key(key),
                    value=value,
                    create_revision=create,
                    mod_revision=rev,
                    version=version,
                    lease=None if lease is None else LeaseId(lease),
                ),
            )
            for rev, key, kind, value, create, version, lease in rows
        )
        return HistoryRead(events=events, scanned_to=upper)


def _check_expect(key: bytes, expect: int | None, row: _Row | None) -> None:
    if expect is None:
        return
    actual = row.mod_rev if row else 0
    if actual != expect:
        raise ConflictError(decode_key(key), expected=expect, actual_revision=actual)


def _entry(row: tuple[bytes, bytes, int, int, int, int | None]) -> Entry:
    key, value, create, mod, version, lease = row
    return Entry(
        key=decode_key(key),
        value=value,
        create_revision=create,
        mod_revision=mod,
        version=version,
        lease=None if lease is None else LeaseId(lease),
    )
