"""Guard the layout of DESIGN §2: five source roots, never packages."""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = ("federation", "cluster-agent", "trust", "dns", "gateways")
PACKAGES = {
    "federation": "atoll",
    "cluster-agent": "atoll_agent",
    "trust": "atoll_trust",
    "dns": "atoll_dns",
    "gateways": "atoll_gateway",
}


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("root", SOURCE_ROOTS)
def test_source_roots_are_not_packages(root: str) -> None:
    assert (ROOT / root).is_dir()
    assert not (ROOT / root / "__init__.py").exists(), f"{root}/ must stay a source root"


def test_top_level_layout_is_the_agreed_one() -> None:
    visible = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}
    expected = {*SOURCE_ROOTS, "terraform", "tests", "pyproject.toml", "README.md"}
    assert expected <= visible
    assert visible - expected == set(), f"unexpected top-level entries: {visible - expected}"


def test_dns_is_dnspython() -> None:
    import dns.message

    import dns

    assert dns.message.__file__ is not None
    assert "site-packages" in dns.message.__file__ or "dist-packages" in dns.message.__file__
    assert Path(dns.__file__ or "").parent != ROOT / "dns"
    # a query really builds: the name is not shadowed by the dns/ source root
    assert dns.message.make_query("atoll.test.", "A").question


@pytest.mark.parametrize(("root", "package"), sorted(PACKAGES.items()))
def test_every_package_is_in_the_wheel_and_importable(root: str, package: str) -> None:
    wheel = pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]  # type: ignore[index]
    assert f"{root}/{package}" in wheel
    module = importlib.import_module(package)
    assert Path(module.__file__ or "").resolve().is_relative_to(ROOT / root)


def test_dev_mode_dirs_cover_every_root() -> None:
    dirs = pyproject()["tool"]["hatch"]["build"]["dev-mode-dirs"]  # type: ignore[index]
    assert set(dirs) == set(SOURCE_ROOTS)


def test_no_stray_packages_in_source_roots() -> None:
    for root, package in PACKAGES.items():
        children = {
            p.name for p in (ROOT / root).iterdir() if p.is_dir() and (p / "__init__.py").exists()
        }
        assert children <= {package}, f"{root}/ holds packages the wheel misses: {children}"
    assert "atoll" in sys.modules or importlib.import_module("atoll")
