"""Argument checks shared by every Store backend, so they reject the same input.

Keys are ``str`` at the API and bytes on the wire (etcd) or in the table
(SQLite): printable ASCII, so that the byte order both backends sort by is the
order a reader expects, and so a key can never be half-decoded. Values are
bytes up to :data:`MAX_VALUE_BYTES` (etcd's default request limit is 1.5 MiB;
one shared, lower cap keeps the two backends interchangeable).

Every check raises :class:`~atoll.errors.InvalidError` naming the field; none
of them touches stored state, so bad input can never corrupt a store.
"""

from __future__ import annotations

from atoll.errors import InvalidError

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_TTL_SECONDS",
    "MAX_VALUE_BYTES",
    "check_expect",
    "check_lease",
    "check_revision",
    "check_ttl",
    "check_value",
    "decode_key",
    "encode_key",
    "encode_prefix",
]

MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 1024 * 1024
#: etcd rejects TTLs above 9_000_000_000 s; a year is more than any Atoll lease needs
MAX_TTL_SECONDS = 365 * 24 * 3600


def _encode(text: object, *, field: str, allow_empty: bool) -> bytes:
    if not isinstance(text, str):
        raise InvalidError(f"{field} must be str, not {type(text).__name__}", field=field)
    if not text and not allow_empty:
        raise InvalidError(f"{field} must not be empty", field=field)
    if len(text) > MAX_KEY_BYTES:
        raise InvalidError(f"{field} is longer than {MAX_KEY_BYTES} characters", field=field)
    for ch in text:
        if not " " <= ch <= "~":
            raise InvalidError(
                f"{field} {text[:64]!r} must be printable ASCII (found {ch!r})", field=field
            )
    return text.encode("ascii")


def encode_key(key: str) -> bytes:
    """A non-empty printable-ASCII key as bytes."""
    return _encode(key, field="key", allow_empty=False)


def encode_prefix(prefix: str) -> bytes:
    """A printable-ASCII prefix as bytes; ``""`` means every key."""
    return _encode(prefix, field="prefix", allow_empty=True)


def decode_key(raw: bytes) -> str:
    """Bytes read back from a backend as a key (non-ASCII bytes, which Atoll
    never writes, are shown escaped rather than failing the whole read)."""
    return raw.decode("ascii", errors="backslashreplace")


def check_value(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidError(f"value must be bytes, not {type(value).__name__}", field="value")
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidError(
            f"value is {len(value)} bytes; the limit is {MAX_VALUE_BYTES}", field="value"
        )
    return value


def check_expect(expect: object) -> None:
    if expect is None:
        return
    if isinstance(expect, bool) or not isinstance(expect, int) or expect < 0:
        raise InvalidError(
            f"expect must be None, 0 (absent) or a positive mod_revision, not {expect!r}",
            field="expect",
        )


def check_ttl(ttl: object) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_SECONDS:
        raise InvalidError(
            f"ttl must be whole seconds in [1, {MAX_TTL_SECONDS}], not {ttl!r}", field="ttl"
        )
    return ttl


def check_lease(lease: object) -> int:
    if isinstance(lease, bool) or not isinstance(lease, int) or lease <= 0:
        raise InvalidError(f"lease must be a positive lease id, not {lease!r}", field="lease")
    return lease


def check_revision(revision: object, *, field: str) -> int:
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise InvalidError(f"{field} must be a revision >= 1, not {revision!r}", field=field)
    return revision
