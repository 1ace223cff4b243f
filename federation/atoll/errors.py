"""The one error tree of Atoll's kernel.

Every error Atoll raises on purpose derives from :class:`AtollError`. Three
families tell a caller what to do next:

* :class:`UserError` — the input was wrong (bad resource, unknown name, stale
  revision). Do not retry the same request; fix it. The REST API maps these to
  4xx, the CLI prints the message in one line.
* :class:`RetryableError` — a dependency is briefly unavailable (store leader
  election, a dropped connection). Retry with backoff.
* :class:`FatalError` — the process cannot go on (corrupt store file, lost
  leadership lock). Stop and let the supervisor restart.

Backend errors (sqlite3, grpc) are translated into this tree at the seam where
they occur, with ``raise ... from exc`` so the cause stays visible.
"""

from __future__ import annotations

__all__ = [
    "AtollError",
    "CompactedError",
    "ConflictError",
    "FatalError",
    "InvalidError",
    "LeaseNotFoundError",
    "NotFoundError",
    "RetryableError",
    "StoreUnavailableError",
    "UserError",
]


class AtollError(Exception):
    """Base of every error Atoll raises deliberately."""


class UserError(AtollError):
    """The request is wrong; retrying it unchanged will fail again."""


class FatalError(AtollError):
    """The process cannot continue safely."""


class RetryableError(AtollError):
    """A transient failure; the same request may succeed later."""


class InvalidError(UserError):
    """Input failed validation. ``field`` names the offending field when known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFoundError(UserError):
    """The named object does not exist."""


class ConflictError(UserError):
    """A compare-and-swap lost: the object changed since it was read.

    ``actual_revision`` is the key's current modification revision (0 when the
    key does not exist). The caller re-reads and re-decides; it never blindly
    retries the write.
    """

    def __init__(self, key: str, *, expected: int, actual_revision: int) -> None:
        super().__init__(f"{key}: expected revision {expected}, found {actual_revision}")
        self.key = key
        self.expected = expected
        self.actual_revision = actual_revision


class CompactedError(AtollError):
    """A watch asked for history the store has already compacted.

    The watcher must re-list (which returns the current revision) and watch
    again from ``listing.revision + 1``.
    """

    def __init__(self, requested: int, compacted_revision: int) -> None:
        super().__init__(
            f"revision {requested} is compacted (history starts at {compacted_revision}); "
            "list again and watch from the listing's revision + 1"
        )
        self.requested = requested
        self.compacted_revision = compacted_revision


class LeaseNotFoundError(AtollError):
    """The lease expired or was revoked; keys attached to it are gone."""

    def __init__(self, lease: int) -> None:
        super().__init__(f"lease {lease:x} not found (expired or revoked)")
        self.lease = lease


class StoreUnavailableError(RetryableError):
    """The store cannot be reached or has no leader right now."""
