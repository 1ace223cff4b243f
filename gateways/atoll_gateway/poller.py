"""One private epoll set for every connection socket, watched by the event loop as one fd.

Why not ``loop.add_reader``/``add_writer`` per socket:

* **cost** — asyncio wraps each readiness event in a ``Handle``, queues it and
  runs it through a ``Context``; a relay wakes up twice per request in each
  direction, and that bookkeeping was a tenth of a terminated connection's
  CPU. Here one loop callback drains every ready socket in a tight loop.
* **uvloop** — uvloop gives each watched fd a libuv poll handle that is
  closed *asynchronously* when the last interest goes; pausing and resuming a
  socket (every back-pressure event, every handshake round trip) races that
  close, and the gateway's terminated and egress connections stalled. With
  this module uvloop only ever watches long-lived fds: listeners and this
  epoll set.

Semantics are the loop's: level-triggered, a callback per readable/writable
socket, errors and hang-ups reported as both (the next read or write tells
what happened). A socket with no interest left is removed from the set, so a
hang-up cannot spin. One :class:`Poller` per event loop (:func:`poller`),
created on first use and closed with the loop's last reference.

Rules for users: unregister (``watch(fd, None, ...)``) *before* closing a
socket — the kernel drops a closed fd from an epoll set only when every
duplicate is gone, and a recycled fd number must not inherit a watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import weakref
from typing import Protocol

__all__ = ["Poller", "Watcher", "poller"]

log = logging.getLogger("atoll.gateway.poller")

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP
_BATCH = 1024


class Watcher(Protocol):
    def readable(self) -> None: ...

    def writable(self) -> None: ...

    def crashed(self, exc: Exception) -> None:
        """A callback raised: end whatever this fd belongs to (the fd is already forgotten)."""


class Poller:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ep = select.epoll()
        self._watchers: dict[int, Watcher] = {}
        self._masks: dict[int, int] = {}
        loop.add_reader(self._ep.fileno(), self._dispatch)

    def __len__(self) -> int:
        return len(self._watchers)

    def watch(self, fd: int, watcher: Watcher | None, *, read: bool, write: bool) -> None:
        """Set ``fd``'s interest (``watcher=None`` or neither: forget the fd)."""
        mask = (_IN if read else 0) | (_OUT if write else 0)
        old = self._masks.get(fd, 0)
        if watcher is None or mask == 0:
            if old:
                del self._masks[fd]
                del self._watchers[fd]
                with contextlib.suppress(OSError):  # already closed: the kernel forgot it too
                    self._ep.unregister(fd)
            return
        if mask != old:  # the kernel first: a refused fd leaves no entry behind
            if old:
                self._ep.modify(fd, mask)
            else:
                self._ep.register(fd, mask)
            self._masks[fd] = mask
        self._watchers[fd] = watcher

    def forget_closing(self, fd: int) -> None:
        """Forget ``fd`` without a syscall: the caller closes it next, and the kernel drops
        a closed fd from the set by itself — when no duplicate of it is open, which
        holds for the sockets given here (wrapping for TLS detaches, never dups). An
        event already fetched for it finds no watcher and is skipped."""
        if self._masks.pop(fd, 0):
            del self._watchers[fd]

    def _dispatch(self) -> None:
        try:
            events = self._ep.poll(0, _BATCH)
        except InterruptedError:
            return
        watchers = self._watchers
        for fd, ev in events:
            w = watchers.get(fd)
            if w is None:  # unregistered by an earlier callback of this batch
                continue
            try:
                if ev & (_IN | _ERR):
                    w.readable()
                    if ev & (_OUT | _ERR) and watchers.get(fd) is w:
                        w.writable()
                elif ev & _OUT:
                    w.writable()
            except Exception as exc:  # a bug in one connection must not stall the others
                log.exception("poller callback failed", extra={"fd": fd})
                with contextlib.suppress(Exception):
                    self.watch(fd, None, read=False, write=False)
                    w.crashed(exc)

    # a timer only when it must wait: asyncio.timeout costs ~5% of a new connection
    async def wait(
        self,
        fd: int,
        *,
        write: bool,
        timeout: float | None = None,  # noqa: ASYNC109
        wake: set[asyncio.Future[None]] | None = None,
    ) -> None:
        """Until ``fd`` is readable (or writable); for one-off waits such as handshakes.

        ``timeout`` raises :class:`TimeoutError` (a timer on the future: cheaper than
        ``asyncio.timeout``, which the per-connection path would pay at every step).
        While waiting, the future is in ``wake``: whoever holds the set may end the
        wait early by setting its result (the caller then finds the fd not ready).
        It takes the fd over for the wait and forgets it afterwards: never on an
        fd a relay is watching."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiter = _Once(fut)
        self.watch(fd, waiter, read=not write, write=write)
        timer = loop.call_later(timeout, _expire, fut) if timeout is not None else None
        if wake is not None:
            wake.add(fut)
        try:
            await fut
        finally:
            if wake is not None:
                wake.discard(fut)
            if timer is not None:
                timer.cancel()
            self.watch(fd, None, read=False, write=False)


class _Once:
    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[None]) -> None:
        self.fut = fut

    def readable(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)

    def writable(self) -> None:
        self.readable()

    def crashed(self, exc: Exception) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Poller] = weakref.WeakKeyDictionary()


def poller(loop: asyncio.AbstractEventLoop | None = None) -> Poller:
    """The running loop's poller (created on first use)."""
    loop = loop or asyncio.get_running_loop()
    p = _POLLERS.get(loop)
    if p is None:
        p = _POLLERS[loop] = Poller(loop)
    return p
