"""The registry's state file: the catalog in an :mod:`atoll.statefile` envelope.

The file is Atoll's common last-known-good format (:mod:`atoll.statefile`):
written atomically (temporary file, fsync, rename, directory fsync), with a
format number, a ``kind`` (here ``atoll-registry-catalog``) and the SHA-256 of
the canonical payload. The payload is the :class:`CatalogSnapshot` JSON — the
same document ``GET /v1/catalog`` returns.

This module adds what the registry needs on top:

* a payload that passes the envelope checks but not the catalog schema is
  corrupt too (never half-loaded);
* a corrupt file is moved aside to ``<file>.corrupt-<unix time>`` (the time
  comes from the injected clock), logged as a warning, and the registry starts
  empty;
* a file that exists but cannot be read (permissions, I/O error, a directory)
  stops the process with :class:`~atoll.errors.FatalError` instead: discarding
  it would lose data that is probably fine;
* a failed write raises the retryable :class:`StateWriteError`, and the old
  file stays as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import ValidationError

from atoll import statefile
from atoll.errors import FatalError, InvalidError, RetryableError
from atoll.model.base import invalid_from
from atoll_agent.registry.model import CatalogSnapshot

__all__ = [
    "STATE_KIND",
    "StateWriteError",
    "decode_state",
    "is_state_document",
    "load_state",
    "save_state",
]

log = logging.getLogger("atoll.registry")

STATE_KIND = "atoll-registry-catalog"


class StateWriteError(RetryableError):
    """The state file could not be written; the change it carried was not applied."""


def is_state_document(doc: object) -> bool:
    """Whether a parsed JSON/YAML document claims to be a registry state file."""
    return isinstance(doc, dict) and doc.get("kind") == STATE_KIND and "payload" in doc


def decode_state(data: bytes, *, source: str) -> CatalogSnapshot:
    """Check a state file's envelope and validate its catalog.

    Raises :class:`~atoll.errors.InvalidError` naming ``source`` and the problem.
    """
    try:
        payload = statefile.parse_state(data, STATE_KIND)
    except statefile.CorruptStateError as exc:
        raise InvalidError(f"{source}: {exc}") from None
    try:
        return CatalogSnapshot.model_validate(payload)
    except ValidationError as exc:
        raise invalid_from(exc, f"{source}: catalog") from exc


def save_state(path: Path, snapshot: CatalogSnapshot) -> None:
    """Write ``snapshot`` to ``path`` atomically; :class:`StateWriteError` on failure."""
    try:
        statefile.save_state(path, STATE_KIND, snapshot.model_dump(mode="json"))
    except OSError as exc:
        raise StateWriteError(f"cannot write registry state {path}: {exc}") from exc


def load_state(path: Path, *, now: float) -> CatalogSnapshot | None:
    """The snapshot stored at ``path``, or ``None`` to start empty.

    ``None`` when the file does not exist, or when it is corrupt — then it has
    been moved aside to ``<path>.corrupt-<int(now)>`` and a warning logged.
    Raises :class:`~atoll.errors.FatalError` when the file cannot be read.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        log.info("no registry state file; starting empty", extra={"state_file": str(path)})
        return None
    except OSError as exc:
        raise FatalError(f"cannot read registry state {path}: {exc}") from exc
    try:
        return decode_state(data, source=str(path))
    except InvalidError as exc:
        aside = _move_aside(path, now)
        log.warning(
            "registry state file is corrupt; moved aside, starting empty",
            extra={"state_file": str(path), "moved_to": str(aside), "reason": str(exc)},
        )
        return None


def _move_aside(path: Path, now: float) -> Path:
    target = path.with_name(f"{path.name}.corrupt-{int(now)}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{int(now)}-{n}")
    try:
        path.replace(target)
    except OSError as exc:
        raise FatalError(f"cannot move corrupt registry state {path} aside: {exc}") from exc
    return target
