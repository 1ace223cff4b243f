"""What agents report over the sync stream, checked and stored.

An agent owns exactly three things in the federation's state: its cluster's
declaration (region, zone, addresses — not the admin state, which belongs to
the operator), the ServiceExports of its cluster, and its cluster's
TrustDomain (the bundle of the CA it runs; merged by the pure
:func:`atoll.trusthub.domains.merge_cluster_report`: never a lower sequence,
never another cluster's domain, the operator's rotation request kept). Reports are *state of the
world*: each one is the agent's full current set, and this module stores the
difference (CAS per object; deleted exports are deleted). Anything that is not
the reporting node's own — another cluster's export, a Cluster under another
name — is refused with PermissionDeniedError and nothing is written.

It also records liveness (heartbeats renew the cluster's lease) and the
``connected``/``last_report`` status fields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from atoll.control.liveness import Liveness
from atoll.control.repo import Repo, mutate
from atoll.errors import ConflictError, InvalidError
from atoll.model import (
    Cluster,
    ClusterStatus,
    Metadata,
    ProbeReport,
    ServiceExport,
    TrustDomain,
    decode,
)
from atoll.sync import Item, NodeInfo, PermissionDeniedError
from atoll.trusthub.domains import merge_cluster_report
from atoll.trusthub.naming import DEFAULT_FEDERATION_DOMAIN, parse_federation_domain
from atoll_trust.spiffe_id import TrustDomain as SpiffeTrustDomain

__all__ = ["REPORTABLE", "AgentReports"]

log = logging.getLogger("atoll.control.reports")

#: what each role may report
REPORTABLE: dict[str, frozenset[str]] = {
    "agent": frozenset({"Cluster", "ServiceExport", "TrustDomain", "ProbeReport"}),
}


def _now() -> datetime:
    return datetime.now(UTC)


class AgentReports:
    """The control plane's :class:`~atoll.sync.ReportSink`."""

    def __init__(
        self,
        repo: Repo,
        liveness: Liveness,
        *,
        federation: SpiffeTrustDomain | None = None,
        now: Callable[[], datetime] = _now,
    ) -> None:
        self.repo = repo
        self.liveness = liveness
        self.federation = federation or parse_federation_domain(DEFAULT_FEDERATION_DOMAIN)
        self.now = now

    # -- ReportSink ----------------------------------------------------------
    async def node_connected(self, node: NodeInfo) -> None:
        if node.role == "agent":
            await self._set_status(node, connected=True, agent_version=node.software_version)

    async def node_disconnected(self, node: NodeInfo) -> None:
        if node.role == "agent":
            await self._set_status(node, connected=False)

    async def node_heartbeat(self, node: NodeInfo) -> float:
        if node.role != "agent":
            raise PermissionDeniedError(f"only agents heartbeat; {node.id} is a {node.role}")
        return await self.liveness.renew(node.cluster)

    async def node_report(self, node: NodeInfo, type_: str, items: Sequence[Item]) -> None:
        if type_ not in REPORTABLE.get(node.role, frozenset()):
            raise PermissionDeniedError(f"a {node.role} may not report {type_}")
        if type_ == "Cluster":
            await self._report_cluster(node, items)
        elif type_ == "TrustDomain":
            await self._report_trust_domain(node, items)
        elif type_ == "ProbeReport":
            await self._report_probes(node, items)
        else:
            await self._report_exports(node, items)

    # -- ProbeReport -----------------------------------------------------------
    async def _report_probes(self, node: NodeInfo, items: Sequence[Item]) -> None:
        if len(items) != 1:
            raise InvalidError(f"a ProbeReport report holds exactly one report, got {len(items)}")
        reported = decode(ProbeReport, items[0].body)
        if reported.metadata.name != node.cluster or reported.spec.vantage != node.cluster:
            raise PermissionDeniedError(
                f"agent of cluster {node.cluster!r} may report only its own probes, "
                f"not {reported.spec.vantage!r}'s"
            )
        own = reported.model_copy(
            update={
                "metadata": reported.metadata.model_copy(update={"owner": f"agent/{node.cluster}"})
            }
        )

        def replace(current: ProbeReport | None) -> ProbeReport:
            if current is None:
                return own
            return current.model_copy(update={"spec": own.spec})

        await mutate(self.repo, ProbeReport, (node.cluster,), replace)

    # -- TrustDomain ---------------------------------------------------------
    async def _report_trust_domain(self, node: NodeInfo, items: Sequence[Item]) -> None:
        if len(items) != 1:
            raise InvalidError(f"a TrustDomain report holds exactly one domain, got {len(items)}")
        reported = decode(TrustDomain, items[0].body)
        stamp = self.now()

        def merge(current: TrustDomain | None) -> TrustDomain | None:
            return merge_cluster_report(
                current, reported, cluster=node.cluster, federation=self.federation, now=stamp
            )

        stored = await mutate(self.repo, TrustDomain, ("cluster", node.cluster), merge)
        if stored is not None:
            log.info(
                "cluster trust domain stored",
                extra={
                    "cluster": node.cluster,
                    "trust_domain": stored.spec.trust_domain,
                    "sequence": stored.spec.sequence,
                },
            )

    # -- Cluster -------------------------------------------------------------
    async def _report_cluster(self, node: NodeInfo, items: Sequence[Item]) -> None:
        if len(items) != 1:
            raise InvalidError(f"a Cluster report holds exactly one Cluster, got {len(items)}")
        reported = decode(Cluster, items[0].body)
        if reported.metadata.name != node.cluster:
            raise PermissionDeniedError(
                f"agent of cluster {node.cluster!r} may not declare cluster "
                f"{reported.metadata.name!r}"
            )
        stamp = self.now()

        def merge(current: Cluster | None) -> Cluster:
            if current is None:
                return Cluster(
                    metadata=Metadata(
                        name=node.cluster,
                        labels=reported.metadata.labels,
                        owner=f"agent/{node.cluster}",
                    ),
                    spec=reported.spec.model_copy(update={"admin_state": "active"}),
                    status=ClusterStatus(
                        connected=True, last_report=stamp, agent_version=node.software_version
                    ),
                )
            spec = reported.spec.model_copy(update={"admin_state": current.spec.admin_state})
            return current.model_copy(
                update={
                    "spec": spec,
                    "metadata": current.metadata.model_copy(
                        update={"labels": reported.metadata.labels}
                    ),
                    "status": current.status.model_copy(
                        update={"connected": True, "last_report": stamp}
                    ),
                }
            )

        await mutate(self.repo, Cluster, (node.cluster,), merge)

    # -- ServiceExports ------------------------------------------------------
    async def _report_exports(self, node: NodeInfo, items: Sequence[Item]) -> None:
        wanted: dict[str, ServiceExport] = {}
        for it in items:
            exp = decode(ServiceExport, it.body)
            if exp.spec.cluster != node.cluster:
                raise PermissionDeniedError(
                    f"agent of cluster {node.cluster!r} may not write exports of cluster "
                    f"{exp.spec.cluster!r} ({exp.metadata.namespace}/{exp.metadata.name})"
                )
            key = exp.key()
            if key in wanted:
                raise InvalidError(f"export {key} reported twice")
            wanted[key] = exp.model_copy(
                update={
                    "metadata": exp.metadata.model_copy(update={"owner": f"agent/{node.cluster}"})
                }
            )
        if await self.repo.get(Cluster, (node.cluster,)) is None:
            raise InvalidError(
                f"cluster {node.cluster!r} is not registered yet; report the Cluster first"
            )
        stored, _ = await self.repo.list(ServiceExport, node.cluster)
        by_key = {e.key(): e for e in stored}
        written = removed = 0
        for key, exp in wanted.items():
            have = by_key.get(key)
            if (
                have is not None
                and have.spec == exp.spec
                and have.metadata.labels == exp.metadata.labels
            ):
                continue
            await self._write_export(exp)
            written += 1
        for key, have in by_key.items():
            if key not in wanted:
                try:
                    await self.repo.store.delete(key, expect=have.metadata.revision)
                except ConflictError:
                    await self.repo.store.delete(key)
                removed += 1
        await self._set_status(node, last_report=self.now())
        if written or removed:
            log.info(
                "exports updated",
                extra={"cluster": node.cluster, "written": written, "removed": removed},
            )

    async def _write_export(self, exp: ServiceExport) -> None:
        def merge(current: ServiceExport | None) -> ServiceExport:
            if current is None:
                return exp
            meta = current.metadata.model_copy(
                update={"labels": exp.metadata.labels, "owner": exp.metadata.owner}
            )
            return current.model_copy(update={"spec": exp.spec, "metadata": meta})

        await mutate(self.repo, ServiceExport, exp.path(), merge)

    # -- status --------------------------------------------------------------
    async def _set_status(self, node: NodeInfo, **fields: object) -> None:
        def change(current: Cluster | None) -> Cluster | None:
            if current is None:
                return None
            return current.model_copy(update={"status": current.status.model_copy(update=fields)})

        try:
            await mutate(self.repo, Cluster, (node.cluster,), change)
        except ConflictError:
            log.warning("could not record cluster status", extra={"cluster": node.cluster})
