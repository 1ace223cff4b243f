"""`atoll gateway compile` for real (mypyc and the C compiler): the compiled relays load in a
fresh process and move bytes; the same build is refused once a source no longer matches.

(The whole suite runs on the compiled relays in CI, which builds them first; the relay
tests run once more on the Python ones. This checks the build and the guard themselves.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atoll_gateway import native

#: in a fresh interpreter: which relays, from where, and a relay round trip through them
PROBE = """
import asyncio, json, socket
import atoll_gateway
from atoll_gateway import native, relay, tunnelrelay

async def round_trip() -> bytes:
    a, inner_a = socket.socketpair()
    inner_b, b = socket.socketpair()
    for s in (a, inner_a, inner_b, b):
        s.setblocking(False)
    run = asyncio.ensure_future(relay.CopyRelay(inner_a, inner_b).run())
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(a, b"relayed both ways")
    a.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := await loop.sock_recv(b, 1024):
        got += chunk
    b.close()
    await run
    a.close()
    return got

print(json.dumps({
    "relays": native.STATE.relays,
    "detail": native.STATE.detail,
    "files": [relay.__file__, tunnelrelay.__file__],
    "echo": asyncio.run(round_trip()).decode(),
}))
"""


def _probe(build: Path) -> dict[str, object]:
    env = {**os.environ, "ATOLL_NATIVE_DIR": str(build)}
    env.pop("ATOLL_NATIVE", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.timeout(300)
def test_compiled_relays_load_relay_and_are_refused_once_stale(tmp_path: Path) -> None:
    build = native.build(tmp_path / "native")
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["sources"] == native.source_hashes()

    fresh = _probe(build)
    assert fresh["relays"] == "native"
    files = fresh["files"]
    assert isinstance(files, list)
    assert all(str(f).startswith(str(build)) and str(f).endswith(".so") for f in files)
    assert fresh["echo"] == "relayed both ways"

    # a source edited after the build: its hash no longer matches
    manifest["sources"]["relay.py"] = "0" * 64
    (build / "manifest.json").write_text(json.dumps(manifest))
    stale = _probe(build)
    assert stale["relays"] == "python"
    assert "relay.py changed since the build" in str(stale["detail"])
    assert all(str(f).endswith(".py") for f in stale["files"])  # type: ignore[attr-defined]
    assert stale["echo"] == "relayed both ways"
