"""The resource model (DESIGN §3): one frozen pydantic schema per kind.

The same schema is what the store holds (JSON bytes), what the REST API
accepts and returns, and what the sync protocol carries. Every resource is
``{kind, metadata, spec, status}``; its store key follows from its kind and its
identifying path (see :meth:`Resource.path`).
"""

from atoll.model.base import (
    KINDS,
    ROOT,
    Condition,
    Metadata,
    Resource,
    decode,
    encode,
    kind_by_name,
    kind_by_plural,
    store_key,
    store_prefix,
)
from atoll.model.cluster import (
    AdminState,
    Cluster,
    ClusterSpec,
    ClusterStatus,
    Region,
    RegionSpec,
)
from atoll.model.drill import (
    Drill,
    DrillSpec,
    DrillStatus,
    DrillStep,
    Measurement,
    PlanRow,
)
from atoll.model.names import DnsLabel, validate_label
from atoll.model.policy import Strategy, TrafficPolicy, TrafficPolicySpec
from atoll.model.probe import ProbeReport, ProbeReportSpec, ProbeResult
from atoll.model.service import (
    Endpoint,
    ImportTarget,
    PortConflict,
    ServiceExport,
    ServiceExportSpec,
    ServiceExportStatus,
    ServiceImport,
    ServiceImportSpec,
    ServiceImportStatus,
    ServicePort,
)
from atoll.model.trust import (
    BundleEndpointSpec,
    EndpointFetchStatus,
    TrustDomain,
    TrustDomainSpec,
    TrustDomainStatus,
)

__all__ = [
    "KINDS",
    "ROOT",
    "AdminState",
    "BundleEndpointSpec",
    "Cluster",
    "ClusterSpec",
    "ClusterStatus",
    "Condition",
    "DnsLabel",
    "Drill",
    "DrillSpec",
    "DrillStatus",
    "DrillStep",
    "Endpoint",
    "EndpointFetchStatus",
    "ImportTarget",
    "Measurement",
    "Metadata",
    "PlanRow",
    "PortConflict",
    "ProbeReport",
    "ProbeReportSpec",
    "ProbeResult",
    "Region",
    "RegionSpec",
    "Resource",
    "ServiceExport",
    "ServiceExportSpec",
    "ServiceExportStatus",
    "ServiceImport",
    "ServiceImportSpec",
    "ServiceImportStatus",
    "ServicePort",
    "Strategy",
    "TrafficPolicy",
    "TrafficPolicySpec",
    "TrustDomain",
    "TrustDomainSpec",
    "TrustDomainStatus",
    "decode",
    "encode",
    "kind_by_name",
    "kind_by_plural",
    "store_key",
    "store_prefix",
    "validate_label",
]
