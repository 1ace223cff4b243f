"""Rise/fall hysteresis: flapping inputs do not flap outputs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from atoll.model import Endpoint, Metadata, ServiceExport, ServiceExportSpec, ServicePort
from atoll_agent.health import apply_hysteresis
from atoll_agent.hysteresis import Hysteresis


def run(h: Hysteresis, key: str, raws: list[bool]) -> list[bool | None]:
    out = []
    for r in raws:
        h = h.observe({key: r})
        out.append(h.state(key))
    return out


def test_first_observation_is_taken_as_is() -> None:
    assert Hysteresis().observe({"e": False}).state("e") is False


def test_fall_after_n_consecutive_failures_rise_after_m_successes() -> None:
    h = Hysteresis(rise=2, fall=3)
    states = run(h, "e", [True, False, False, False, True, True])
    assert states == [True, True, True, False, False, True]


def test_alternating_flap_never_changes_state() -> None:
    states = run(Hysteresis(rise=2, fall=2), "e", [True] + [False, True] * 20)
    assert set(states) == {True}


def test_unobserved_keys_are_forgotten() -> None:
    h = Hysteresis().observe({"a": True, "b": True}).observe({"a": True})
    assert h.state("b") is None and h.state("a") is True


@given(st.lists(st.booleans(), min_size=1, max_size=80), st.integers(1, 5), st.integers(1, 5))
def test_output_changes_only_after_a_long_enough_run(
    raws: list[bool], rise: int, fall: int
) -> None:
    states = run(Hysteresis(rise=rise, fall=fall), "e", raws)
    for i in range(1, len(states)):
        if states[i] != states[i - 1]:
            need = rise if states[i] else fall
            window = raws[max(0, i - need + 1) : i + 1]
            assert len(window) == need and all(r == states[i] for r in window)


def _export(healthy: list[bool]) -> ServiceExport:
    return ServiceExport(
        metadata=Metadata(name="web", namespace="demo"),
        spec=ServiceExportSpec(
            cluster="a",
            ports=[ServicePort(port=80)],
            endpoints=[Endpoint(address=f"10.0.0.{i}", healthy=h) for i, h in enumerate(healthy)],
        ),
    )


def test_exports_carry_debounced_endpoint_health() -> None:
    h = Hysteresis(rise=2, fall=2)
    seen: list[list[bool]] = []
    for raw in ([True, True], [False, True], [True, True], [False, True], [False, True]):
        out, h = apply_hysteresis([_export(raw)], h)
        seen.append([e.healthy for e in out[0].spec.endpoints])
    # one bad sample in between good ones changes nothing; two in a row do
    assert seen == [[True, True]] * 4 + [[False, True]]
