"""Control frames on a pooled tunnel: sending one, waiting for the next.

The tunnel is a non-blocking :class:`ssl.SSLSocket`; these helpers wait on
the loop's :class:`~atoll_gateway.poller.Poller` like the handshakes do, and
never while a relay watches the socket (streams are relayed by
:class:`~atoll_gateway.tunnelrelay.TunnelRelay` between control frames).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from atoll_gateway.poller import poller
from atoll_gateway.tunnelproto import Frame, FrameReader

__all__ = ["read_frame", "send_frame"]

_READ = 4096


async def _wait(
    tls: ssl.SSLSocket,
    *,
    write: bool,
    deadline: float | None,
    wake: set[asyncio.Future[None]] | None,
) -> None:
    loop = asyncio.get_running_loop()
    timeout = None if deadline is None else max(0.0, deadline - loop.time())
    await poller(loop).wait(tls.fileno(), write=write, timeout=timeout, wake=wake)


async def send_frame(tls: ssl.SSLSocket, data: bytes, *, timeout: float) -> None:  # noqa: ASYNC109
    """Send ``data`` whole (:class:`TimeoutError` after ``timeout`` seconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    view = memoryview(data)
    while view:
        try:
            view = view[tls.send(view) :]
        except (ssl.SSLWantWriteError, BlockingIOError):
            await _wait(tls, write=True, deadline=deadline, wake=None)
        except ssl.SSLWantReadError:
            await _wait(tls, write=False, deadline=deadline, wake=None)


async def read_frame(
    tls: ssl.SSLSocket,
    reader: FrameReader,
    *,
    timeout: float | None,  # noqa: ASYNC109
    stop: Callable[[], bool] | None = None,
    wake: set[asyncio.Future[None]] | None = None,
) -> Frame | None:
    """The next control frame; ``None`` when the peer closed the tunnel, or — checked
    before every wait — ``stop()`` says to give up (a drain). A wait is registered in
    ``wake`` so that the one stopping can end it at once. :class:`TimeoutError` after
    ``timeout`` seconds; :class:`~atoll_gateway.tunnelproto.TunnelProtocolError` for a
    frame that cannot be valid."""
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    while True:
        try:
            data = tls.recv(_READ)
        except (ssl.SSLWantReadError, BlockingIOError):
            if stop is not None and stop():
                return None
            await _wait(tls, write=False, deadline=deadline, wake=wake)
            continue
        except ssl.SSLWantWriteError:
            await _wait(tls, write=True, deadline=deadline, wake=None)
            continue
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError):
            return None
        if not data:
            return None
        frame = reader.feed(data)
        if frame is not None:
            return frame
