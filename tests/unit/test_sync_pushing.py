"""The server-side subscription state machine, driven by events (no sockets)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from atoll.sync.pushing import Push, Subscription
from atoll.sync.table import Item, ResourceTable


def item(name: str, version: str) -> Item:
    return Item(name=name, version=version, body=f"{name}@{version}".encode())


def new_sub(initial: dict[str, str] | None = None, **kw: object) -> Subscription:
    counter = itertools.count(1)
    return Subscription.resume(
        "T",
        initial_versions=initial or {},
        next_nonce=lambda: f"n{next(counter)}",
        **kw,  # type: ignore[arg-type]
    )


def names(push: Push | None) -> tuple[list[str], list[str]]:
    assert push is not None
    return sorted(i.name for i in push.resources), sorted(push.removed)


def test_first_offer_sends_everything_then_waits_for_ack() -> None:
    t = ResourceTable("T")
    t.replace_all([item("a", "1"), item("b", "1")])
    s = new_sub()
    push = s.offer(t.snapshot())
    assert names(push) == (["a", "b"], [])
    t.apply([item("a", "2")])
    assert s.offer(t.snapshot()) is None, "one push in flight at a time"
    assert push is not None
    nxt = s.ack(push.nonce)
    assert nxt is not None and [(i.name, i.version) for i in nxt.resources] == [("a", "2")]


def test_not_ready_table_sends_nothing() -> None:
    s = new_sub({"a": "1"})
    assert s.offer(ResourceTable("T").snapshot()) is None


def test_resume_sends_only_the_difference() -> None:
    t = ResourceTable("T")
    t.replace_all([item("a", "1"), item("b", "2"), item("c", "1")])
    s = new_sub({"a": "1", "b": "1", "gone": "7"})
    assert names(s.offer(t.snapshot())) == (["b", "c"], ["gone"])


def test_nack_is_never_resent_until_a_newer_version() -> None:
    t = ResourceTable("T")
    t.replace_all([item("a", "1")])
    s = new_sub()
    p1 = s.offer(t.snapshot())
    assert p1 is not None
    assert s.nack(p1.nonce, "bad") is None
    assert s.last_nack is not None and s.last_nack.message == "bad"
    assert s.nacks == 1
    # an unrelated change does not bring the rejected version back
    t.apply([item("b", "1")])
    p2 = s.offer(t.snapshot())
    assert names(p2) == (["b"], [])
    assert p2 is not None
    assert s.ack(p2.nonce) is None
    # a newer version of the rejected resource is sent
    t.apply([item("a", "2")])
    p3 = s.offer(t.snapshot())
    assert p3 is not None and [(i.name, i.version) for i in p3.resources] == [("a", "2")]
    s.ack(p3.nonce)
    assert s.held == {"a": "2", "b": "1"} and not s.rejected


def test_stale_nonce_is_ignored() -> None:
    t = ResourceTable("T")
    t.replace_all([item("a", "1")])
    s = new_sub()
    p = s.offer(t.snapshot())
    assert p is not None
    assert s.ack("not-the-nonce") is None
    assert s.inflight is p
    assert s.held == {}


def test_removal_of_held_resource() -> None:
    t = ResourceTable("T")
    t.replace_all([item("a", "1")])
    s = new_sub()
    p = s.offer(t.snapshot())
    assert p is not None
    s.ack(p.nonce)
    t.apply(removals=["a"])
    p2 = s.offer(t.snapshot())
    assert names(p2) == ([], ["a"])
    assert p2 is not None
    s.ack(p2.nonce)
    assert s.held == {}


def test_visibility_filter_hides_and_removes() -> None:
    t = ResourceTable("T")
    t.replace_all([item("mine", "1"), item("theirs", "1")])
    s = new_sub({"theirs": "0"}, visible=lambda n: n == "mine")
    assert names(s.offer(t.snapshot())) == (["mine"], ["theirs"])


def test_cap_leaves_a_backlog_that_follows() -> None:
    t = ResourceTable("T")
    t.replace_all([item(f"r{i:02}", "1") for i in range(25)])
    s = new_sub(max_resources=10)
    seen: list[str] = []
    push = s.offer(t.snapshot())
    while push is not None:
        assert len(push.resources) <= 10
        seen += [i.name for i in push.resources]
        push = s.ack(push.nonce)
    assert sorted(seen) == [f"r{i:02}" for i in range(25)]


def test_trimmed_log_falls_back_to_full_compare() -> None:
    t = ResourceTable("T", log_limit=3)
    t.replace_all([item("a", "1")])
    s = new_sub()
    p = s.offer(t.snapshot())
    assert p is not None
    s.ack(p.nonce)
    for v in range(2, 8):
        t.apply([item(f"x{v}", "1")])
    assert t.snapshot().changed_since(s.seen_seq) is None
    p2 = s.offer(t.snapshot())
    assert names(p2) == ([f"x{v}" for v in range(2, 8)], [])


ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "del", "ack", "nack"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(1, 5),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_converges_to_table_when_client_accepts(script: list[tuple[str, str, int]]) -> None:
    """Whatever happens, once the client ACKs everything it holds exactly the
    table, and it never received a version it had rejected."""
    t = ResourceTable("T")
    t.replace_all([])
    s = new_sub()
    client: dict[str, str] = {}
    rejected: set[tuple[str, str]] = set()
    push = s.offer(t.snapshot())

    def answer(p: Push | None, ok: bool) -> Push | None:
        if p is None:
            return None
        for it in p.resources:
            assert (it.name, it.version) not in rejected, "rejected version resent"
        if ok:
            for it in p.resources:
                client[it.name] = it.version
            for n in p.removed:
                client.pop(n, None)
            return s.ack(p.nonce)
        rejected.update((it.name, it.version) for it in p.resources)
        return s.nack(p.nonce, "no")

    versions = itertools.count(1)  # versions are store revisions: they only grow
    for op, name, _ in script:
        if op == "put":
            t.apply([item(name, str(next(versions)))])
            offered = s.offer(t.snapshot())  # the server offers on every change
            push = push or offered
        elif op == "del":
            t.apply(removals=[name])
            offered = s.offer(t.snapshot())  # the server offers on every change
            push = push or offered
        else:
            push = answer(push, ok=op == "ack")
    # drain: a fresh version of every resource, then accept all
    t.apply([item(n, f"final-{n}") for n in "abcd"])
    offered = s.offer(t.snapshot())
    push = push or offered
    while push is not None:
        push = answer(push, ok=True)
    assert client == {n: it.version for n, it in t.snapshot().items.items()}
