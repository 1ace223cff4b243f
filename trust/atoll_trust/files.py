"""Secret-bearing files: written atomically, readable by the owner only.

:func:`write_private_file` creates a temporary file with mode 0600 *at
creation* (never a window with wider permissions), writes, fsyncs, renames it
over the target and fsyncs the directory, so a crash leaves the old file or
the new one, never half of either. Used for sealed CA states and for an
agent's SVID and private key.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_private_file"]


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600 (parents created 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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
