"""Regenerate workload_pb2*.py and their mypy stubs from workload.proto.

Run from the repository root: ``.venv/bin/python trust/atoll_trust/workload_api/generate.py``.
Needs grpcio-tools and mypy-protobuf (dev extras). The proto is compiled with
``trust/`` as include root so the modules import each other as
``atoll_trust.workload_api.workload_pb2``; the descriptor's file name is
``atoll_trust/workload_api/workload.proto``.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc


def main() -> int:
    here = Path(__file__).resolve().parent
    root = here.parent.parent  # .../trust
    proto = here / "workload.proto"
    include = resources.files("grpc_tools") / "_proto"
    plugin_dir = Path(sys.executable).parent
    mypy_plugin = shutil.which("protoc-gen-mypy", path=str(plugin_dir)) or shutil.which(
        "protoc-gen-mypy"
    )
    mypy_grpc_plugin = shutil.which("protoc-gen-mypy_grpc", path=str(plugin_dir)) or shutil.which(
        "protoc-gen-mypy_grpc"
    )
    if mypy_plugin is None or mypy_grpc_plugin is None:
        print("mypy-protobuf plugins not found; pip install mypy-protobuf", file=sys.stderr)
        return 1
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={root}",
        f"--grpc_python_out={root}",
        f"--plugin=protoc-gen-mypy={mypy_plugin}",
        f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
        f"--mypy_out={root}",
        f"--mypy_grpc_out={root}",
        str(proto.relative_to(root)),
    ]
    return int(protoc.main(args))


if __name__ == "__main__":
    raise SystemExit(main())
