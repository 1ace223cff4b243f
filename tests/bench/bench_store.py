"""Store benchmark: the embedded SqliteStore against a real single-member etcd.

Run from the repository root::

    python -m tests.bench.bench_store            # ~30 s
    python -m tests.bench.bench_store --phase-seconds 2 --concurrency 100

Both stores are measured in the same run on the same machine, through the
same Store protocol, and every figure is printed next to its ratio
SQLite / etcd (for latencies, lower is better, so a ratio below 1 favours
SQLite). Phases, each ``--phase-seconds`` long per store:

* sequential puts/s — one coroutine, one put at a time (each a durable commit:
  fsync for SQLite with ``synchronous=FULL``, a raft round for etcd);
* concurrent puts/s — ``--concurrency`` coroutines putting at once;
* put→watch latency p50/p99 — time from just before ``put`` to the moment a
  watcher on the prefix receives the event, one put at a time.

etcd is started by the script (``atoll.testing.etcd.EtcdServer``, data in a
temp dir on the same disk as SQLite's file); the etcd binary must be on PATH.
This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from atoll.aio import cancel_and_wait, spawn
from atoll.store.base import Store
from atoll.store.etcd import EtcdStore
from atoll.store.sqlite import SqliteStore
from atoll.store.sqlite_engine import Synchronous
from atoll.testing.etcd import EtcdServer, etcd_binary


@dataclass(frozen=True)
class Figures:
    sequential: float
    concurrent: float
    p50_ms: float
    p99_ms: float


async def _for(seconds: float, op: Callable[[int], Awaitable[object]]) -> int:
    done = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        await op(done)
        done += 1
    return done


async def measure(store: Store, *, seconds: float, concurrency: int, value: bytes) -> Figures:
    prefix = f"bench/{time.monotonic_ns()}/"

    start = time.perf_counter()
    count = await _for(seconds, lambda i: store.put(f"{prefix}s/{i % 1000:04d}", value))
    sequential = count / (time.perf_counter() - start)

    def writer(w: int) -> Callable[[int], Awaitable[object]]:
        return lambda i: store.put(f"{prefix}c/{w}/{i % 100:03d}", value)

    start = time.perf_counter()
    counts = await asyncio.gather(*(_for(seconds, writer(w)) for w in range(concurrency)))
    concurrent = sum(counts) / (time.perf_counter() - start)

    sent: dict[str, float] = {}  # key -> time just before its put
    latencies: list[float] = []
    arrived = asyncio.Event()

    async def watch(start_revision: int) -> None:
        async for batch in store.watch(prefix + "w/", start_revision=start_revision):
            now = time.perf_counter()
            for event in batch.events:
                if event.key in sent:
                    latencies.append(now - sent.pop(event.key))
            arrived.set()

    watcher = spawn(watch(await store.revision() + 1), name="bench-watcher")
    await asyncio.sleep(0.2)  # let the watch get established
    end = time.perf_counter() + seconds
    i = 0
    try:
        while time.perf_counter() < end:
            key = f"{prefix}w/{i:07d}"
            arrived.clear()
            sent[key] = time.perf_counter()
            await store.put(key, value)
            async with asyncio.timeout(5):
                while key in sent:  # the event may even arrive before put returns
                    await arrived.wait()
                    arrived.clear()
            i += 1
    finally:
        await cancel_and_wait(watcher)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    await store.delete_prefix(prefix)
    return Figures(sequential, concurrent, statistics.median(latencies) * 1e3, p99 * 1e3)


def table(sqlite: Figures, etcd: Figures, concurrency: int, sync: str) -> str:
    rows = [
        ("sequential puts/s", sqlite.sequential, etcd.sequential, "{:,.0f}"),
        (f"concurrent puts/s ({concurrency})", sqlite.concurrent, etcd.concurrent, "{:,.0f}"),
        ("put->watch p50 ms", sqlite.p50_ms, etcd.p50_ms, "{:.2f}"),
        ("put->watch p99 ms", sqlite.p99_ms, etcd.p99_ms, "{:.2f}"),
    ]
    lines = [
        f"{'metric':<26}{'sqlite (' + sync + ')':>16}{'etcd 1 node':>14}{'sqlite/etcd':>14}",
        "-" * 70,
    ]
    for name, a, b, fmt in rows:
        lines.append(f"{name:<26}{fmt.format(a):>16}{fmt.format(b):>14}{a / b:>13.2f}x")
    return "\n".join(lines)


async def run(args: argparse.Namespace, server: EtcdServer, workdir: Path) -> None:
    value = b"v" * args.value_size
    sqlite = SqliteStore(workdir / "bench.db", synchronous=args.sqlite_sync)
    try:
        sqlite_figures = await measure(
            sqlite, seconds=args.phase_seconds, concurrency=args.concurrency, value=value
        )
    finally:
        await sqlite.close()
    etcd = EtcdStore(server.endpoints)
    try:
        etcd_figures = await measure(
            etcd, seconds=args.phase_seconds, concurrency=args.concurrency, value=value
        )
    finally:
        await etcd.close()
    print(table(sqlite_figures, etcd_figures, args.concurrency, args.sqlite_sync))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_store",
        description="SqliteStore vs a real single-node etcd: puts/s and put->watch latency.",
    )
    parser.add_argument("--phase-seconds", type=float, default=4.0, help="per phase per store")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="coroutines in the concurrent phase"
    )
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value")
    parser.add_argument(
        "--sqlite-sync",
        choices=["FULL", "NORMAL", "OFF"],
        default="FULL",
        help="SQLite synchronous setting (FULL = fsync per commit, the default)",
    )
    args = parser.parse_args(argv)
    if etcd_binary() is None:
        print("etcd binary not found (apt-get install etcd-server)", file=sys.stderr)
        return 2
    sync: Synchronous = args.sqlite_sync
    args.sqlite_sync = sync
    with tempfile.TemporaryDirectory(prefix="atoll-bench-") as tmp:
        workdir = Path(tmp)
        with EtcdServer(host="127.0.10.5", base_dir=workdir / "etcd") as server:
            started = time.perf_counter()
            asyncio.run(run(args, server, workdir))
            print(f"({time.perf_counter() - started:.1f} s, {args.value_size}-byte values)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
