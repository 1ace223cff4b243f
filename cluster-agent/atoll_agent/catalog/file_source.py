"""Read the cluster's catalog from a YAML or JSON file, and follow its changes.

For clusters without a registry (or tests and demos), the agent can take its
catalog from a file. The schema is the registry's catalog — the JSON of
``GET /v1/catalog`` — where only names, ports and addresses are required::

    services:
      - namespace: shop
        name: cart
        export: true
        ports: [{name: http, port: 8080}]
        instances:
          - {id: cart-1, address: 10.0.1.5, zone: eu-west-1a}
          - {id: cart-2, address: 10.0.2.7, health: warning}

A registry state file (the checksummed envelope the registry writes) is
accepted as well and verified as such. ``*.json`` files are parsed as JSON,
everything else as YAML. ``index`` and ``epoch`` in the file are ignored: the
source numbers the distinct catalogs it has read 1, 2, 3... under its own
epoch. (``ttl_seconds`` is honoured against ``checked_at``; with nobody to
refresh it, a TTL in a file is rarely what you want.)

Change detection polls every ``interval`` (injected sleep): a cheap ``stat``
(mtime, size, inode) decides whether to read; the content's sha256 decides
whether it really changed. File-system timestamps are coarse, so a second
write within the same tick and of the same size would not show in ``stat``;
after every detected change the file is therefore read once more at the next
poll (the "racy timestamp" rule git applies to its index).

A file that becomes invalid, or disappears, is logged once with the reason and
the last good catalog stays in effect. The *first* read has nothing to fall
back on: it raises :class:`~atoll.errors.InvalidError` naming the file and the
offending field (:class:`~atoll.errors.NotFoundError` when there is no file).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ValidationError

from atoll.aio import Sleep
from atoll.errors import InvalidError, NotFoundError
from atoll.model.base import invalid_from
from atoll_agent.registry.model import CatalogSnapshot
from atoll_agent.registry.persistence import decode_state, is_state_document
from atoll_agent.registry.runtime import new_epoch

__all__ = ["FileSource", "parse_catalog"]

log = logging.getLogger("atoll.agent.catalog")

MAX_FILE_BYTES = 16 << 20

_Signature = tuple[int, int, int]  # (mtime_ns, size, inode)


@dataclass(slots=True)
class _Cursor:
    """What one watch has seen of the file so far."""

    signature: _Signature | None = None
    digest: bytes = b""
    #: read again at the next poll even if stat shows nothing new (coarse mtimes)
    recheck: bool = True
    #: the problem last logged, so each is logged once
    problem: str | None = None


def parse_catalog(data: bytes, *, source: str, fmt: Literal["json", "yaml"]) -> CatalogSnapshot:
    """Parse catalog file bytes; raise :class:`~atoll.errors.InvalidError` naming ``source``."""
    doc = _load_json(data, source) if fmt == "json" else _load_yaml(data, source)
    if is_state_document(doc):
        return decode_state(data, source=source)
    if not isinstance(doc, dict):
        raise InvalidError(
            f"{source}: expected a mapping with a 'services' list at the top", field="services"
        )
    try:
        return CatalogSnapshot.model_validate(doc)
    except ValidationError as exc:
        raise invalid_from(exc, source) from exc


def _load_json(data: bytes, source: str) -> object:
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise InvalidError(
            f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError as exc:
        raise InvalidError(f"{source}: not UTF-8 text: {exc.reason}") from None


def _load_yaml(data: bytes, source: str) -> object:
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1} column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidError(f"{source}: not valid YAML: {problem}{where}") from None
    except (ValueError, TypeError) as exc:  # a tagged scalar PyYAML could not construct
        raise InvalidError(f"{source}: not valid YAML: {exc}") from None


class FileSource:
    """A :class:`~atoll_agent.catalog.source.CatalogSource` reading a YAML/JSON file."""

    def __init__(
        self,
        path: Path,
        *,
        interval: float = 1.0,
        sleep: Sleep = asyncio.sleep,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self._path = path
        self._fmt: Literal["json", "yaml"] = "json" if path.suffix == ".json" else "yaml"
        self._interval = interval
        self._sleep = sleep
        self._max_bytes = max_bytes
        self._epoch = f"file-{new_epoch()}"

    async def watch(self) -> AsyncGenerator[CatalogSnapshot, None]:
        cursor = _Cursor()
        cursor.signature = await asyncio.to_thread(self._stat)
        if cursor.signature is None:
            raise NotFoundError(f"catalog file {self._path} does not exist")
        try:
            data = await asyncio.to_thread(self._read)
        except OSError as exc:
            raise InvalidError(f"{self._path}: cannot read: {exc.strerror}") from exc
        good = parse_catalog(data, source=str(self._path), fmt=self._fmt)
        cursor.digest = hashlib.sha256(data).digest()
        generation = 1
        yield self._stamp(good, generation)
        while True:
            data = await self._next_content(cursor)
            try:
                parsed = parse_catalog(data, source=str(self._path), fmt=self._fmt)
            except InvalidError as exc:
                self._problem(cursor, "catalog file invalid", str(exc), generation)
                continue
            cursor.problem = None
            if parsed.services == good.services:
                continue  # rewritten with the same catalog (reformatted, say)
            good = parsed
            generation += 1
            log.info("catalog file changed", extra={"path": str(self._path), "index": generation})
            yield self._stamp(good, generation)

    async def _next_content(self, cursor: _Cursor) -> bytes:
        """Poll until the file's bytes differ from the last ones read."""
        while True:
            await self._sleep(self._interval)
            current = await asyncio.to_thread(self._stat)
            if current is None:
                self._problem(cursor, "catalog file missing", "no such file", None)
                cursor.signature = None
                continue
            if current == cursor.signature and not cursor.recheck:
                continue
            cursor.recheck = current != cursor.signature
            cursor.signature = current
            try:
                data = await asyncio.to_thread(self._read)
            except (OSError, InvalidError) as exc:
                self._problem(cursor, "catalog file unreadable", str(exc), None)
                cursor.signature = None  # try again at the next poll
                continue
            digest = hashlib.sha256(data).digest()
            if digest != cursor.digest:
                cursor.digest = digest
                return data

    def _problem(self, cursor: _Cursor, what: str, reason: str, index: int | None) -> None:
        """Log a problem once, until it is solved or a different one appears."""
        if cursor.problem == reason:
            return
        cursor.problem = reason
        log.warning(
            f"{what}; keeping the last good catalog",
            extra={"path": str(self._path), "reason": reason, "index": index},
        )

    def _stamp(self, parsed: CatalogSnapshot, generation: int) -> CatalogSnapshot:
        return CatalogSnapshot.model_construct(
            index=generation, epoch=self._epoch, services=parsed.services
        )

    def _stat(self) -> _Signature | None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> bytes:
        with self._path.open("rb") as f:
            data = f.read(self._max_bytes + 1)
        if len(data) > self._max_bytes:
            raise InvalidError(f"{self._path}: larger than {self._max_bytes} bytes")
        return data
