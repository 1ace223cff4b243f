"""A small synchronous client of the control plane's REST API for the CLI.

Every failure becomes a :class:`CliError` carrying one line that says what
went wrong and what to do next; the CLI prints it and exits non-zero, never a
traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from atoll.errors import UserError

__all__ = ["ApiClient", "CliError", "default_api_url"]

DEFAULT_API = "http://127.0.0.1:7070"


class CliError(UserError):
    """A failure to report to the user in one line."""


def default_api_url(state_dir: Path) -> str:
    """``$ATOLL_API``, else the running lab's manifest, else the default address."""
    env = os.environ.get("ATOLL_API")
    if env:
        return env
    manifest = state_dir / "lab" / "manifest.json"
    try:
        doc = json.loads(manifest.read_text())
        return str(doc["control_plane"]["api"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_API


class ApiClient:
    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, body: Any = None, **params: str | None) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        try:
            resp = self._http.request(method, path, json=body, params=query)
        except httpx.ConnectError as exc:
            raise CliError(
                f"cannot reach the control plane at {self.base_url} ({_reason(exc)}); "
                "is it running? Start a lab with `atoll up`, or point --api / $ATOLL_API at it"
            ) from exc
        except httpx.TimeoutException as exc:
            raise CliError(
                f"the control plane at {self.base_url} did not answer within "
                f"{self._http.timeout.read}s; check its logs"
            ) from exc
        except httpx.HTTPError as exc:
            raise CliError(f"request to {self.base_url}{path} failed: {exc}") from exc
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("error") or resp.text
            except ValueError:
                detail = resp.text
            raise CliError(f"{method} {path}: {resp.status_code} {detail}")
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def get(self, path: str, **params: str | None) -> Any:
        return self.request("GET", path, **params)


def _reason(exc: httpx.ConnectError) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    return text or type(exc).__name__
