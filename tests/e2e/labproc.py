"""Run ``atoll up`` as a real process for an end-to-end test module."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.polling import wait_for

__all__ = ["reap", "running_lab"]


def reap(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill and wait for processes a test started itself (relaunched components)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@contextlib.contextmanager
def running_lab(
    state: Path, *up_args: str, within: float = 120
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    """Start ``atoll up --output json`` with ``up_args``; yield it and its manifest once
    the lab has converged; stop it with Ctrl-C (SIGINT) afterwards, as a user would."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atoll",
            "--state-dir",
            str(state),
            "up",
            "--output",
            "json",
            *up_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    manifest = state / "lab" / "manifest.json"
    try:
        wait_for("the lab manifest", lambda: manifest.exists() or proc.poll() is not None, within)
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            raise AssertionError(f"atoll up exited early: {err}")
        yield proc, json.loads(manifest.read_text())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
