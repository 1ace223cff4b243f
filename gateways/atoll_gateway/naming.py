"""The gateway's SNI naming scheme: which server name reaches which service.

A client (or a peer gateway) names the service it wants in the TLS
``server_name``::

    [<port>.]<service>.<namespace>.svc[.<cluster>].<zone>

* ``<zone>`` is the federated DNS zone without its trailing dot (``atoll.test``),
  so the names live beside the DNS names ``<service>.<namespace>.<zone>`` and
  cannot collide with them (the ``svc`` label).
* ``<cluster>`` pins a cluster: a gateway refuses a name that pins another
  cluster (``wrong_cluster``). Peer gateways always send the pinned form; the
  cluster-set form (no cluster label) means "any gateway that serves it".
* ``<port>`` is a port number or a port *name* (``8080`` or ``http``); it may be
  left out when the service has exactly one port.

Every label is a DNS label (RFC 1123), like the names in the resource model.
A cluster literally called ``svc`` cannot be pinned (the name is ambiguous).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from atoll.model.names import validate_label
from atoll_gateway.errors import RouteError

__all__ = ["ServiceName", "parse_server_name", "server_name"]


@dataclass(frozen=True, slots=True)
class ServiceName:
    namespace: str
    service: str
    #: port number or port name; None = the service's only port
    port: int | str | None = None
    #: the cluster pinned by the name, if any
    cluster: str | None = None


def _label(value: str, what: str, name: str) -> str:
    try:
        return validate_label(value)
    except ValueError:
        raise RouteError("bad_name", f"{name!r}: {what} {value!r} is not a DNS label") from None


@functools.lru_cache(maxsize=4096)  # a few names arrive over and over; errors are not cached
def parse_server_name(name: str | None, zone: str) -> ServiceName:
    """Split a server name into its parts; raise :class:`RouteError` if it is not ours."""
    if not name:
        raise RouteError("no_sni", "the ClientHello carries no server name")
    zone = zone.rstrip(".").lower()
    name = name.rstrip(".").lower()
    suffix = "." + zone
    if not name.endswith(suffix):
        raise RouteError("bad_name", f"{name!r} is not under the zone {zone!r}")
    labels = name[: -len(suffix)].split(".")
    cluster: str | None = None
    if labels[-1] == "svc":
        rest = labels[:-1]
    elif len(labels) >= 2 and labels[-2] == "svc":
        cluster = _label(labels[-1], "cluster", name)
        rest = labels[:-2]
    else:
        raise RouteError("bad_name", f"{name!r} has no 'svc' label")
    if len(rest) not in (2, 3):
        raise RouteError("bad_name", f"{name!r}: expected [port.]service.namespace.svc")
    port: int | str | None = None
    if len(rest) == 3:
        text = _label(rest[0], "port", name)
        port = int(text) if text.isdigit() else text
        if isinstance(port, int) and not 1 <= port <= 65535:
            raise RouteError("bad_name", f"{name!r}: port {port} is not 1-65535")
    service = _label(rest[-2], "service", name)
    namespace = _label(rest[-1], "namespace", name)
    return ServiceName(namespace=namespace, service=service, port=port, cluster=cluster)


@functools.lru_cache(maxsize=4096)
def server_name(target: ServiceName, zone: str) -> str:
    """The server name for ``target`` (the inverse of :func:`parse_server_name`)."""
    parts = [] if target.port is None else [str(target.port)]
    parts += [target.service, target.namespace, "svc"]
    if target.cluster is not None:
        parts.append(target.cluster)
    parts.append(zone.rstrip(".").lower())
    return ".".join(parts)
