"""TLS handshakes on plain non-blocking sockets, driven by the event loop.

The gateway's TLS connections are :class:`ssl.SSLSocket` objects in
non-blocking mode rather than asyncio SSL transports: the relay
(:class:`~atoll_gateway.relay.CopyRelay`) then decrypts and encrypts with one
C call per chunk, and the same code runs on asyncio's loop and on uvloop
(whose SSL transports stalled terminated connections). Only the handshake
needs help from the loop: :func:`handshake` retries ``do_handshake`` each
time the socket becomes readable or writable, as OpenSSL asks (waiting on
the :class:`~atoll_gateway.poller.Poller`, like the relays).

* :func:`accept_tls` — server side of an accepted socket (terminating listener);
* :func:`connect_tls` — client side to an endpoint or a peer gateway, with an
  optional :class:`ssl.SSLSession` to resume (one full handshake per peer
  instead of one per connection).

Both take the socket over: on failure it is closed, on success the returned
``SSLSocket`` owns the file descriptor (the plain socket object is detached).
The caller bounds the time with ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import socket
import ssl
from collections.abc import Callable

from atoll_gateway.balancer import Endpoint
from atoll_gateway.poller import poller

__all__ = ["accept_tls", "connect_socket", "connect_tls", "handshake"]


async def handshake(tls: ssl.SSLSocket) -> None:
    """Complete the TLS handshake of a non-blocking ``SSLSocket``."""
    waits = poller()
    fd = tls.fileno()
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            await waits.wait(fd, write=False)
        except ssl.SSLWantWriteError:
            await waits.wait(fd, write=True)


async def _secure(
    sock: socket.socket, wrap: Callable[[socket.socket], ssl.SSLSocket]
) -> ssl.SSLSocket:
    """Wrap ``sock`` and complete the handshake; whatever fails, nothing stays open."""
    try:
        tls = wrap(sock)
    except BaseException:
        sock.close()
        raise
    try:
        await handshake(tls)
    except BaseException:
        tls.close()
        raise
    return tls


async def accept_tls(sock: socket.socket, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """Server-side handshake on an accepted socket (the socket is taken over)."""
    return await _secure(
        sock, lambda s: ctx.wrap_socket(s, server_side=True, do_handshake_on_connect=False)
    )


@functools.lru_cache(maxsize=4096)
def _ip_version(host: str) -> int:
    """4 or 6 for an IP address literal, 0 for a host name."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


# a timer only when it must wait: asyncio.timeout costs ~5% of a new connection
async def connect_socket(endpoint: Endpoint, timeout: float | None = None) -> socket.socket:  # noqa: ASYNC109
    """A connected non-blocking TCP socket with Nagle off (:class:`TimeoutError` after
    ``timeout`` seconds).

    An IP address connects through the :class:`~atoll_gateway.poller.Poller`
    (no per-fd loop registration, no timer unless the connect has to wait); a
    host name goes through the loop, which resolves it without blocking.
    """
    ip = _ip_version(endpoint.host)
    family = socket.AF_INET6 if ip == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ip == 0:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, (endpoint.host, endpoint.port))
            return sock
        err = sock.connect_ex((endpoint.host, endpoint.port))
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            await poller().wait(sock.fileno(), write=True, timeout=timeout)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect to {endpoint}: {os.strerror(err)}")
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_tls(
    endpoint: Endpoint,
    ctx: ssl.SSLContext,
    server_hostname: str,
    *,
    session: ssl.SSLSession | None = None,
) -> ssl.SSLSocket:
    """Connect and complete a client handshake (resuming ``session`` if the server agrees)."""
    return await _secure(
        await connect_socket(endpoint),
        lambda s: ctx.wrap_socket(
            s, server_hostname=server_hostname, do_handshake_on_connect=False, session=session
        ),
    )
