"""SPIFFE IDs and trust domain names, validated against every MUST of the SPIFFE-ID standard.

A SPIFFE ID is the URI ``spiffe://<trust-domain><path>`` (SPIFFE-ID standard §2).
Parsing is strict and total: any ``str`` either yields a :class:`SpiffeId` or
raises :class:`~atoll_trust.errors.InvalidSpiffeIdError` naming the rule broken,
never another exception. The rules, with the standard's section:

* §2.1 scheme ``spiffe`` followed by ``://`` (lower case; like go-spiffe we do not
  normalise a ``SPIFFE://`` prefix — a producer that emits it is broken);
* §2.1 trust domain: not empty, only ``[a-z0-9._-]`` (so no upper case, no
  port ``:``, no userinfo ``@``, no percent-encoding), at most 255 bytes;
* §2.2 path: zero or more ``/segment``; a segment is not empty, not ``.`` or
  ``..``, and only ``[a-zA-Z0-9._-]``; no trailing ``/`` (so ``spiffe://td/`` is
  invalid); no query ``?`` or fragment ``#`` anywhere;
* §2.3 implementations MUST support IDs up to 2048 bytes and SHOULD NOT produce
  longer ones; we accept exactly up to 2048 bytes and reject longer input with
  a typed error (bounding the parser's work on hostile input).

The value types are frozen and hashable, so they key dicts (bundles per trust
domain, SVIDs per identity) and cross module boundaries safely.
"""

from __future__ import annotations

from dataclasses import dataclass

from atoll_trust.errors import InvalidSpiffeIdError

__all__ = [
    "MAX_SPIFFE_ID_BYTES",
    "MAX_TRUST_DOMAIN_BYTES",
    "SpiffeId",
    "TrustDomain",
    "parse_spiffe_id",
    "parse_trust_domain",
]

SCHEME_PREFIX = "spiffe://"
MAX_SPIFFE_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

_TD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


def _check_trust_domain(name: str, *, original: str) -> None:
    if not name:
        raise InvalidSpiffeIdError("trust domain is missing", value=original)
    for ch in name:
        if ch in _TD_CHARS:
            continue
        if ch == ":":
            why = "trust domain must not contain a port"
        elif ch == "@":
            why = "trust domain must not contain userinfo"
        elif ch == "%":
            why = "percent-encoding is not allowed"
        elif ch in "?#":
            why = "query and fragment are not allowed"
        elif "A" <= ch <= "Z":
            why = "trust domain must be lower case"
        else:
            why = f"trust domain contains an invalid character {ch!r}"
        raise InvalidSpiffeIdError(why, value=original)
    # Only ASCII remains here, so len() is the byte length.
    if len(name) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeIdError(
            f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes", value=original
        )


def _check_path(path: str, *, original: str) -> None:
    if not path:
        return
    if path.endswith("/"):
        raise InvalidSpiffeIdError("path must not end with '/'", value=original)
    for segment in path[1:].split("/"):
        if not segment:
            raise InvalidSpiffeIdError("path contains an empty segment", value=original)
        if segment in (".", ".."):
            raise InvalidSpiffeIdError(
                f"path contains a relative segment {segment!r}", value=original
            )
        for ch in segment:
            if ch in _PATH_CHARS:
                continue
            if ch == "%":
                why = "percent-encoding is not allowed"
            elif ch in "?#":
                why = "query and fragment are not allowed"
            else:
                why = f"path contains an invalid character {ch!r}"
            raise InvalidSpiffeIdError(why, value=original)


@dataclass(frozen=True, slots=True, order=True)
class TrustDomain:
    """A validated trust domain name such as ``eu-west-1.atoll``.

    Construct it with :func:`parse_trust_domain`; the constructor validates too,
    so an invalid instance cannot exist.
    """

    name: str

    def __post_init__(self) -> None:
        _check_trust_domain(self.name, original=self.name)

    @property
    def id(self) -> SpiffeId:
        """The trust domain's own ID, ``spiffe://<name>`` (the key of bundle maps)."""
        return SpiffeId(self, "")

    def spiffe_id(self, *segments: str) -> SpiffeId:
        """The ID ``spiffe://<name>/<seg1>/<seg2>...`` (each segment validated)."""
        for segment in segments:
            if "/" in segment:
                raise InvalidSpiffeIdError(
                    f"segment {segment!r} contains '/'", value=SCHEME_PREFIX + self.name
                )
        path = "".join("/" + s for s in segments)
        _check_path(path, original=SCHEME_PREFIX + self.name + path)
        return SpiffeId(self, path)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """A validated SPIFFE ID: ``trust_domain`` plus ``path`` (``""`` or ``/a/b``)."""

    trust_domain: TrustDomain
    path: str

    def __post_init__(self) -> None:
        _check_path(self.path, original=SCHEME_PREFIX + self.trust_domain.name + self.path)
        if len(str(self)) > MAX_SPIFFE_ID_BYTES:  # validated: ASCII only
            raise InvalidSpiffeIdError(f"longer than {MAX_SPIFFE_ID_BYTES} bytes", value=str(self))

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/")) if self.path else ()

    def is_member_of(self, trust_domain: TrustDomain) -> bool:
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return SCHEME_PREFIX + self.trust_domain.name + self.path


def parse_spiffe_id(value: str) -> SpiffeId:
    """Parse and validate ``spiffe://<trust-domain>[/path]``.

    Raises :class:`InvalidSpiffeIdError` (never anything else) for any input
    that breaks a rule of the SPIFFE-ID standard.
    """
    if not isinstance(value, str):
        raise InvalidSpiffeIdError("not a string", value=repr(value))
    if not value:
        raise InvalidSpiffeIdError("empty", value=value)
    if len(value.encode("utf-8", "surrogatepass")) > MAX_SPIFFE_ID_BYTES:
        raise InvalidSpiffeIdError(f"longer than {MAX_SPIFFE_ID_BYTES} bytes", value=value)
    if not value.startswith(SCHEME_PREFIX):
        head = value.split(":", 1)[0] if ":" in value else ""
        if head.lower() == "spiffe":
            raise InvalidSpiffeIdError("scheme must be 'spiffe://' in lower case", value=value)
        raise InvalidSpiffeIdError("scheme is missing or is not 'spiffe://'", value=value)
    rest = value[len(SCHEME_PREFIX) :]
    slash = rest.find("/")
    name, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    _check_trust_domain(name, original=value)
    _check_path(path, original=value)
    return SpiffeId(TrustDomain(name), path)


def parse_trust_domain(value: str) -> TrustDomain:
    """Parse a trust domain given as ``name`` or as its ID ``spiffe://name``."""
    if not isinstance(value, str):
        raise InvalidSpiffeIdError("not a string", value=repr(value))
    if value.startswith(SCHEME_PREFIX):
        sid = parse_spiffe_id(value)
        if sid.path:
            raise InvalidSpiffeIdError("a trust domain ID has no path", value=value)
        return sid.trust_domain
    if len(value.encode("utf-8", "surrogatepass")) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeIdError(
            f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes", value=value
        )
    _check_trust_domain(value, original=value)
    return TrustDomain(value)
