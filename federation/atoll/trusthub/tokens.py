"""One-time, expiring join tokens: how a new cluster's agent gets its first SVID.

A token is text the operator hands to the agent once::

    atj1.<cluster>.<expiry, unix seconds>.<43 characters: 256 random bits, base64url>

Only the cluster and the expiry are readable; the random part is the secret.
The control plane keeps **only the SHA-256 of the whole token**, under
``/atoll/trust/join-tokens/<hex digest>`` (outside the resource prefix), so a
store dump does not leak usable tokens; the cluster and expiry inside the
token are authenticated by that hash too (change a character and it is
unknown).

* Expiry: the record is written with a store lease of the token's TTL, so the
  store forgets it by itself; the expiry embedded in the token lets the
  control plane say *expired* (rather than *unknown*) and refuse it even
  before the lease sweep runs.
* One time: redeeming is a compare-and-swap from ``unused`` to ``used`` on the
  record's revision, keeping the lease. Two concurrent redemptions: exactly
  one wins, the other sees a conflict and is told the token was used. The
  ``used`` tombstone stays until the lease ends, so a second attempt gets
  "already used" rather than "unknown".

The refusals are :class:`JoinTokenError` subclasses with one-line messages
that say what to do next. Parsing and the decisions are pure functions;
:class:`JoinTokens` is the thin store edge.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from atoll.errors import ConflictError, LeaseNotFoundError, UserError
from atoll.model.names import validate_label
from atoll.store import Store

__all__ = [
    "MAX_TOKEN_TTL",
    "MIN_TOKEN_TTL",
    "TOKEN_PREFIX",
    "IssuedToken",
    "JoinTokenError",
    "JoinTokenExpiredError",
    "JoinTokenInvalidError",
    "JoinTokenUnknownError",
    "JoinTokenUsedError",
    "JoinTokens",
    "ParsedToken",
    "parse_token",
    "render_token",
    "token_key",
]

TOKEN_PREFIX = "/atoll/trust/join-tokens/"
MIN_TOKEN_TTL = dt.timedelta(seconds=1)
MAX_TOKEN_TTL = dt.timedelta(days=30)
_SECRET_BYTES = 32
_TOKEN = re.compile(r"atj1\.([a-z0-9-]{1,63})\.(\d{1,12})\.([A-Za-z0-9_-]{43})")


class JoinTokenError(UserError):
    """A join token was refused; the message says why and what to do."""


class JoinTokenInvalidError(JoinTokenError):
    """The text is not a join token at all."""


class JoinTokenExpiredError(JoinTokenError):
    pass


class JoinTokenUsedError(JoinTokenError):
    pass


class JoinTokenUnknownError(JoinTokenError):
    pass


@dataclass(frozen=True, slots=True)
class ParsedToken:
    cluster: str
    expires_at: dt.datetime
    text: str


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """What ``atoll join-token create`` prints, once."""

    token: str
    cluster: str
    expires_at: dt.datetime


def render_token(cluster: str, expires_at: dt.datetime, secret: bytes) -> str:
    validate_label(cluster)
    code = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    return f"atj1.{cluster}.{math.ceil(expires_at.timestamp())}.{code}"


def parse_token(text: str) -> ParsedToken:
    m = _TOKEN.fullmatch(text.strip())
    if m is None:
        raise JoinTokenInvalidError(
            "this is not an Atoll join token (expected atj1.<cluster>.<expiry>.<secret>); "
            "create one with `atoll join-token create --cluster NAME`"
        )
    expires = dt.datetime.fromtimestamp(int(m.group(2)), dt.UTC)
    return ParsedToken(cluster=m.group(1), expires_at=expires, text=m.group(0))


def token_key(text: str) -> str:
    return TOKEN_PREFIX + hashlib.sha256(text.encode()).hexdigest()


def _expired(parsed: ParsedToken) -> JoinTokenExpiredError:
    return JoinTokenExpiredError(
        f"join token for cluster {parsed.cluster!r} expired at "
        f"{parsed.expires_at.isoformat()}; create a new one with "
        f"`atoll join-token create --cluster {parsed.cluster}`"
    )


def _used(parsed: ParsedToken, used_at: str | None) -> JoinTokenUsedError:
    when = f" at {used_at}" if used_at else ""
    return JoinTokenUsedError(
        f"join token for cluster {parsed.cluster!r} was already used{when}; a token enrolls "
        f"one agent once: create a new one with `atoll join-token create --cluster "
        f"{parsed.cluster}`"
    )


class JoinTokens:
    """Issue and redeem join tokens in the store (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], dt.datetime],
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = store
        self.clock = clock
        self.random_bytes = random_bytes

    async def create(self, cluster: str, ttl: dt.timedelta) -> IssuedToken:
        try:
            validate_label(cluster)
        except ValueError as exc:
            raise JoinTokenInvalidError(f"cluster: {exc}") from exc
        if not MIN_TOKEN_TTL <= ttl <= MAX_TOKEN_TTL:
            raise JoinTokenInvalidError(
                f"token TTL {ttl} must be between {MIN_TOKEN_TTL} and {MAX_TOKEN_TTL}"
            )
        now = self.clock()
        expires = now + ttl
        text = render_token(cluster, expires, self.random_bytes(_SECRET_BYTES))
        parsed = parse_token(text)
        lease = await self.store.grant_lease(max(1, math.ceil(ttl.total_seconds())))
        record = {
            "cluster": cluster,
            "expires_at": parsed.expires_at.isoformat(),
            "state": "unused",
        }
        await self.store.put(token_key(text), json.dumps(record).encode(), expect=0, lease=lease)
        return IssuedToken(token=text, cluster=cluster, expires_at=parsed.expires_at)

    async def redeem(self, text: str) -> str:
        """Mark the token used and return its cluster, or raise :class:`JoinTokenError`."""
        parsed = parse_token(text)
        now = self.clock()
        if now >= parsed.expires_at:
            raise _expired(parsed)
        key = token_key(parsed.text)
        entry = await self.store.get(key)
        if entry is None:
            raise JoinTokenUnknownError(
                f"join token for cluster {parsed.cluster!r} is unknown to this federation "
                "(never issued here, or already expired and forgotten)"
            )
        record = json.loads(entry.value)
        if record.get("state") == "used":
            raise _used(parsed, record.get("used_at"))
        used = {**record, "state": "used", "used_at": now.isoformat()}
        try:
            await self.store.put(
                key, json.dumps(used).encode(), expect=entry.mod_revision, lease=entry.lease
            )
        except ConflictError as exc:
            raise _used(parsed, None) from exc
        except LeaseNotFoundError as exc:
            raise _expired(parsed) from exc
        return str(record["cluster"])
