"""Store URLs: which backend, where. Parsing is pure; :func:`open_store` acts on it.

Accepted forms (anything else is an :class:`~atoll.errors.InvalidError`
listing them):

* ``sqlite:///abs/path/atoll.db`` — the embedded store at an absolute path;
* ``sqlite://relative/atoll.db`` — relative to the current directory;
* ``etcd://host:port[,host:port...]`` — an etcd v3 cluster (plain gRPC).
  Several endpoints must be IP literals; a port defaults to 2379.

Query strings tune the backend: ``sqlite://...?synchronous=NORMAL&retain=5000``
and ``etcd://...?timeout=3``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qs

from atoll.errors import InvalidError
from atoll.store.base import Store
from atoll.store.sqlite_engine import Synchronous

__all__ = ["EtcdUrl", "SqliteUrl", "open_store", "parse_store_url"]

_FORMS = (
    "expected sqlite:///absolute/path.db, sqlite://relative/path.db or "
    "etcd://host:port[,host:port...]"
)


@dataclass(frozen=True, slots=True)
class SqliteUrl:
    path: str
    synchronous: Synchronous = "FULL"
    retain_revisions: int | None = 10_000


@dataclass(frozen=True, slots=True)
class EtcdUrl:
    endpoints: tuple[tuple[str, int], ...]
    timeout: float = 5.0


def _bad(url: str, why: str) -> InvalidError:
    return InvalidError(f"bad store URL {url!r}: {why}; {_FORMS}", field="store_url")


def _query(url: str, query: str, allowed: set[str]) -> dict[str, str]:
    parsed = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = set(parsed) - allowed
    if unknown:
        raise _bad(url, f"unknown option(s) {', '.join(sorted(unknown))}")
    return {k: v[-1] for k, v in parsed.items()}


def _endpoint(url: str, text: str) -> tuple[str, int]:
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host or any(c in host for c in "/@?# "):
        raise _bad(url, f"bad host in {text!r}")
    if not port_text:
        return host, 2379
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(url, f"bad port in {text!r}")
    return host, int(port_text)


def parse_store_url(url: str) -> SqliteUrl | EtcdUrl:
    """Parse a store URL (pure; no file or network access)."""
    if not isinstance(url, str):
        raise InvalidError("store URL must be a string", field="store_url")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise _bad(url, "no scheme")
    rest, _, query = rest.partition("?")
    if scheme == "sqlite":
        if not rest or rest.endswith("/") or "\0" in rest:
            raise _bad(url, "no database file path")
        opts = _query(url, query, {"synchronous", "retain"})
        sync = opts.get("synchronous", "FULL").upper()
        if sync not in ("FULL", "NORMAL", "OFF"):
            raise _bad(url, "synchronous must be FULL, NORMAL or OFF")
        retain_text = opts.get("retain", "10000")
        if retain_text.lower() in ("", "all", "none"):
            retain: int | None = None
        elif retain_text.isdigit() and int(retain_text) > 0:
            retain = int(retain_text)
        else:
            raise _bad(url, "retain must be a positive number of revisions or 'all'")
        return SqliteUrl(path=rest, synchronous=cast(Synchronous, sync), retain_revisions=retain)
    if scheme == "etcd":
        if not rest or rest.endswith(","):
            raise _bad(url, "no endpoints")
        opts = _query(url, query, {"timeout"})
        try:
            timeout = float(opts.get("timeout", "5"))
        except ValueError:
            raise _bad(url, "timeout must be seconds") from None
        if not 0 < timeout <= 600:
            raise _bad(url, "timeout must be in (0, 600] seconds")
        endpoints = tuple(_endpoint(url, part) for part in rest.rstrip("/").split(","))
        return EtcdUrl(endpoints=endpoints, timeout=timeout)
    raise _bad(url, f"unknown scheme {scheme!r}")


def open_store(url: str) -> Store:
    """The Store a URL names. SQLite opens (and locks) the file now; etcd
    connects lazily on the first call."""
    parsed = parse_store_url(url)
    if isinstance(parsed, SqliteUrl):
        from atoll.store.sqlite import SqliteStore

        return SqliteStore(
            parsed.path,
            synchronous=parsed.synchronous,
            retain_revisions=parsed.retain_revisions,
        )
    from atoll.store.etcd import EtcdStore

    return EtcdStore(parsed.endpoints, timeout=parsed.timeout)
