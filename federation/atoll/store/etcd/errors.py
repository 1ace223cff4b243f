"""Translate etcd's gRPC failures into :mod:`atoll.errors` (the seam, STYLE.md).

etcd reports most conditions as a gRPC status code plus a fixed detail string
(``etcdserver: ...``, ``mvcc: ...``; see etcd's ``api/v3rpc/rpctypes``). The
decision is a pure function of (code name, details) so it is table-tested
without a server; :mod:`atoll.store.etcd.rpc` calls it on every failed RPC.

* UNAVAILABLE, DEADLINE_EXCEEDED (no leader, leader changed, request timed
  out, connection refused/reset), CANCELLED, ABORTED, RESOURCE_EXHAUSTED and
  transport-level UNKNOWN/INTERNAL -> :class:`StoreUnavailableError` (retry).
* NOT_FOUND "lease not found" -> :class:`LeaseNotFoundError`.
* OUT_OF_RANGE "compacted" -> :class:`CompactedError`; "future revision" ->
  :class:`InvalidError`.
* INVALID_ARGUMENT / FAILED_PRECONDITION -> :class:`InvalidError`.
* UNAUTHENTICATED / PERMISSION_DENIED / UNIMPLEMENTED / DATA_LOSS ->
  :class:`FatalError`: configuration or server problems a retry cannot fix.
"""

from __future__ import annotations

from atoll.errors import (
    AtollError,
    CompactedError,
    FatalError,
    InvalidError,
    LeaseNotFoundError,
    StoreUnavailableError,
)

__all__ = ["translate_rpc_error"]

_RETRYABLE = frozenset(
    {
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "CANCELLED",
        "ABORTED",
        "RESOURCE_EXHAUSTED",
        "UNKNOWN",
        "INTERNAL",
    }
)
_FATAL = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "UNIMPLEMENTED", "DATA_LOSS"})


def translate_rpc_error(
    code: str, details: str, *, lease: int | None = None, revision: int | None = None
) -> AtollError:
    """The Atoll error for a failed etcd RPC (``code`` is a grpc.StatusCode name).

    ``lease`` and ``revision`` are the request's lease id / revision, used to
    fill in the error's fields.
    """
    what = f"etcd: {details or code.lower()}"
    lowered = details.lower()
    if "lease not found" in lowered:
        return LeaseNotFoundError(lease or 0)
    if "required revision has been compacted" in lowered:
        rev = revision or 0
        return CompactedError(rev, rev)
    if "future revision" in lowered:
        return InvalidError(what, field="revision")
    if code in _RETRYABLE:
        return StoreUnavailableError(what)
    if code in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "ALREADY_EXISTS"):
        return InvalidError(what)
    if code in _FATAL:
        return FatalError(what)
    return StoreUnavailableError(what)
