"""Last-known-good state files: atomic, checksummed, never half loaded.

Components that must keep working while the control plane is away (agents,
DNS servers, gateways) persist the last configuration they accepted. A file is
written to a temporary name, fsynced, then renamed over the old one, so a crash
leaves either the old or the new file. Its envelope carries a format number, a
``kind`` naming what it holds, and the SHA-256 of the canonical payload; on
load, anything that does not check out — truncated, edited, a different kind,
an unknown format — is moved aside as ``<name>.corrupt-<unix time>`` with a
warning, and the caller starts from nothing rather than from half a state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from atoll.errors import AtollError
from atoll.fileio import write_atomic

__all__ = ["CorruptStateError", "load_state", "save_state"]

FORMAT = 1
log = logging.getLogger("atoll.statefile")


class CorruptStateError(AtollError):
    """A state file failed its integrity checks."""


def _canonical(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def save_state(path: Path, kind: str, payload: Any) -> None:
    """Atomically replace ``path`` with ``payload`` (JSON-serialisable)."""
    body = _canonical(payload)
    envelope = {
        "format": FORMAT,
        "kind": kind,
        "sha256": hashlib.sha256(body).hexdigest(),
        "saved_at": time.time(),
        "payload": payload,
    }
    data = json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()
    write_atomic(path, data)


def parse_state(data: bytes, kind: str) -> Any:
    """Check an envelope and return its payload, or raise CorruptStateError."""
    try:
        envelope = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptStateError(f"not JSON: {exc}") from exc
    if not isinstance(envelope, dict):
        raise CorruptStateError("not a state envelope")
    if envelope.get("format") != FORMAT:
        raise CorruptStateError(f"unknown format {envelope.get('format')!r}")
    if envelope.get("kind") != kind:
        raise CorruptStateError(f"holds {envelope.get('kind')!r}, expected {kind!r}")
    if "payload" not in envelope:
        raise CorruptStateError("no payload")
    payload = envelope["payload"]
    if hashlib.sha256(_canonical(payload)).hexdigest() != envelope.get("sha256"):
        raise CorruptStateError("checksum mismatch")
    return payload


def load_state(path: Path, kind: str) -> Any | None:
    """The payload saved at ``path``; None if absent or corrupt (then moved aside)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return parse_state(data, kind)
    except CorruptStateError as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        path.replace(aside)
        log.warning(
            "discarded corrupt state file",
            extra={"path": str(path), "reason": str(exc), "moved_to": str(aside)},
        )
        return None
