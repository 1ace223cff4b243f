"""Regenerate the sync protocol's Python code and typed stubs.

Run ``python -m atoll.sync.generate`` after editing ``v1/sync.proto``; the
generated ``sync_pb2*.py`` and ``.pyi`` files are checked in so that users need
neither grpcio-tools nor protoc. Imports in the generated code are rooted at
the ``federation/`` source root (``atoll.sync.v1``), so no fix-ups are needed.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    from grpc_tools import protoc  # dev dependency

    root = Path(__file__).resolve().parents[2]  # federation/
    proto = "atoll/sync/v1/sync.proto"
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{root}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={root}",
        f"--grpc_python_out={root}",
        f"--mypy_out={root}",
        f"--mypy_grpc_out={root}",
        proto,
    ]
    code = int(protoc.main(args))
    if code:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
