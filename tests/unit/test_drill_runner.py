"""The drill engine against in-memory fakes in fake time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from atoll.drill.runner import DrillRunner
from atoll.drill.testing import (
    FakeClock,
    FakeDisruptor,
    FakeFederation,
    FakeResolver,
    FakeRouteProbe,
)
from atoll.model import Drill, DrillSpec, Metadata
from atoll.model.drill import StepName


def setup(**delays: float) -> tuple[FakeFederation, FakeDisruptor, DrillRunner]:
    clock = FakeClock()
    fed = FakeFederation(clock=clock)
    dis = FakeDisruptor(fed, delay=delays)
    runner = DrillRunner(
        fed,
        FakeResolver(dis),
        dis,
        worker_id="w1",
        now=clock.now,
        monotonic=clock.monotonic,
        sleep=clock.sleep,
        routes=FakeRouteProbe(dis),
    )
    return fed, dis, runner


def drill(fed: FakeFederation, **spec: object) -> Drill:
    return fed.add(
        Drill(
            metadata=Metadata(name="d1"),
            spec=DrillSpec.model_validate({"clusters": ["a"], "hold_seconds": 3, **spec}),
        )
    )


async def test_failover_succeeds_and_measures_every_server() -> None:
    fed, dis, runner = setup(a=0.1, b=0.3, c=0.45)
    drill(fed)
    done = await runner.run("d1")
    st = done.status
    assert st.phase == "succeeded", st.error
    assert [s.state for s in st.steps] == ["done"] * 7
    fo = {m.server: m.seconds for m in st.measurements if m.phase == "failover" and m.path == "dns"}
    assert set(fo) == {"a", "b", "c"}
    gw = [m for m in st.measurements if m.path == "gateway"]
    assert {m.server for m in gw} == {"a", "b", "c"} and all(m.within_bound for m in gw)
    assert all(m.seconds is not None and 0.1 <= m.seconds < 0.2 for m in gw)
    assert fo["a"] is not None and fo["c"] is not None
    assert 0.1 <= fo["a"] < 0.2 and 0.45 <= fo["c"] < 0.55, fo
    assert st.restore_states == {"a": "active"}
    assert dis.restore_calls == [{"a": "active"}]
    assert fed.admin["a"] == "active"
    assert st.bound_seconds == fed.drain_bound
    assert "failed over in" in st.summary
    assert st.leaving_addresses == ["10.1.0.1"]


async def test_a_server_missing_the_bound_rolls_back() -> None:
    fed, dis, runner = setup(b=2.0)
    drill(fed)
    done = await runner.run("d1")
    st = done.status
    assert st.phase == "rolled_back"
    assert "b" in st.error and "bound" in st.error
    late = [m for m in st.measurements if not m.within_bound]
    assert [m.server for m in late] == ["b"]
    assert dis.restore_calls == [{"a": "active"}], "what was drained is restored"
    assert fed.admin["a"] == "active"
    assert st.step("hold").state == "pending", "no hold after a failed verification"


async def test_resume_skips_finished_steps_and_never_disrupts_twice() -> None:
    fed, dis, first = setup()
    d = drill(fed)
    # run only plan, baseline and disrupt, as if the worker died right after
    first._drill = d
    await first._save(
        lambda st: st.model_copy(update={"phase": "running", "worker": "w0", "attempt": 1})
    )
    steps: list[tuple[StepName, Callable[[], Awaitable[str]]]] = [
        ("plan", first._plan),
        ("baseline", first._baseline),
        ("disrupt", first._disrupt),
    ]
    for name, fn in steps:
        detail = await fn()
        await first._set_step(name, state="done", finished_at=fed.clock.now(), detail=detail)
    assert dis.disrupt_calls == 1
    fed.clock.t += 30  # the janitor re-enqueued it a while later
    second = DrillRunner(
        fed, FakeResolver(dis), dis, worker_id="w2",
        now=fed.clock.now, monotonic=fed.clock.monotonic, sleep=fed.clock.sleep,
    )  # fmt: skip
    done = await second.run("d1")
    assert done.status.phase == "succeeded", done.status.error
    assert dis.disrupt_calls == 1, "a resumed drill must not disrupt again"
    assert done.status.attempt == 2 and done.status.worker == "w2"
    assert done.status.restore_states == {"a": "active"}
    fo = [m for m in done.status.measurements if m.phase == "failover"]
    assert fo and all(m.seconds is None and "timing not observed" in m.note for m in fo)


async def test_finished_drill_is_left_alone() -> None:
    fed, dis, runner = setup()
    drill(fed)
    await runner.run("d1")
    calls = dis.disrupt_calls
    again = await runner.run("d1")
    assert again.status.phase == "succeeded" and dis.disrupt_calls == calls


async def test_unknown_cluster_fails_before_disrupting() -> None:
    fed, dis, runner = setup()
    drill(fed, clusters=["zz"])
    done = await runner.run("d1")
    assert done.status.phase == "failed"
    assert "unknown cluster" in done.status.error
    assert dis.disrupt_calls == 0 and dis.restore_calls == []


async def test_plan_warns_when_nothing_remains() -> None:
    fed, _, runner = setup()
    drill(fed, clusters=["a", "b", "c"], bound_seconds=1.0)
    done = await runner.run("d1")
    rows = done.status.plan
    assert rows and rows[0].remaining == []
    assert any("no healthy cluster remains" in w for w in rows[0].warnings)
