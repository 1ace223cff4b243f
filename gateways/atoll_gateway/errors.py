"""The gateway's error tree (a branch of :mod:`atoll.errors`).

* :class:`ClientHelloError` — the first bytes of a connection are not a
  usable TLS ClientHello. ``reason`` is the metrics label
  (``not_tls``, ``malformed``, ``oversized``, ``truncated``, ``timeout``).
* :class:`RouteError` — the SNI names nothing this gateway serves
  (``reason``: ``no_sni``, ``bad_name``, ``unknown_service``, ``wrong_cluster``,
  ``ambiguous_port``, ``unknown_port``, ``no_endpoint``).
* :class:`UpstreamError` — no endpoint (or remote gateway) accepted a
  connection in time; retryable by the client.
* :class:`ConfigError` — a gateway configuration file is invalid (a user error).

Every error is *typed*: the listener maps it to a counter label, an access-log
line and a clean close, never to a crash.
"""

from __future__ import annotations

from atoll.errors import InvalidError, RetryableError, UserError

__all__ = ["ClientHelloError", "ConfigError", "GatewayError", "RouteError", "UpstreamError"]


class GatewayError(UserError):
    """Base of errors about one connection; ``reason`` is a short metrics label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ClientHelloError(GatewayError):
    """The connection did not start with a well-formed TLS ClientHello."""


class RouteError(GatewayError):
    """The requested server name does not route to anything here."""


class UpstreamError(RetryableError):
    """No endpoint could be connected to."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(InvalidError):
    """The gateway configuration is invalid."""
