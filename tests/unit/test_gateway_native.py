"""Compiled relays are used only when they match this interpreter and the sources byte for
byte; otherwise the Python modules run and the state says why (atoll_gateway.native)."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from atoll_gateway import native

ABI = "cpython-311.cpython-311-x86_64-linux-gnu.so"
SOURCES = {"relay.py": "a" * 64, "tunnelrelay.py": "b" * 64}


def test_a_matching_manifest_may_be_used() -> None:
    assert native.freshness({"abi": ABI, "sources": dict(SOURCES)}, SOURCES, ABI) is None


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        pytest.param(None, "unreadable", id="not-an-object"),
        pytest.param(["abi"], "unreadable", id="a-list"),
        pytest.param({"abi": "cpython-312", "sources": SOURCES}, "this interpreter is", id="abi"),
        pytest.param({"abi": ABI}, "lists no sources", id="no-sources"),
        pytest.param({"abi": ABI, "sources": "x"}, "lists no sources", id="sources-not-a-map"),
        pytest.param(
            {"abi": ABI, "sources": {**SOURCES, "relay.py": "c" * 64}},
            "relay.py changed since the build",
            id="one-changed",
        ),
        pytest.param(
            {"abi": ABI, "sources": {}},
            "relay.py, tunnelrelay.py changed",
            id="none-listed",
        ),
    ],
)
def test_anything_else_is_refused_with_its_reason(manifest: object, why: str) -> None:
    reason = native.freshness(manifest, SOURCES, ABI)
    assert reason is not None and why in reason


@pytest.fixture
def build_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ATOLL_NATIVE_DIR at an empty directory; the module's state restored afterwards."""
    monkeypatch.setenv("ATOLL_NATIVE_DIR", str(tmp_path))
    monkeypatch.delenv("ATOLL_NATIVE", raising=False)
    monkeypatch.setattr(native, "STATE", native.STATE)
    return tmp_path


def _manifest(d: Path, sources: dict[str, str], *, modules: bool = True) -> None:
    """A build's manifest, and (empty) module files where the build puts them."""
    (d / "manifest.json").write_text(json.dumps({"abi": native._abi(), "sources": sources}))
    if modules:
        (d / "atoll_gateway").mkdir(exist_ok=True)
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        for name in (*native.MODULES, "relays__mypyc"):
            (d / "atoll_gateway" / f"{name}{suffix}").write_bytes(b"")


def test_a_fresh_build_goes_first_in_the_package_path_once(build_dir: Path) -> None:
    _manifest(build_dir, native.source_hashes())
    path = ["/src/atoll_gateway"]
    state = native.use_compiled(path)
    assert state.relays == "native" and native.STATE is state
    assert path == [str(build_dir / "atoll_gateway"), "/src/atoll_gateway"]
    native.use_compiled(path)
    assert len(path) == 2


def test_no_build_means_python_and_how_to_build(build_dir: Path) -> None:
    path = ["/src/atoll_gateway"]
    state = native.use_compiled(path)
    assert state.relays == "python" and "atoll gateway compile" in state.detail
    assert path == ["/src/atoll_gateway"]


def test_a_stale_build_is_not_used(build_dir: Path) -> None:
    _manifest(build_dir, {**native.source_hashes(), "tunnelrelay.py": "0" * 64})
    path: list[str] = []
    state = native.use_compiled(path)
    assert state.relays == "python" and "tunnelrelay.py changed" in state.detail
    assert path == []


def test_a_build_missing_a_module_is_not_used(build_dir: Path) -> None:
    _manifest(build_dir, native.source_hashes())
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    (build_dir / "atoll_gateway" / f"tunnelrelay{suffix}").unlink()
    path: list[str] = []
    state = native.use_compiled(path)
    assert state.relays == "python" and f"tunnelrelay{suffix} is missing" in state.detail
    assert path == []


def test_a_corrupt_manifest_is_not_used(build_dir: Path) -> None:
    (build_dir / "manifest.json").write_text("{not json")
    path: list[str] = []
    assert native.use_compiled(path).relays == "python" and path == []


def test_it_can_be_turned_off(build_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _manifest(build_dir, native.source_hashes())
    monkeypatch.setenv("ATOLL_NATIVE", "0")
    path: list[str] = []
    state = native.use_compiled(path)
    assert state.relays == "python" and "ATOLL_NATIVE=0" in state.detail and path == []
