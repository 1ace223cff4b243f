"""Regenerate (or check) every protobuf module Atoll checks in.

``python -m atoll.protogen`` rewrites them; ``python -m atoll.protogen --check``
regenerates into a temporary directory and fails if any checked-in file
differs (CI runs it, so a .proto edited without regenerating cannot land).

Three sets, each compiled with its *source root* as include path, so the
generated modules import each other by their package path and need no
fix-ups:

* the sync protocol and enrollment — ``federation/atoll/sync/v1/sync.proto`` and
  ``enrollment.proto`` (with gRPC stubs);
* the etcd v3 API subset — ``federation/atoll/store/etcd/api/*.proto``
  (messages only: :mod:`atoll.store.etcd.rpc` names the methods itself);
* the SPIFFE Workload API — ``trust/atoll_trust/workload_api/workload.proto``
  (with gRPC stubs).

Every set also gets typed stubs from mypy-protobuf, so ``mypy --strict``
checks field access. The generated ``*_pb2.py`` refuse to load on a protobuf
runtime older than the protoc that wrote them, which is why pyproject.toml
pins ``protobuf>=`` that version. Needs the dev extras (grpcio-tools,
mypy-protobuf).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PROTO_SETS", "ProtoSet", "main"]

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class ProtoSet:
    name: str
    #: source root (include path and output root), relative to the repository
    root: str
    #: .proto files relative to ``root``
    protos: tuple[str, ...]
    #: also generate gRPC service stubs
    services: bool

    def outputs(self) -> list[str]:
        grpc = ["_pb2_grpc.py", "_pb2_grpc.pyi"] if self.services else []
        exts = ["_pb2.py", "_pb2.pyi", *grpc]
        return [p.removesuffix(".proto") + ext for p in self.protos for ext in exts]


PROTO_SETS = (
    ProtoSet(
        "sync",
        "federation",
        ("atoll/sync/v1/sync.proto", "atoll/sync/v1/enrollment.proto"),
        services=True,
    ),
    ProtoSet(
        "etcd",
        "federation",
        ("atoll/store/etcd/api/mvcc.proto", "atoll/store/etcd/api/etcdserver.proto"),
        services=False,
    ),
    ProtoSet(
        "workload-api",
        "trust",
        ("atoll_trust/workload_api/workload.proto",),
        services=True,
    ),
)


def _plugin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: pip install mypy-protobuf (dev extras)")
    return found


def generate(ps: ProtoSet, out_root: Path) -> None:
    from grpc_tools import protoc  # dev dependency

    root = REPO / ps.root
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{root}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--python_out={out_root}",
        f"--mypy_out={out_root}",
    ]
    if ps.services:
        args += [
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--grpc_python_out={out_root}",
            f"--mypy_grpc_out={out_root}",
        ]
    for proto in ps.protos:
        (out_root / proto).parent.mkdir(parents=True, exist_ok=True)
    code = int(protoc.main([*args, *ps.protos]))
    if code:
        raise SystemExit(f"protoc failed for {ps.name} (exit {code})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate Atoll's protobuf modules.")
    parser.add_argument("--check", action="store_true", help="fail if checked-in files are stale")
    args = parser.parse_args(argv)
    stale: list[str] = []
    for ps in PROTO_SETS:
        if not args.check:
            generate(ps, REPO / ps.root)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            generate(ps, Path(tmp))
            for out in ps.outputs():
                if not filecmp.cmp(Path(tmp) / out, REPO / ps.root / out, shallow=False):
                    stale.append(f"{ps.root}/{out}")
    if stale:
        print("stale generated files (run python -m atoll.protogen):", *stale, sep="\n  ")
        return 1
    print("protobuf modules " + ("are up to date" if args.check else "regenerated"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
