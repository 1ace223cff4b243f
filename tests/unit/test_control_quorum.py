"""Quorum of probe vantage points: one partitioned vantage point fails nobody."""

from __future__ import annotations

from atoll.control.quorum import probe_verdicts
from atoll.model import Metadata, ProbeReport, ProbeReportSpec, ProbeResult


def report(vantage: str, **up: bool) -> ProbeReport:
    return ProbeReport(
        metadata=Metadata(name=vantage),
        spec=ProbeReportSpec(
            vantage=vantage,
            interval_seconds=1,
            rise=2,
            fall=3,
            results=[ProbeResult(target=t, up=u) for t, u in up.items()],
        ),
    )


ALIVE = {"a", "b", "c", "d"}


def test_one_partitioned_vantage_point_fails_nobody() -> None:
    reports = [
        report("a", b=False, c=False, d=False),  # a is cut off and sees everyone down
        report("b", a=True, c=True, d=True),
        report("c", a=True, b=True, d=True),
        report("d", a=True, b=True, c=True),
    ]
    v = probe_verdicts(reports, ALIVE)
    assert not any(x.failed for x in v.values())
    assert v["b"].down_votes == 1 and "no quorum" in v["b"].reason


def test_majority_fails_a_cluster() -> None:
    reports = [report("a", d=False), report("b", d=False), report("c", d=True)]
    v = probe_verdicts(reports, ALIVE)["d"]
    assert v.failed and v.voters == 3 and v.down_votes == 2
    assert "2 of 3" in v.reason


def test_half_is_not_a_majority_and_one_voter_never_decides() -> None:
    assert not probe_verdicts([report("a", c=False), report("b", c=True)], ALIVE)["c"].failed
    assert not probe_verdicts([report("a", c=False)], ALIVE)["c"].failed


def test_dead_vantage_points_do_not_vote() -> None:
    reports = [report("a", d=False), report("b", d=False), report("c", d=True)]
    v = probe_verdicts(reports, {"c", "d"})["d"]
    assert v.voters == 1 and not v.failed


def test_self_reports_are_ignored() -> None:
    v = probe_verdicts([report("a", a=False, b=True), report("c", a=True)], ALIVE)
    assert v["a"].voters == 1
