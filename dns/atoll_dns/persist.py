"""The last-known-good zone on disk, so a restarted server answers at once.

A DNS server writes every snapshot it has applied to ``<state_dir>/zone.json``
through :mod:`atoll.statefile` (temporary file, fsync, rename; an envelope with
a kind, a format number and a SHA-256 of the payload). On start it reads the
file back before it binds its sockets, so it answers from the last zone even
while the control plane is down.

A file that fails any check — envelope, checksum, the snapshot schema, the
snapshot's own content digest — is discarded with a warning (moved aside as
``zone.json.corrupt-<time>``) and the server starts without a zone (SERVFAIL
inside it) rather than from half a zone. A valid snapshot of a *different*
zone than configured is ignored with a warning but left in place.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import ValidationError

from atoll.statefile import load_state, save_state
from atoll_dns.snapshot import ZoneSnapshot, snapshot_digest

__all__ = ["STATE_FILE", "STATE_KIND", "load_snapshot", "save_snapshot"]

STATE_FILE = "zone.json"
STATE_KIND = "atoll-dns-zone"
log = logging.getLogger("atoll.dns.persist")


def save_snapshot(state_dir: Path, snapshot: ZoneSnapshot) -> Path:
    """Atomically write ``snapshot`` as the last-known-good zone; return the file path."""
    path = state_dir / STATE_FILE
    save_state(path, STATE_KIND, snapshot.model_dump(mode="json"))
    return path


def _discard(path: Path, reason: str) -> None:
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    try:
        path.replace(aside)
    except OSError:
        aside = path
    log.warning(
        "discarded corrupt zone snapshot",
        extra={"path": str(path), "reason": reason, "moved_to": str(aside)},
    )


def load_snapshot(state_dir: Path, *, zone: str | None = None) -> ZoneSnapshot | None:
    """The persisted snapshot, or None when absent, corrupt, or of another zone."""
    path = state_dir / STATE_FILE
    payload = load_state(path, STATE_KIND)
    if payload is None:
        return None
    try:
        snapshot = ZoneSnapshot.model_validate(payload)
    except ValidationError as exc:
        _discard(path, f"not a zone snapshot: {exc.error_count()} schema errors")
        return None
    if snapshot_digest(snapshot) != snapshot.digest:
        _discard(path, "content does not match its digest")
        return None
    if zone is not None and snapshot.zone != zone:
        log.warning(
            "ignoring persisted zone snapshot of another zone",
            extra={"path": str(path), "persisted": snapshot.zone, "configured": zone},
        )
        return None
    log.info(
        "loaded last-known-good zone snapshot",
        extra={"path": str(path), "serial": snapshot.serial, "services": len(snapshot.services)},
    )
    return snapshot
