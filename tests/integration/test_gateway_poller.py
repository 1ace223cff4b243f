"""The connection poller on real sockets, under asyncio's own loop and under uvloop.

:class:`~atoll_gateway.poller.Poller` is the one epoll set through which every
relay and handshake waits, so its contract is checked on both loops the
gateway runs on: level-triggered readiness, interest changes, a watcher
dropped mid-batch, hang-ups that must not spin, one-off waits that clean up
after cancellation, and fd numbers recycled by the kernel. The churn test
pushes 2,000 short TCP connections through each relay on uvloop and checks
that no file descriptor and no poller entry is left behind.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from atoll.aio import cancel_and_wait, spawn
from atoll_gateway import relay
from atoll_gateway.poller import Poller, poller
from atoll_gateway.relay import CopyRelay, SpliceRelay
from tests.gatewaykit import LOOPS, Run, close_with_reset, runner_of, tcp_pair

HOST = "127.0.94.1"


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Run:
    """Run a coroutine to completion on a fresh loop of the parametrized kind."""
    return runner_of(request.param)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


class Counter:
    """A watcher that counts its callbacks and runs optional hooks."""

    def __init__(
        self,
        on_readable: Callable[[], None] | None = None,
        on_writable: Callable[[], None] | None = None,
    ) -> None:
        self.reads = 0
        self.writes = 0
        self.on_readable = on_readable
        self.on_writable = on_writable
        self.crashes: list[Exception] = []

    def readable(self) -> None:
        self.reads += 1
        if self.on_readable is not None:
            self.on_readable()

    def writable(self) -> None:
        self.writes += 1
        if self.on_writable is not None:
            self.on_writable()

    def crashed(self, exc: Exception) -> None:
        self.crashes.append(exc)


async def spin(times: int = 20) -> None:
    """Let the loop run several rounds (each round polls the epoll set once at most)."""
    for _ in range(times):
        await asyncio.sleep(0)
    await asyncio.sleep(0.02)


async def until(what: str, check: Callable[[], bool], rounds: int = 2000) -> None:
    for _ in range(rounds):
        if check():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


def forget(p: Poller, fd: int) -> None:
    p.watch(fd, None, read=False, write=False)


# -- readiness and interest ------------------------------------------------------------


def test_readable_is_level_triggered(run: Run, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair

    async def main() -> None:
        p = poller()
        w = Counter()
        p.watch(a.fileno(), w, read=True, write=False)
        await spin()
        assert (w.reads, w.writes) == (0, 0)  # nothing to read yet
        b.send(b"x")
        # not consumed: reported again and again, as the loop's add_reader would
        await until("three readable reports", lambda: w.reads >= 3)
        assert w.writes == 0
        assert a.recv(10) == b"x"
        await spin(3)
        drained = w.reads
        await spin()
        assert w.reads == drained  # nothing left to read: no more reports
        forget(p, a.fileno())

    run(main())


def test_a_raising_callback_ends_only_its_own_fd(
    run: Run, pair: tuple[socket.socket, socket.socket]
) -> None:
    """A bug in one connection's callback: that watcher is told and forgotten, the rest go on."""
    a, b = pair
    c, d = socket.socketpair()
    c.setblocking(False)

    def boom() -> None:
        raise RuntimeError("bug")

    async def main() -> None:
        p = poller()
        bad, good = Counter(on_readable=boom), Counter()
        p.watch(a.fileno(), bad, read=True, write=False)
        p.watch(c.fileno(), good, read=True, write=False)
        b.send(b"x")
        d.send(b"y")
        await until("the healthy watcher is served", lambda: good.reads >= 2)
        assert [type(e) for e in bad.crashes] == [RuntimeError]
        assert bad.reads == 1  # forgotten after the crash: no spinning on a readable fd
        assert len(p) == 1
        forget(p, c.fileno())

    try:
        run(main())
    finally:
        c.close()
        d.close()


def test_writable_is_level_triggered(run: Run, pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair

    async def main() -> None:
        p = poller()
        w = Counter()
        p.watch(a.fileno(), w, read=False, write=True)
        await until("three writable reports", lambda: w.writes >= 3)
        assert w.reads == 0
        forget(p, a.fileno())

    run(main())


def test_interest_changes_from_read_to_write_to_none(
    run: Run, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair

    async def main() -> None:
        p = poller()
        w = Counter()
        fd = a.fileno()
        b.send(b"pending")  # ``a`` is readable (and writable) throughout
        p.watch(fd, w, read=True, write=False)
        await until("a readable report", lambda: w.reads > 0)
        assert w.writes == 0
        p.watch(fd, w, read=False, write=True)
        reads = w.reads
        await until("a writable report", lambda: w.writes > 0)
        await spin()
        assert w.reads == reads  # read interest is gone although data waits
        p.watch(fd, w, read=False, write=False)  # no interest left: forgotten
        assert len(p) == 0
        seen = (w.reads, w.writes)
        await spin()
        assert (w.reads, w.writes) == seen

    run(main())


def test_watch_none_forgets_the_fd(run: Run, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair

    async def main() -> None:
        p = poller()
        w = Counter()
        p.watch(a.fileno(), w, read=True, write=True)
        p.watch(b.fileno(), Counter(), read=False, write=True)
        assert len(p) == 2
        await until("a report", lambda: w.writes > 0)
        p.watch(a.fileno(), None, read=True, write=True)
        assert len(p) == 1
        seen = (w.reads, w.writes)
        b.send(b"data")
        await spin()
        assert (w.reads, w.writes) == seen
        # forgetting twice, or an fd never watched, is a no-op
        forget(p, a.fileno())
        assert len(p) == 1
        forget(p, b.fileno())
        assert len(p) == 0

    run(main())


def test_a_watcher_dropped_earlier_in_the_same_batch_is_not_called(run: Run) -> None:
    (a1, b1), (a2, b2) = socket.socketpair(), socket.socketpair()

    async def main() -> None:
        p = poller()
        calls: list[str] = []

        def drop_both(name: str) -> None:
            calls.append(name)
            forget(p, a1.fileno())
            forget(p, a2.fileno())

        first = Counter(on_readable=lambda: drop_both("first"))
        second = Counter(on_readable=lambda: drop_both("second"))
        p.watch(a1.fileno(), first, read=True, write=False)
        p.watch(a2.fileno(), second, read=True, write=False)
        # both ready before the loop polls: one batch holds both events, and whichever
        # watcher runs first drops the other
        b1.send(b"1")
        b2.send(b"2")
        await until("a report", lambda: bool(calls))
        await spin()
        assert calls in (["first"], ["second"])
        assert len(p) == 0

    try:
        run(main())
    finally:
        for s in (a1, b1, a2, b2):
            s.close()


def test_a_hang_up_is_reported_and_does_not_spin_once_interest_is_dropped(
    run: Run, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair

    async def main() -> None:
        p = poller()
        eofs: list[bytes] = []

        def on_readable() -> None:
            eofs.append(a.recv(10))  # b"": end of stream
            forget(p, a.fileno())  # what a pump does at EOF

        w = Counter(on_readable=on_readable)
        p.watch(a.fileno(), w, read=True, write=False)
        b.close()  # the peer is gone: EPOLLIN | EPOLLHUP, forever
        await until("the hang-up", lambda: w.reads > 0)
        await spin(200)
        assert (w.reads, w.writes, eofs) == (1, 0, [b""])
        assert len(p) == 0

    run(main())


def test_a_hang_up_is_reported_as_readable_and_writable(
    run: Run, pair: tuple[socket.socket, socket.socket]
) -> None:
    """Errors and hang-ups reach both callbacks (the next read or write tells what
    happened), even for read-only interest; dropping interest in ``writable`` stops it."""
    a, b = pair

    async def main() -> None:
        p = poller()
        w = Counter(on_writable=lambda: forget(p, a.fileno()))
        p.watch(a.fileno(), w, read=True, write=False)
        b.close()
        await until("the hang-up", lambda: w.writes > 0)
        await spin(200)
        assert (w.reads, w.writes) == (1, 1)

    run(main())


# -- one-off waits ----------------------------------------------------------------------


def test_wait_returns_when_data_arrives_and_unregisters(
    run: Run, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair

    async def main() -> None:
        p = poller()
        waiting = spawn(p.wait(a.fileno(), write=False), name="wait-readable")
        await spin(3)
        assert not waiting.done()
        assert len(p) == 1
        b.send(b"x")
        async with asyncio.timeout(5):
            await waiting
        assert len(p) == 0
        # writable right away (an empty send buffer)
        async with asyncio.timeout(5):
            await p.wait(a.fileno(), write=True)
        assert len(p) == 0

    run(main())


def test_a_cancelled_wait_unregisters(run: Run, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair

    async def main() -> None:
        p = poller()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await p.wait(a.fileno(), write=False)
        assert len(p) == 0
        task = spawn(p.wait(a.fileno(), write=False), name="wait-cancelled")
        await until("the wait registered", lambda: len(p) == 1)
        await cancel_and_wait(task)
        assert task.cancelled()
        assert len(p) == 0
        # the fd can be watched again afterwards
        w = Counter()
        p.watch(a.fileno(), w, read=True, write=False)
        b.send(b"x")
        await until("a report", lambda: w.reads > 0)
        forget(p, a.fileno())

    run(main())


# -- fd recycling -----------------------------------------------------------------------


def test_a_recycled_fd_number_gets_the_new_sockets_events_only(run: Run) -> None:
    async def main() -> None:
        p = poller()
        old_a, old_b = socket.socketpair()
        old = Counter()
        fd = old_a.fileno()
        p.watch(fd, old, read=True, write=False)
        old_b.send(b"stale")  # ready, but the loop has not polled yet
        forget(p, fd)  # the rule: forget before closing
        old_a.close()
        old_b.close()
        new_a, new_b = socket.socketpair()
        try:
            recycled = next((s for s in (new_a, new_b) if s.fileno() == fd), None)
            assert recycled is not None, "the kernel did not reuse the fd number"
            other = new_b if recycled is new_a else new_a
            new = Counter()
            p.watch(fd, new, read=True, write=False)
            await spin()
            assert (old.reads, new.reads) == (0, 0)  # the old socket's data is gone with it
            other.send(b"fresh")
            await until("the new socket's event", lambda: new.reads > 0)
            assert recycled.recv(10) == b"fresh"
            assert old.reads == old.writes == 0
            forget(p, fd)
            assert len(p) == 0
        finally:
            new_a.close()
            new_b.close()

    run(main())


def test_a_failed_registration_leaves_no_entry(run: Run) -> None:
    """Bad input (an fd epoll refuses) raises and must not leave a phantom watcher."""

    async def main() -> None:
        p = poller()
        a, b = socket.socketpair()
        fd = a.fileno()
        a.close()
        b.close()
        with pytest.raises(OSError):
            p.watch(fd, Counter(), read=True, write=False)
        assert len(p) == 0

    run(main())


# -- churn: no fd and no poller entry left behind ----------------------------------------

CONNECTIONS = 2_000
CONCURRENCY = 25


def _open_fds() -> int:
    """Open fds, less the splice pipe pool's (sockets of earlier tests collected first)."""
    gc.collect()
    return sum(1 for _ in Path("/proc/self/fd").iterdir()) - 2 * relay.pooled_pipes()


async def _read(sock: socket.socket, limit: int | None = None) -> bytes:
    """Up to EOF (or a reset), or exactly ``limit`` bytes."""
    p = poller()
    data = bytearray()
    while limit is None or len(data) < limit:
        try:
            chunk = sock.recv(65536 if limit is None else limit - len(data))
        except BlockingIOError:
            await p.wait(sock.fileno(), write=False)
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


Relay = Callable[[socket.socket, socket.socket], CopyRelay | SpliceRelay]


async def _one_connection(make: Relay, listener: socket.socket, n: int) -> None:
    """One connection through a relay, ending cleanly, by a reset or by cancellation."""
    client, relay_in = tcp_pair(listener)
    try:
        relay_out, server = tcp_pair(listener)
    except BaseException:
        client.close()
        relay_in.close()
        raise
    request, response = b"q%d" % n, b"r%d" % n
    try:
        job = spawn(make(relay_in, relay_out).run(), name=f"churn-{n}")
        async with asyncio.timeout(10):
            client.send(request)
            if n % 3 == 0:  # both sides half-close: the relay ends by itself
                client.shutdown(socket.SHUT_WR)
                server.send(response)
                server.shutdown(socket.SHUT_WR)
                got_request, got_response = await asyncio.gather(_read(server), _read(client))
                assert (got_request, got_response) == (request, response)
                assert await job == (len(request), len(response))
            elif n % 3 == 1:  # the client resets: the relay fails and resets the server
                assert await _read(server, len(request)) == request
                close_with_reset(client)
                await job
                assert await _read(server) == b""
            else:  # cancelled mid-stream (a drain deadline): both sides are closed
                assert await _read(server, len(request)) == request
                await cancel_and_wait(job)
                assert job.cancelled()
                at_server, at_client = await asyncio.gather(_read(server), _read(client))
                assert (at_server, at_client) == (b"", b"")
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("kind", ["copy", "splice"])
def test_churn_on_uvloop_leaves_no_fd_and_no_watcher(kind: str) -> None:
    if kind == "splice" and not relay.splice_supported():
        pytest.skip("splice(2) is Linux-only")
    make: Relay = CopyRelay if kind == "copy" else SpliceRelay

    async def main() -> tuple[int, int, int]:
        p = poller()  # its epoll fd is part of the baseline
        listener = socket.create_server((HOST, 0), backlog=CONCURRENCY * 4)
        try:
            start = _open_fds()
            for base in range(0, CONNECTIONS, CONCURRENCY):
                async with asyncio.TaskGroup() as tg:
                    for n in range(base, base + CONCURRENCY):
                        tg.create_task(_one_connection(make, listener, n))
            return start, _open_fds(), len(p)
        finally:
            listener.close()

    start, end, watched = runner_of("uvloop")(main())
    assert end == start, f"{end - start} fds left open after {CONNECTIONS} connections"
    assert watched == 0, f"{watched} sockets still watched after {CONNECTIONS} connections"
