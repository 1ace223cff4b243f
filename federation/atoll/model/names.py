"""Names of clusters, regions, namespaces and services.

They are RFC 1123 DNS labels, as Kubernetes requires for namespaces and
services: lowercase alphanumerics and '-', starting and ending with an
alphanumeric, at most 63 characters. This matters beyond taste: a service name
becomes a DNS label in the federated zone and a path segment in the store key,
so anything else would be unroutable or ambiguous.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["DnsLabel", "validate_label"]

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def validate_label(value: str) -> str:
    """Return ``value`` if it is a valid DNS label, else raise ``ValueError``."""
    if not _LABEL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a DNS label: use 1-63 characters a-z, 0-9 and '-', "
            "starting and ending with a letter or digit"
        )
    return value


DnsLabel = Annotated[str, AfterValidator(validate_label)]
