"""Load balancing across endpoints with outlier ejection — state, no I/O, injected clock.

:class:`Balancer` picks an endpoint for a new connection: round-robin per
service over the endpoints that are not *ejected*. An endpoint is ejected
when ``consecutive_failures`` connection attempts in a row failed (refused,
timed out); it stays out for ``base_ejection_seconds * times ejected``
(capped at ``max_ejection_seconds``) and then gets traffic again; one
success resets its failure count (Envoy's "consecutive 5xx" outlier
detection, applied to connect failures).

``max_ejection_percent`` bounds the share of a service's endpoints that may
be out at once: beyond it, the endpoints ejected longest ago count as
available again, so a bad network moment never empties a service. If every
endpoint is out anyway, all of them are tried (panic mode) — a connection
attempt costs less than a certain refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from atoll_gateway.config import OutlierConfig

__all__ = ["Balancer", "Endpoint"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(slots=True)
class _Outlier:
    failures: int = 0
    times_ejected: int = 0
    ejected_at: float = 0.0
    until: float = 0.0


class Balancer:
    def __init__(self, config: OutlierConfig, *, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self._state: dict[Endpoint, _Outlier] = {}
        self._cursor: dict[str, int] = {}

    def set_config(self, config: OutlierConfig) -> None:
        self.config = config

    def is_ejected(self, endpoint: Endpoint) -> bool:
        st = self._state.get(endpoint)
        return st is not None and st.until > self.clock()

    def available(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """The endpoints to use now, in order (see the module docstring)."""
        now = self.clock()
        out: list[tuple[float, Endpoint]] = []
        ok: list[Endpoint] = []
        for ep in endpoints:
            st = self._state.get(ep)
            if st is not None and st.until > now:
                out.append((st.ejected_at, ep))
            else:
                ok.append(ep)
        limit = len(endpoints) * self.config.max_ejection_percent // 100
        if len(out) > limit:
            out.sort(key=lambda p: p[0])
            released = {ep for _, ep in out[: len(out) - limit]}
            ok = [ep for ep in endpoints if ep in released or ep in ok]
        return ok or list(endpoints)

    def order(self, key: str, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """Endpoints to try for one connection, starting at the round-robin cursor."""
        ok = self.available(endpoints)
        if not ok:
            return []
        k = self._cursor.get(key, 0) % len(ok)
        self._cursor[key] = k + 1
        return ok[k:] + ok[:k]

    def success(self, endpoint: Endpoint) -> None:
        st = self._state.get(endpoint)
        if st is not None:
            st.failures = 0
            if st.until <= self.clock():
                st.times_ejected = 0

    def failure(self, endpoint: Endpoint) -> bool:
        """Record a failed connect; True when it ejected the endpoint."""
        st = self._state.setdefault(endpoint, _Outlier())
        st.failures += 1
        now = self.clock()
        if st.failures >= self.config.consecutive_failures and st.until <= now:
            st.times_ejected += 1
            st.failures = 0
            st.ejected_at = now
            st.until = now + min(
                self.config.base_ejection_seconds * st.times_ejected,
                self.config.max_ejection_seconds,
            )
            return True
        return False

    def forget(self, keep: Iterable[Endpoint]) -> None:
        """Drop state of endpoints no longer configured (bounded memory)."""
        keep_set = set(keep)
        for ep in [e for e in self._state if e not in keep_set]:
            del self._state[ep]
