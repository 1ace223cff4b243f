"""The registry state file: atomic writes; every corruption detected, never half-loaded."""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atoll import statefile
from atoll.errors import FatalError, InvalidError
from atoll_agent.registry.catalog import PutInstance, PutService, apply, empty_catalog
from atoll_agent.registry.model import CatalogSnapshot, InstanceSpec, ServiceSpec
from atoll_agent.registry.persistence import (
    STATE_KIND,
    StateWriteError,
    decode_state,
    load_state,
    save_state,
)

NOW = 1_800_000_000.5


def sample() -> CatalogSnapshot:
    snap = empty_catalog("0123abcd")
    snap = apply(
        snap,
        PutService("shop", "cart", ServiceSpec.model_validate({"ports": [{"port": 80}]})),
        now=1.5,
    )
    spec = InstanceSpec.model_validate(
        {"address": "fd00::7", "ttl_seconds": 5, "labels": {"a": "é"}}
    )
    return apply(snap, PutInstance("shop", "cart", "i-1", spec), now=1234.25)


def saved(payload: object) -> bytes:
    """A well-formed envelope (correct checksum) around any payload."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.json"
        statefile.save_state(path, STATE_KIND, payload)
        return path.read_bytes()


def test_round_trip_in_the_common_envelope(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    snap = sample()
    save_state(path, snap)
    doc = json.loads(path.read_bytes())
    assert (doc["format"], doc["kind"], len(doc["sha256"])) == (1, STATE_KIND, 64)
    assert doc["payload"] == json.loads(snap.model_dump_json())
    assert load_state(path, now=NOW) == snap
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"], "no temp file left behind"


def test_save_replaces_the_previous_state(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    save_state(path, empty_catalog("e"))
    save_state(path, sample())
    assert load_state(path, now=NOW) == sample()


def test_missing_file_starts_empty_without_side_effects(tmp_path: Path) -> None:
    assert load_state(tmp_path / "state.json", now=NOW) is None
    assert list(tmp_path.iterdir()) == []


def _flip(data: bytes) -> bytes:
    i = data.index(b'"cart"') + 2
    return data[:i] + b"X" + data[i + 1 :]


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda d: b"",
    "truncated": lambda d: d[: len(d) // 2],
    "last byte lost": lambda d: d[:-1],
    "garbage": lambda d: b"\x00\xff\xfe garbage",
    "not utf-8": lambda d: d[:30] + b"\xc3\x28" + d[30:],
    "byte flipped in catalog": _flip,
    "another kind": lambda d: d.replace(STATE_KIND.encode(), b"atoll-something-else"),
    "json array": lambda d: b"[1, 2]",
    "checksum missing": lambda d: d.replace(b'"sha256"', b'"sha1"'),
    "unknown format": lambda d: d.replace(b'"format":1', b'"format":2'),
    "format as text": lambda d: d.replace(b'"format":1', b'"format":"1"'),
    "valid checksum, invalid catalog": lambda d: saved({"index": -1}),
    "valid checksum, duplicate service": lambda d: saved(
        {"services": [{"namespace": "a", "name": "b", "ports": [{"port": 1}]}] * 2}
    ),
    "valid checksum, NaN": lambda d: saved({"index": float("nan")}),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_file_is_moved_aside_and_the_registry_starts_empty(
    tmp_path: Path, corrupt: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    save_state(path, sample())
    bad = corrupt(path.read_bytes())
    assert bad != path.read_bytes()
    path.write_bytes(bad)
    with caplog.at_level(logging.WARNING, logger="atoll.registry"):
        assert load_state(path, now=NOW) is None
    aside = tmp_path / "state.json.corrupt-1800000000"
    assert not path.exists()
    assert aside.read_bytes() == bad, "the corrupt file is kept for inspection, unchanged"
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage() == "registry state file is corrupt; moved aside, starting empty"
    assert record.moved_to == str(aside)  # type: ignore[attr-defined]
    assert record.reason.startswith(str(path))  # type: ignore[attr-defined]


def test_decode_names_the_problem(tmp_path: Path) -> None:
    save_state(tmp_path / "s.json", sample())
    data = (tmp_path / "s.json").read_bytes()
    with pytest.raises(InvalidError, match=r"^s\.json: checksum mismatch"):
        decode_state(_flip(data), source="s.json")
    with pytest.raises(InvalidError, match=r"^s\.json: not JSON"):
        decode_state(data[:10], source="s.json")
    with pytest.raises(InvalidError, match=r"^s\.json: catalog: index: Input should be greater"):
        decode_state(saved({"index": -1}), source="s.json")


def test_two_corruptions_in_the_same_second_keep_both_files(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    for content in (b"one", b"two"):
        path.write_bytes(content)
        assert load_state(path, now=NOW) is None
    assert (tmp_path / "state.json.corrupt-1800000000").read_bytes() == b"one"
    assert (tmp_path / "state.json.corrupt-1800000000-2").read_bytes() == b"two"


def test_an_unreadable_file_stops_the_process(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()  # reading a directory fails with an OSError other than "not found"
    with pytest.raises(FatalError, match="cannot read registry state"):
        load_state(path, now=NOW)
    assert path.is_dir()


def test_a_failed_write_leaves_the_old_state(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(path, empty_catalog("old"))
    # occupy the temporary name atoll.statefile writes to, so the write fails midway
    (tmp_path / f".state.json.{os.getpid()}.tmp").mkdir()
    with pytest.raises(StateWriteError, match="cannot write registry state"):
        save_state(path, sample())
    assert load_state(path, now=NOW) == empty_catalog("old")


def test_a_write_under_a_file_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(StateWriteError, match="cannot write registry state"):
        save_state(tmp_path / "blocker" / "state.json", sample())


@functools.cache
def sample_file() -> bytes:
    """One saved file (its envelope has a wall-clock ``saved_at``, so save it once)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_state(Path(tmp) / "state.json", sample())
        return (Path(tmp) / "state.json").read_bytes()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_damage_is_never_half_loaded(data: st.DataObject) -> None:
    good = sample_file()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.json"
        pos = data.draw(st.integers(0, len(good) - 1), label="position")
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]), label="damage")
        byte = bytes([data.draw(st.integers(0, 255), label="byte")])
        damaged = {
            "flip": good[:pos] + byte + good[pos + 1 :],
            "truncate": good[:pos],
            "insert": good[:pos] + byte + good[pos:],
            "delete": good[:pos] + good[pos + 1 :],
        }[kind]
        path.write_bytes(damaged)
        loaded = load_state(path, now=NOW)
        if loaded is None:
            assert not path.exists()
            assert (Path(tmp) / "state.json.corrupt-1800000000").read_bytes() == damaged
        else:
            assert loaded == sample(), "whatever loads is exactly what was saved"
