"""SO_REUSEPORT worker processes: more cores for the packet path.

CPython answers packets on one core per process. With ``DnsConfig.workers =
N > 1`` the parent :class:`~atoll_dns.server.DnsServer` binds its sockets with
SO_REUSEPORT and starts ``N - 1`` children (``spawn`` start method: a clean
interpreter, no inherited event loop) that each run their own
:class:`DnsServer` — uvloop when installed — on the same address; the kernel
hashes clients across the sockets.

The parent stays the only writer of state: it persists snapshots and sends each
applied snapshot (JSON) to every child over a pipe; a child compiles and swaps
it exactly like the parent and confirms, and the parent's ``apply`` returns
once every child has confirmed (or a timeout has been logged). Children report
their metrics every second over the same pipe, and exit when told to or when
the pipe closes (parent gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from atoll_dns.config import DnsConfig
from atoll_dns.metrics import DnsMetrics
from atoll_dns.snapshot import ZoneSnapshot

__all__ = ["WorkerPool"]

log = logging.getLogger("atoll.dns.workers")
REPORT_EVERY = 1.0


def _child_main(config_json: str, port: int, conn: Connection, snapshot_json: str | None) -> None:
    """Entry point of a worker process."""
    from atoll_dns.server import DnsServer

    config = DnsConfig.model_validate_json(config_json).model_copy(
        update={"listen_port": port, "workers": 1}
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = DnsServer(config, registry=None, reuse_port=True)
        initial = ZoneSnapshot.model_validate_json(snapshot_json) if snapshot_json else None
        await server.start(initial)
        done = asyncio.Event()
        inbox: asyncio.Queue[str] = asyncio.Queue()

        def readable() -> None:
            try:
                while conn.poll():
                    kind, body = conn.recv()
                    if kind == "stop":
                        done.set()
                    elif kind == "snapshot":
                        inbox.put_nowait(body)
            except (EOFError, OSError):
                done.set()

        loop.add_reader(conn.fileno(), readable)
        conn.send(("ready", None))

        async def report() -> None:
            while True:
                await asyncio.sleep(REPORT_EVERY)
                with contextlib.suppress(OSError, ValueError):
                    conn.send(("stats", server.metrics.state()))

        async def applier() -> None:
            while True:
                body = await inbox.get()
                try:
                    snapshot = ZoneSnapshot.model_validate_json(body)
                    await server.apply(snapshot)
                except Exception as exc:
                    log.exception("worker could not apply snapshot")
                    conn.send(("failed", str(exc)))
                else:
                    conn.send(("applied", snapshot.digest))

        from atoll.aio import cancel_and_wait, spawn

        tasks = [
            spawn(report(), name="dns-worker-report"),
            spawn(applier(), name="dns-worker-apply"),
        ]
        try:
            await done.wait()
        finally:
            loop.remove_reader(conn.fileno())
            await cancel_and_wait(*tasks)
            await server.stop()

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())


class WorkerPool:
    """The parent's handle on its worker processes."""

    def __init__(self, config: DnsConfig, port: int, metrics: DnsMetrics) -> None:
        self.config = config
        self.port = port
        self.metrics = metrics
        self._procs: list[tuple[BaseProcess, Connection]] = []  # process, parent end
        #: per worker: the future of the snapshot it is applying
        self._pending: dict[int, asyncio.Future[None]] = {}

    async def start(self, snapshot: ZoneSnapshot | None, *, start_within: float = 60.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        body = snapshot.model_dump_json() if snapshot is not None else None
        loop = asyncio.get_running_loop()
        for wid in range(1, self.config.workers):
            parent, child = ctx.Pipe(duplex=True)
            proc: BaseProcess = ctx.Process(
                target=_child_main,
                args=(self.config.model_dump_json(), self.port, child, body),
                name=f"atoll-dns-worker-{wid}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._procs.append((proc, parent))
        deadline = time.monotonic() + start_within
        for wid, (started, conn) in enumerate(self._procs, start=1):
            left = max(0.1, deadline - time.monotonic())
            ready = await asyncio.to_thread(conn.poll, left)
            if not ready:
                raise RuntimeError(f"dns worker {wid} did not start (exit code {started.exitcode})")
            conn.recv()
            loop.add_reader(conn.fileno(), self._readable, wid, conn)
        log.info("dns workers started", extra={"workers": len(self._procs)})

    def _readable(self, wid: int, conn: Connection) -> None:
        try:
            while conn.poll():
                kind, body = conn.recv()
                if kind == "stats":
                    self.metrics.workers[wid] = body
                elif kind in ("applied", "failed"):
                    pending = self._pending.pop(wid, None)
                    if pending is not None and not pending.done():
                        if kind == "applied":
                            pending.set_result(None)
                        else:
                            pending.set_exception(RuntimeError(f"worker {wid}: {body}"))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            log.warning("dns worker pipe closed", extra={"worker": wid})

    async def broadcast(self, snapshot: ZoneSnapshot, *, ack_within: float = 30.0) -> None:
        """Send ``snapshot`` to every worker and wait until each has swapped it in."""
        body = snapshot.model_dump_json()
        loop = asyncio.get_running_loop()
        waits = []
        for wid, (_, conn) in enumerate(self._procs, start=1):
            fut: asyncio.Future[None] = loop.create_future()
            self._pending[wid] = fut
            try:
                conn.send(("snapshot", body))
            except OSError:
                self._pending.pop(wid, None)
                log.warning("dns worker unreachable", extra={"worker": wid})
                continue
            waits.append(fut)
        try:
            async with asyncio.timeout(ack_within):
                results = await asyncio.gather(*waits, return_exceptions=True)
        except TimeoutError:
            log.warning(
                "dns workers did not confirm the snapshot in time",
                extra={"serial": snapshot.serial},
            )
            return
        for result in results:
            if isinstance(result, BaseException):
                log.warning("dns worker rejected the snapshot", extra={"error": str(result)})

    async def stop(self, *, join_within: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        for _, conn in self._procs:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(conn.fileno())
            with contextlib.suppress(OSError):
                conn.send(("stop", None))
        for proc, conn in self._procs:
            await asyncio.to_thread(proc.join, join_within)
            if proc.is_alive():
                proc.terminate()
                await asyncio.to_thread(proc.join, join_within)
            conn.close()
        self._procs = []
