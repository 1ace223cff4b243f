"""Compiled relays: the data path's modules built with mypyc, used only while they match
the source.

A terminated connection or a tunnel stream spends its user-space time in the
readiness dispatch (:mod:`atoll_gateway.poller`) and two small pump loops
(:mod:`atoll_gateway.relay`, :mod:`atoll_gateway.tunnelrelay`), where
CPython's per-call cost dominates. The same three modules compiled with mypyc
(C, through the system's C compiler) serve ~18% more keep-alive requests per
CPU-second through termination: 0.83x HAProxy against 0.70x in the same hour
(``tests/bench/bench_gateway.py``). They are not built by ``pip install``,
which keeps a fresh install free of a compiler:

* ``atoll gateway compile`` (:func:`build`) compiles them into
  :func:`native_dir` and writes a manifest: the interpreter they were built
  for, and the SHA-256 of each source file;
* importing :mod:`atoll_gateway` calls :func:`use_compiled`, which puts the
  compiled package directory ahead of the sources in the package's search
  path **only if** the manifest matches this interpreter and the current
  sources byte for byte. A source edited after the build, another Python, or
  ``ATOLL_NATIVE=0`` means the Python modules are used, and :data:`STATE`
  says why (the gateway logs it at start and shows it in its status).

There is one source of truth, the Python modules: the compiled ones are
built from them and are never used stale. ``ATOLL_NATIVE_DIR`` moves the
build directory (tests build into a temporary one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, MutableSequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MODULES",
    "STATE",
    "BuildError",
    "NativeState",
    "build",
    "freshness",
    "native_dir",
    "source_hashes",
    "use_compiled",
]

#: the modules compiled, in this package
MODULES = ("poller", "relay", "tunnelrelay")
#: the shared library of the group: ``atoll_gateway/relays__mypyc.<abi>.so``
_GROUP = "atoll_gateway.relays"
_MANIFEST = "manifest.json"
_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class NativeState:
    """Which relays this process runs: ``native`` or ``python``, and why."""

    relays: str
    detail: str


#: set once, when :mod:`atoll_gateway` is imported
STATE = NativeState("python", "not checked")


def native_dir() -> Path:
    """Where :func:`build` puts the compiled modules (``ATOLL_NATIVE_DIR`` overrides)."""
    override = os.environ.get("ATOLL_NATIVE_DIR")
    if override:
        return Path(override)
    return _PACKAGE_DIR.parent / ".atoll-native"


def _abi() -> str:
    """The interpreter a build is for: the extension suffix names version, ABI and platform."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return f"{sys.implementation.cache_tag}{suffix}"


def source_hashes(package_dir: Path = _PACKAGE_DIR) -> dict[str, str]:
    """SHA-256 of each compiled module's source."""
    return {
        f"{name}.py": hashlib.sha256((package_dir / f"{name}.py").read_bytes()).hexdigest()
        for name in MODULES
    }


def freshness(manifest: object, sources: Mapping[str, str], abi: str) -> str | None:
    """Why a build described by ``manifest`` must not be used, or None when it may
    (pure: the manifest as parsed from JSON, the current sources' hashes, this ABI)."""
    if not isinstance(manifest, dict):
        return "the build's manifest is unreadable"
    if manifest.get("abi") != abi:
        return f"built for {manifest.get('abi')!r}, this interpreter is {abi!r}"
    built = manifest.get("sources")
    if not isinstance(built, dict):
        return "the build's manifest lists no sources"
    changed = sorted(name for name, digest in sources.items() if built.get(name) != digest)
    if changed:
        return f"{', '.join(changed)} changed since the build"
    return None


def use_compiled(package_path: MutableSequence[str]) -> NativeState:
    """Put the compiled modules ahead of the sources in ``package_path`` (the
    package's ``__path__``) when they match; the resulting state is :data:`STATE`."""
    global STATE
    STATE = _decide(package_path)
    return STATE


def _decide(package_path: MutableSequence[str]) -> NativeState:
    rebuild = "run `atoll gateway compile` to build them"
    if os.environ.get("ATOLL_NATIVE", "1") == "0":
        return NativeState("python", "compiled relays turned off (ATOLL_NATIVE=0)")
    root = native_dir()
    try:
        manifest = json.loads((root / _MANIFEST).read_text())
    except FileNotFoundError:
        return NativeState("python", f"no compiled relays in {root}: {rebuild}")
    except (OSError, ValueError) as exc:
        return NativeState("python", f"compiled relays unreadable ({exc}): {rebuild}")
    why = freshness(manifest, source_hashes(), _abi()) or _missing(root / "atoll_gateway")
    if why is not None:
        return NativeState("python", f"compiled relays not used: {why}; {rebuild}")
    compiled = str(root / "atoll_gateway")
    if compiled not in package_path:
        package_path.insert(0, compiled)
    return NativeState("native", f"compiled relays from {root}")


def _missing(package: Path) -> str | None:
    """A module of the build that is not there (the manifest alone proves nothing)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for name in (*MODULES, _GROUP.rsplit(".", 1)[1] + "__mypyc"):
        if not (package / f"{name}{suffix}").is_file():
            return f"{name}{suffix} is missing from the build"
    return None


_SETUP = """
from setuptools import setup
from mypyc.build import mypycify
setup(
    name="atoll-native",
    ext_modules=mypycify({paths!r}, group_name={group!r}, target_dir={cdir!r}),
    script_args=["build_ext", "--build-lib", {lib!r}, "--build-temp", {tmp!r}],
)
"""


class BuildError(RuntimeError):
    """The compile failed (its output is in the message)."""


def build(out: Path | None = None) -> Path:
    """Compile :data:`MODULES` with mypyc into ``out`` (default :func:`native_dir`),
    replacing what was there; returns the directory. Needs mypy (mypyc), setuptools
    and a C compiler with this Python's headers."""
    out = out or native_dir()
    sources = source_hashes()
    with tempfile.TemporaryDirectory(prefix="atoll-native-") as work:
        lib, tmp, cdir = (str(Path(work) / d) for d in ("lib", "tmp", "c"))
        paths = [f"atoll_gateway/{name}.py" for name in MODULES]
        script = _SETUP.format(paths=paths, group=_GROUP, cdir=cdir, lib=lib, tmp=tmp)
        run = subprocess.run(
            [sys.executable, "-c", script],
            cwd=_PACKAGE_DIR.parent,
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            raise BuildError((run.stdout + run.stderr)[-3000:])
        if source_hashes() != sources:
            raise BuildError("the sources changed during the build; run it again")
        staged = Path(work) / "out"
        shutil.copytree(Path(lib) / "atoll_gateway", staged / "atoll_gateway")
        manifest = {"abi": _abi(), "sources": sources, "modules": list(MODULES)}
        (staged / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, out)
    return out
