"""Last-known-good state files: atomic, checksummed, never half loaded."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from atoll.aio import Backoff
from atoll.statefile import load_state, save_state

PAYLOAD = {"types": {"ServiceImport": {"demo/web": {"version": "7", "body": "e30="}}}, "n": [1, 2]}


def test_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(path, "k", PAYLOAD)
    assert load_state(path, "k") == PAYLOAD
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert load_state(tmp_path / "absent.json", "k") is None


def test_wrong_kind_is_discarded(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(path, "k", PAYLOAD)
    assert load_state(path, "other") is None
    assert not path.exists() and len(list(tmp_path.glob("state.json.corrupt-*"))) == 1


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_corruption_loads_all_or_nothing(data: st.DataObject) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "state.json"
        save_state(path, "k", PAYLOAD)
        raw = bytearray(path.read_bytes())
        kind = data.draw(st.sampled_from(["flip", "truncate", "append"]))
        if kind == "flip":
            i = data.draw(st.integers(0, 10**6)) % len(raw)
            raw[i] ^= data.draw(st.integers(1, 255))
        elif kind == "truncate":
            raw = raw[: data.draw(st.integers(0, 10**6)) % len(raw)]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=8))
        path.write_bytes(bytes(raw))
        loaded = load_state(path, "k")
        assert loaded is None or loaded == PAYLOAD


def test_backoff_is_bounded_jittered_and_resets() -> None:
    b = Backoff(base=0.1, cap=2.0, floor=0.01, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(50)]
    assert all(0.01 <= d <= 2.0 for d in delays)
    assert len(set(delays)) > 40, "jittered, not a fixed schedule"
    assert max(delays[:2]) <= 0.2, "starts small"
    assert max(delays[10:]) > 1.0, "grows toward the cap"
    b.reset()
    assert b.next_delay() <= 0.1
