"""Atomic file replacement: a crash leaves the old file or the new one, never half.

:func:`write_atomic` writes a temporary file beside the target — created with
its final mode, so a secret never sits in a file with wider permissions —
fsyncs it, renames it over the target and fsyncs the directory (the rename
itself must reach the disk). Used for last-known-good state files
(:mod:`atoll.statefile`) and, with mode 0600, for sealed CA states, SVIDs and
private keys (:func:`write_private_file`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomic", "write_private_file"]


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, dir_mode: int = 0o755) -> None:
    """Atomically replace ``path`` with ``data`` (parents created with ``dir_mode``)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, readable by the owner only (0600/0700)."""
    write_atomic(path, data, mode=0o600, dir_mode=0o700)
