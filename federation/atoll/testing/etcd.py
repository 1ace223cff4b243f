"""Real etcd processes for tests and benchmarks: :class:`EtcdServer`, :class:`EtcdCluster`.

Each member runs from the system ``etcd`` binary (3.4+) in a temporary
directory, on loopback, with free ports found by binding port 0 (all of a
cluster's ports are held at once while choosing, so they differ). Start-up
waits until every member reports healthy (``GET /health`` — true once the
member has a leader). Cluster status comes from etcd's JSON gateway on the
client port (``POST /v3/maintenance/status``), so nothing here needs a gRPC
client or ``etcdctl``.

No leaked processes: members run in their own session, :meth:`close` (also
the context-manager exit) SIGKILLs and reaps them and removes the data
directory, an ``atexit`` hook closes anything still open, and on Linux each
member gets ``PR_SET_PDEATHSIG`` so it dies with the process that started it
even if that process is SIGKILLed. (The death signal follows the *thread*
that started the member: start clusters from a long-lived thread, e.g. the
main thread, not from a short-lived executor thread.)

Elections: the defaults (heartbeat 100 ms, election timeout 1 s) make a
3-member cluster elect a new leader ~1-2 s after losing one. etcd's minimum
lease TTL is 1.5 x election timeout (rounded up to whole seconds): 2 s with
the defaults, 1 s with ``heartbeat_ms=50, election_ms=500`` (what the
contract tests use for a single member).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["EtcdCluster", "EtcdError", "EtcdMember", "EtcdServer", "etcd_binary"]

_open_clusters: weakref.WeakSet[EtcdCluster] = weakref.WeakSet()


class EtcdError(RuntimeError):
    """An etcd test process failed to start or answer."""


def etcd_binary() -> str | None:
    """Path of the ``etcd`` binary, or None (tests skip on None)."""
    return os.environ.get("ATOLL_ETCD_BINARY") or shutil.which("etcd")


def _free_ports(host: str, count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _http_json(url: str, body: bytes | None, timeout: float) -> dict[str, object]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        doc = json.loads(response.read())
    if not isinstance(doc, dict):
        raise EtcdError(f"{url}: unexpected answer {doc!r}")
    return doc


@dataclass
class EtcdMember:
    """One etcd process (running or not)."""

    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.with_suffix(".log")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            doc = _http_json(f"{self.client_url}/health", None, timeout)
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return doc.get("health") == "true"

    def status(self, timeout: float = 1.0) -> tuple[int, int]:
        """(this member's id, the leader id it believes in; 0 = none)."""
        doc = _http_json(f"{self.client_url}/v3/maintenance/status", b"{}", timeout)
        header = doc.get("header")
        member_id = int(header.get("member_id", 0)) if isinstance(header, dict) else 0
        return member_id, int(str(doc.get("leader", 0)))

    def revision(self, timeout: float = 1.0) -> int:
        """The store revision this member has applied (a member-local read)."""
        body = json.dumps({"key": "AA==", "serializable": True, "count_only": True}).encode()
        doc = _http_json(f"{self.client_url}/v3/kv/range", body, timeout)
        header = doc.get("header")
        return int(header.get("revision", 0)) if isinstance(header, dict) else 0

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class EtcdCluster:
    """``n`` etcd members on loopback; a context manager. ``n=1`` is a single server."""

    def __init__(
        self,
        n: int = 3,
        *,
        host: str = "127.0.10.1",
        base_dir: str | os.PathLike[str] | None = None,
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
        startup_timeout: float = 20.0,
        binary: str | None = None,
        die_with_parent: bool = True,
    ) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one member")
        found = binary or etcd_binary()
        if found is None:
            raise EtcdError("etcd binary not found (apt-get install etcd-server)")
        self.binary = found
        self.n = n
        self.host = host
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.startup_timeout = startup_timeout
        self._die_with_parent = die_with_parent and sys.platform == "linux"
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="atoll-etcd-"))
        self.members: list[EtcdMember] = []
        self._token = f"atoll-{os.getpid()}-{id(self):x}"

    # -- lifecycle ----------------------------------------------------------------

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> EtcdCluster:
        """Start every member and wait until all are healthy (retries on port races)."""
        _open_clusters.add(self)
        last: Exception | None = None
        for attempt in range(3):
            ports = _free_ports(self.host, 2 * self.n)
            self.members = [
                EtcdMember(
                    name=f"m{i}",
                    host=self.host,
                    client_port=ports[2 * i],
                    peer_port=ports[2 * i + 1],
                    data_dir=self.base_dir / f"try{attempt}-m{i}",
                )
                for i in range(self.n)
            ]
            try:
                for member in self.members:
                    self._spawn(member)
                self._wait(lambda: all(m.healthy() for m in self.members), "cluster healthy")
                return self
            except EtcdError as exc:
                last = exc
                self._kill_all()
        self.close()
        raise EtcdError(f"etcd cluster did not start: {last}")

    def _spawn(self, member: EtcdMember) -> None:
        member.data_dir.parent.mkdir(parents=True, exist_ok=True)
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        cmd = [
            self.binary,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self._token,
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        with member.log_path.open("ab") as log:
            member.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if self._die_with_parent else None,
            )

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while time.monotonic() < deadline:
            for m in self.members:  # a member that died by itself (not killed by us)
                code = m.process.poll() if m.process is not None else None
                if code is not None and code != -signal.SIGKILL:
                    raise EtcdError(f"{m.name} exited with {code}:\n{m.log_tail()}")
            if ready():
                return
            time.sleep(0.05)
        tails = "\n".join(f"--- {m.name}\n{m.log_tail(8)}" for m in self.members)
        raise EtcdError(f"timed out waiting for {what}\n{tails}")

    def _kill_all(self) -> None:
        for member in self.members:
            self._kill(member)

    @staticmethod
    def _kill(member: EtcdMember) -> None:
        proc = member.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def close(self) -> None:
        """Kill every member and delete the data (idempotent)."""
        self._kill_all()
        _open_clusters.discard(self)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- addresses ------------------------------------------------------------------

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of every member's client URL (for EtcdStore)."""
        return tuple((m.host, m.client_port) for m in self.members)

    @property
    def url(self) -> str:
        """A store URL for :func:`atoll.store.open_store`."""
        return "etcd://" + ",".join(m.endpoint for m in self.members)

    # -- faults ---------------------------------------------------------------------

    def kill(self, index: int) -> None:
        """SIGKILL one member (its data stays for :meth:`restart`)."""
        self._kill(self.members[index])

    def restart(self, index: int, *, wait: bool = True) -> None:
        """Start a killed member again on its data dir; wait until it is healthy."""
        member = self.members[index]
        if member.running:
            raise EtcdError(f"{member.name} is running")
        self._spawn(member)
        if wait:
            self._wait(member.healthy, f"{member.name} healthy")

    def leader(self, timeout: float = 15.0) -> int:
        """Index of the member that is leader, as agreed by the live members."""
        found: list[int] = []

        def agreed() -> bool:
            ids: dict[int, int] = {}
            leaders: set[int] = set()
            for i, m in enumerate(self.members):
                if not m.running:
                    continue
                try:
                    member_id, leader_id = m.status(timeout=0.5)
                except (OSError, urllib.error.URLError, ValueError, EtcdError):
                    return False
                ids[member_id] = i
                leaders.add(leader_id)
            if len(leaders) != 1:
                return False
            (leader_id,) = leaders
            if leader_id not in ids:
                return False
            found.append(ids[leader_id])
            return True

        self._wait(agreed, "an agreed leader", timeout)
        return found[-1]

    def wait_caught_up(self, index: int, revision: int, timeout: float = 15.0) -> None:
        """Wait until member ``index`` has applied ``revision``."""
        member = self.members[index]

        def caught_up() -> bool:
            try:
                return member.revision(timeout=0.5) >= revision
            except (OSError, urllib.error.URLError, ValueError, EtcdError):
                return False

        self._wait(caught_up, f"{member.name} at revision {revision}", timeout)


class EtcdServer(EtcdCluster):
    """A single etcd member (fast elections, so leases down to 1 s work)."""

    def __init__(
        self,
        *,
        host: str = "127.0.10.1",
        base_dir: str | os.PathLike[str] | None = None,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        startup_timeout: float = 20.0,
        binary: str | None = None,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(
            1,
            host=host,
            base_dir=base_dir,
            heartbeat_ms=heartbeat_ms,
            election_ms=election_ms,
            startup_timeout=startup_timeout,
            binary=binary,
            die_with_parent=die_with_parent,
        )

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    @property
    def endpoint(self) -> tuple[str, int]:
        return self.endpoints[0]


@atexit.register
def _close_leftovers() -> None:
    for cluster in list(_open_clusters):
        cluster.close()
