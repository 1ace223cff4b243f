"""Process plumbing for benchmarks: free ports, /proc readings, a server subprocess.

Benchmarks compare a server's memory and CPU with a peer's, so the server must
be its own process: :class:`ServerProcess` starts one (in its own session, so
a Ctrl-C in the terminal reaches only the benchmark, which then stops it in
order), keeps its output in a log file for error messages, and reads its
``VmRSS``/``VmHWM`` and CPU time from ``/proc`` (Linux only, like the
benchmarks). On Linux each child also gets ``PR_SET_PDEATHSIG`` so it dies
with the benchmark even if the benchmark is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = [
    "BenchError",
    "ProcUsage",
    "ServerProcess",
    "die_with_parent",
    "free_port",
    "http_get",
    "proc_usage",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BenchError(RuntimeError):
    """A benchmark step failed; the message is one line an operator can act on."""


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so every ``finally`` stops what it
    started (SIGINT explicitly: a shell starting us in the background ignores it)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def free_port(host: str) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(frozen=True, slots=True)
class ProcUsage:
    """Memory (bytes) and CPU time (seconds, user + system) of one process."""

    rss: int
    peak_rss: int
    cpu_seconds: float


def proc_usage(pid: int) -> ProcUsage:
    """Read VmRSS, VmHWM and utime+stime of ``pid`` from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid} (process gone?): {exc}") from exc
    fields: dict[str, int] = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(rest.split()[0]) * 1024  # kB
    # fields after the ")" closing the command name: state is [0], utime [11], stime [12]
    after = stat.rpartition(")")[2].split()
    cpu = (int(after[11]) + int(after[12])) / _CLK_TCK
    return ProcUsage(rss=fields.get("VmRSS", 0), peak_rss=fields.get("VmHWM", 0), cpu_seconds=cpu)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


class ServerProcess:
    """One server subprocess with its output in ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = tuple(argv)
        self.log_path = log_path
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchError(f"{self.name} is not started")
        return self._proc.pid

    def start(self) -> ServerProcess:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return self

    def exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def check_alive(self, doing: str) -> None:
        code = self.exit_code()
        if code is not None:
            raise BenchError(
                f"{self.name} exited with status {code} while {doing}; log tail: {self.log_tail()}"
            )

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive(f"waiting for {what}")
            if ready():
                return
            time.sleep(0.1)
        raise BenchError(
            f"{self.name}: {what} not reached within {timeout:.0f} s; log tail: {self.log_tail()}"
        )

    def usage(self) -> ProcUsage:
        return proc_usage(self.pid)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line[:300] for line in text[-lines:]) or "(empty log)"

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL (idempotent)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
