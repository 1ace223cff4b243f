"""Watching the control plane under test from outside: metrics, idleness, stalls.

Everything here reads the plane through its public surfaces (``/metrics``,
``/healthz``, its log file, /proc) or, for idleness, the SQLite store's
revision read directly from the file (read-only; WAL allows a concurrent
reader). Nothing here changes the plane.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ._fanout_drive import Deadline, percentile
from ._procs import BenchError, ServerProcess, http_get

__all__ = [
    "Progressor",
    "StallProbe",
    "idle_cpu",
    "metric_sums",
    "overload_signs",
    "profiling",
    "store_revision",
    "wait_quiet",
]


def metric_sums(url: str) -> dict[str, float]:
    """Sum of every sample of each metric family (labels ignored) from /metrics."""
    status, body = http_get(url)
    sums: dict[str, float] = {}
    if status != 200:
        return sums
    for line in body.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(" ")
        family = name.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            sums[family] = sums.get(family, 0.0) + float(rest.split()[0])
    return sums


def store_revision(db: Path) -> int | None:
    """The SQLite store's revision, read from the file (read-only; WAL allows it)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as c:
            row = c.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else int(row[0])


def wait_quiet(
    metrics_url: str,
    db: Path,
    plane: ServerProcess,
    deadline: Deadline,
    *,
    timeout: float,
    quiet: float = 2.0,
) -> float:
    """Wait until the plane stops changing things: the store revision and its
    write/report/push counters unchanged for ``quiet`` seconds (heartbeats do not
    count: lease renewals do not write revisions). Returns the seconds waited."""
    watched = (
        "atoll_reconcile_writes_total",
        "atoll_sync_reports_total",
        "atoll_sync_pushes_total",
    )
    started = time.monotonic()
    last: tuple[float | None, ...] | None = None
    since = started
    while time.monotonic() - started < timeout:
        deadline.remaining("waiting for the control plane to settle")
        plane.check_alive("settling")
        sums = metric_sums(metrics_url)
        state = (store_revision(db), *(sums.get(k, 0.0) for k in watched))
        now = time.monotonic()
        if state != last:
            last, since = state, now
        elif now - since >= quiet:
            return now - started
        time.sleep(0.25)
    print(
        f"bench_sync: warning: the control plane was still busy after {timeout:.0f} s",
        file=sys.stderr,
    )
    return time.monotonic() - started


def overload_signs(log_path: Path) -> dict[str, str]:
    """Counts of the plane's own log lines that mean it fell behind (0 = healthy)."""
    signs = {
        "cluster leases expired and re-granted (whole run)": '"cluster lease had expired',
        "leadership lost (whole run)": '"msg":"lost leadership"',
    }
    counts = dict.fromkeys(signs, 0)
    with contextlib.suppress(OSError), log_path.open(errors="replace") as log:
        for line in log:
            for label, needle in signs.items():
                if needle in line:
                    counts[label] += 1
    return {label: str(n) for label, n in counts.items()}


class StallProbe:
    """Polls ``/healthz`` (answered on the plane's event loop, no store access) from a
    thread: its latency is how long the loop was busy elsewhere (loop stalls)."""

    def __init__(self, url: str, interval: float = 0.2) -> None:
        self.url = url
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (monotonic start, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-probe", daemon=True)

    def __enter__(self) -> StallProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=35)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            http_get(self.url, timeout=30)
            self.samples.append((t0, time.monotonic() - t0))
            self._stop.wait(self.interval)

    def summary(self, since: float = 0.0, until: float = math.inf) -> str:
        window = [d for t, d in list(self.samples) if since <= t <= until]
        if not window:
            return "-"
        stalls = sum(1 for d in window if d >= 1.0)
        return (
            f"p50 {percentile(window, 50) * 1000:.0f} ms, max {max(window) * 1000:.0f} ms, "
            f"{stalls} probe(s) >= 1 s of {len(window)}"
        )


def idle_cpu(usage: Callable[[], float], seconds: float = 2.0) -> float:
    """Fraction of a core a server uses over ``seconds`` while nothing changes."""
    t0, c0 = time.monotonic(), usage()
    time.sleep(seconds)
    return (usage() - c0) / (time.monotonic() - t0)


@contextlib.contextmanager
def profiling(path: Path | None, pid: int) -> Iterator[None]:
    """Sample ``pid`` with py-spy (collapsed stacks into ``path``) while the block runs."""
    if path is None:
        yield
        return
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise BenchError("--profile needs py-spy (pip install py-spy)")
    argv = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "200",
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(path),
    ]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy.returncode not in (0, -signal.SIGINT) and not path.exists():
            print(
                f"bench_sync: py-spy failed: {err.decode(errors='replace')[-300:]}", file=sys.stderr
            )


class Progressor:
    """One progress line on stderr, rewritten in place on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.tty else 5.0):
            return
        self.last = now
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
