"""Start, watch and stop the lab's child processes.

Children run in their own sessions, so a Ctrl-C in the terminal reaches only
``atoll up``, which then stops them in reverse start order (agents before the
control plane) with SIGTERM, escalating to SIGKILL after a grace period.
Each child also gets ``PR_SET_PDEATHSIG`` (Linux): if ``atoll up`` itself is
killed, the kernel terminates its children instead of leaving them behind.
Output goes to one log file per child; when a child fails to become healthy
the error quotes the end of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from atoll.errors import FatalError

__all__ = ["Child", "LabError", "Supervisor"]

log = logging.getLogger("atoll.lab")
_PR_SET_PDEATHSIG = 1


class LabError(FatalError):
    """A lab component failed to start or died."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass(slots=True)
class Child:
    name: str
    argv: tuple[str, ...]
    log_path: Path
    health_url: str | None
    proc: asyncio.subprocess.Process
    started_at: float = field(default_factory=time.time)
    expected_exit: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    def __init__(self, *, env: Mapping[str, str] | None = None) -> None:
        self.children: list[Child] = []
        self.env = dict(os.environ if env is None else env)

    async def start(
        self, name: str, argv: Sequence[str], *, log_path: Path, health_url: str | None
    ) -> Child:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(
            name=name, argv=tuple(argv), log_path=log_path, health_url=health_url, proc=proc
        )
        # a restarted component replaces its dead predecessor
        self.children = [c for c in self.children if c.name != name] + [child]
        log.info("started", extra={"component": name, "pid": proc.pid})
        return child

    async def wait_healthy(self, child: Child, *, within: float = 30.0) -> None:
        """Poll the child's health URL until it answers 200; fail fast if it exits."""
        if child.health_url is None:
            return
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                if child.proc.returncode is not None:
                    raise LabError(
                        f"{child.name} exited with code {child.proc.returncode} while starting; "
                        f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    resp = await http.get(child.health_url)
                    if resp.status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise LabError(
                        f"{child.name} did not become healthy at {child.health_url} within "
                        f"{within:.0f}s; its log ({child.log_path}) ends with:\n{child.log_tail()}"
                    )
                await asyncio.sleep(0.1)

    def exited(self) -> list[Child]:
        """Children that have exited without being asked to."""
        return [c for c in self.children if c.proc.returncode is not None and not c.expected_exit]

    async def stop(self, child: Child, *, grace: float = 10.0) -> int | None:
        child.expected_exit = True
        if child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await child.proc.wait()
            except TimeoutError:
                log.warning("did not stop in time; killing", extra={"component": child.name})
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()
        return child.proc.returncode

    async def kill(self, child: Child) -> None:
        """SIGKILL a child on purpose (chaos) and reap it."""
        child.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            child.proc.kill()
        await child.proc.wait()

    async def stop_all(self, *, grace: float = 10.0) -> None:
        for child in reversed(self.children):
            await self.stop(child, grace=grace)
