"""Read a connection's ClientHello without consuming it (``MSG_PEEK``).

The bytes stay in the kernel's receive queue, so for passthrough the splice
relay forwards them to the endpoint untouched (no copy, no re-send) and for
termination OpenSSL reads them as if nobody had looked.

To wait for *more* bytes than are queued without spinning (a peeked socket
stays readable), the socket's ``SO_RCVLOWAT`` is raised to the total the
parser asks for: the kernel reports it readable only once that much has
arrived (or the peer closed). If a wake-up brings nothing new, the peer has
either half-closed (``TCP_INFO`` says ``CLOSE_WAIT``: truncated) or the wake-up
was spurious (a short pause, then look again). The caller bounds the whole
wait with the hello timeout, so a slow sender costs one timer, not a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from atoll_gateway.clienthello import RECORD_HEADER, ClientHello, parse_client_hello
from atoll_gateway.errors import ClientHelloError
from atoll_gateway.poller import poller

__all__ = ["peek_client_hello"]

_TCP_CLOSE_WAIT = 8


def _timed_out(timeout: float) -> ClientHelloError:
    return ClientHelloError("timeout", f"no complete ClientHello within {timeout}s")


def _peer_closed(sock: socket.socket) -> bool:
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return True
    return info[0] == _TCP_CLOSE_WAIT


# a timer only when it must wait: asyncio.timeout costs ~5% of a new connection
async def peek_client_hello(sock: socket.socket, *, max_size: int, timeout: float) -> ClientHello:  # noqa: ASYNC109
    """Wait until the ClientHello is complete and parse it (see the module docstring);
    a :class:`ClientHelloError` ``timeout`` when it is not complete within ``timeout``.

    The queue is looked at first without waiting: on a busy gateway the hello
    has usually arrived by the time the connection is accepted, and then no
    reader is registered at all.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    need = RECORD_HEADER
    last = -1
    lowat = False
    try:
        while True:
            try:
                data: bytes | None = sock.recv(max_size, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as exc:
                raise ClientHelloError("truncated", f"connection failed: {exc}") from exc
            if data is not None:
                if not data:
                    raise ClientHelloError("truncated", "closed before sending a ClientHello")
                result = parse_client_hello(data, max_size=max_size)
                if isinstance(result, ClientHello):
                    return result
                if len(data) == last:
                    if _peer_closed(sock):
                        raise ClientHelloError(
                            "truncated", f"closed after {len(data)} bytes of a ClientHello"
                        )
                    if loop.time() >= deadline:
                        raise _timed_out(timeout)
                    await asyncio.sleep(0.005)
                    continue
                last = len(data)
                need = min(result.total, max_size)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, need)
                    lowat = True
            left = deadline - loop.time()
            if left <= 0:
                raise _timed_out(timeout)
            try:
                await poller().wait(sock.fileno(), write=False, timeout=left)
            except TimeoutError:
                raise _timed_out(timeout) from None
    finally:
        if lowat:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
