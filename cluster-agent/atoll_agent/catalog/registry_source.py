"""Watch Atoll's registry over HTTP with blocking queries.

The loop is the one Consul documents for its blocking queries:

1. ``GET /v1/catalog`` once, without an index: the current snapshot, yielded;
2. ``GET /v1/catalog?index=I&epoch=E&wait=...`` with the ``(epoch, index)`` of
   the last snapshot: the registry holds the request until something changes
   (or ``wait`` passes, then it answers with the same snapshot, which is not
   yielded again); repeat.

Because the registry answers at once whenever its ``(epoch, index)`` differs
from the one asked about, a registry that restarted from its state file
(same epoch, same or newer index) or lost it (new epoch) is followed without a
special case.

Failures — connection refused, a reset mid-body, a timeout, a non-200 status,
a body that does not validate — never reach the consumer: the source waits
``Backoff.next_delay()`` (injected sleep and backoff) and tries again, forever.
Only a fully received, validated snapshot is yielded. A consumer that is slow
to ask for the next snapshot loses nothing: the next query carries the last
index it got, so the registry answers at once with the newest state
(intermediate states are skipped — consumers are level-triggered). An outage is logged once
as a warning when it starts and once as info when it ends (with the number of
attempts), not once per retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator

import httpx
from pydantic import ValidationError

from atoll.aio import Backoff, Sleep
from atoll_agent.registry.model import CatalogSnapshot

__all__ = ["RegistrySource"]

log = logging.getLogger("atoll.agent.catalog")

#: seconds beyond the server-side wait before the client gives up on a long poll
_READ_SLACK = 15.0
_CONNECT_TIMEOUT = 5.0


class _BadResponse(Exception):
    """The registry answered, but not with a catalog."""


class RegistrySource:
    """A :class:`~atoll_agent.catalog.source.CatalogSource` reading a registry's HTTP API.

    ``url`` is the registry's base URL (``http://127.0.0.1:8500``). ``client``
    is used as given and not closed; by default the source opens its own for the
    duration of :meth:`watch`. ``wait`` is the blocking-query wait asked of the
    server (which caps it, by default at 5 minutes).
    """

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        wait: float = 60.0,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._url = url.rstrip("/") + "/v1/catalog"
        self._client = client
        self._wait = wait
        self._backoff = backoff if backoff is not None else Backoff(base=0.2, cap=10.0)
        self._sleep = sleep

    async def watch(self) -> AsyncGenerator[CatalogSnapshot, None]:
        async with contextlib.AsyncExitStack() as stack:
            client = self._client
            if client is None:
                client = await stack.enter_async_context(httpx.AsyncClient())
            last: CatalogSnapshot | None = None
            failures = 0
            while True:
                try:
                    snap = await self._fetch(client, last)
                except (httpx.HTTPError, _BadResponse) as exc:
                    failures += 1
                    self._log_failure(exc, failures)
                    await self._sleep(self._backoff.next_delay())
                    continue
                if failures:
                    log.info(
                        "catalog registry reachable again",
                        extra={"url": self._url, "attempts": failures, "index": snap.index},
                    )
                    failures = 0
                self._backoff.reset()
                if last is None or not snap.same_state(last):
                    last = snap
                    yield snap

    async def _fetch(
        self, client: httpx.AsyncClient, last: CatalogSnapshot | None
    ) -> CatalogSnapshot:
        if last is None:
            params: dict[str, str | int] = {}
            timeout = httpx.Timeout(_CONNECT_TIMEOUT + _READ_SLACK, connect=_CONNECT_TIMEOUT)
        else:
            params = {
                "index": last.index,
                "epoch": last.epoch,
                "wait": f"{int(self._wait * 1000)}ms",
            }
            timeout = httpx.Timeout(self._wait + _READ_SLACK, connect=_CONNECT_TIMEOUT)
        response = await client.get(self._url, params=params, timeout=timeout)
        if response.status_code != 200:
            raise _BadResponse(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            return CatalogSnapshot.model_validate_json(response.content)
        except ValidationError as exc:
            raise _BadResponse(f"not a catalog snapshot: {exc.errors()[0]['msg']}") from exc

    def _log_failure(self, exc: Exception, failures: int) -> None:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if failures == 1:
            log.warning(
                "catalog registry unavailable; retrying with backoff",
                extra={"url": self._url, "error": reason},
            )
        else:
            log.debug(
                "catalog registry still unavailable",
                extra={"url": self._url, "error": reason, "attempts": failures},
            )
