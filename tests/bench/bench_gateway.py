"""Benchmark: Atoll's east-west gateway against HAProxy 2.6, nginx TLS behind both.

Run: ``python -m tests.bench.bench_gateway [--duration 6] [--warmup 1]
[--loop uvloop|asyncio] [--relay auto|splice|copy]``. Needs ``haproxy``, ``nginx`` and ``wrk``
(Debian: ``apt-get install haproxy nginx wrk``; their services need not run) and
root for one thing: ``wrk`` takes the TLS server name from the URL host, so it
runs in a private mount namespace (``unshare -m``) whose ``/etc/hosts`` maps
``web.demo.svc.atoll.test`` to the proxies' address — nothing on the machine
changes.

Scenarios, each run once against HAProxy and once against Atoll in the same run:

* **passthrough** — TLS from wrk routed by SNI to nginx without terminating
  (HAProxy ``req.ssl_sni``, Atoll ``mode: passthrough``): keep-alive requests,
  new connections (``Connection: close``: a TCP connect, ClientHello peek and
  full TLS handshake with nginx per request) and bulk (64 MiB downloads);
* **termination** — the gateway-to-gateway path: wrk → plain HTTP to an egress
  → mTLS between two proxies (client certificate verified) → plain HTTP to
  nginx. Each side deploys one proxy per cluster, as a federation would:
  HAProxy ``west`` originates ``ssl crt`` with ``verify required`` (session
  reuse on, its default), HAProxy ``east`` terminates with
  ``ca-file``/``verify required``; Atoll's ``west`` egress and ``east``
  terminating gateway (SPIFFE verification against the peer's own bundle and
  the allow policy). Atoll runs its defaults: **pooled tunnels**
  (``atoll-tunnel/2``) — a client connection is a stream on an idle mTLS
  tunnel, so new connections cost no handshake between the gateways, where
  HAProxy in TCP mode opens (and resumes) a TLS connection per client
  connection; each stream is framed (4 bytes per TLS record), which is what
  keep-alive pays for it. Keep-alive, new connections and bulk (64 MiB
  downloads).
* **churn** — new connections for a while, then the gateway's open fds are
  compared with before (the uvloop + splice fd leak of the peer baselines).

Each figure is printed with the ratio Atoll / HAProxy. On 2 shared cores the
backend and wrk saturate the machine, so requests/s tend to equalise; the
figure that separates proxies is **work per proxy CPU-second** (CPU read from
/proc for the proxy processes only — both sides' two processes). Proxies are
pinned to CPU 0, nginx and wrk to CPU 1. Runs alternate HAProxy / Atoll
``--rounds`` times and the median of each side is shown: the throughput of
this shared box drifts several-fold between minutes, and interleaving puts
both sides in the same weather.

**Warm-up** (``--warmup``, 1 s per side before each scenario, not measured):
connection set-up is what "new conns" measures, and wrk's latency figures
magnify it elsewhere. wrk corrects for coordinated omission: a response that
took n times the mean interval between a connection's requests adds n-1
phantom samples below it. So the 32 first requests of a cold keep-alive run,
which wait for the egress's 32 tunnel handshakes (serialised on one core, up to
~135 ms), became ~1.7% of the samples and made p99 15-115 ms. A packet capture
of the same run showed a p99 of 2.1 ms on the wire (HAProxy 1.8 ms). Atoll's
warm-up tunnels stay pooled for the measured runs, because a client that
aborts an in-flight request (as wrk does when it stops) costs a RESET frame,
not the tunnel. HAProxy opens its server connections per client connection in
any case.

**Relays**: the header says which the gateways run — ``native`` after
``atoll gateway compile`` (mypyc-compiled poller and pumps,
:mod:`atoll_gateway.native`), ``python`` otherwise; ``ATOLL_NATIVE=0`` forces
Python for an A/B.

Figures on a shared 2-core machine (uvloop, the default relays and pooled
tunnels, compiled; 5 s per run, 1 s warm-up, median of 3 interleaved rounds;
ratios Atoll / HAProxy, requests/s then work per proxy CPU-second, then p99):
passthrough keep-alive 1.02x / 0.86x (1.04x in a second run), p99 1.2 vs
1.4 ms; passthrough new connections 1.00x / 0.45x (1.05x); passthrough bulk
1.02x / 1.01x (1.01x; 1.06-1.09x in runs of bulk alone; 0.88-0.98x before
the splice relay's sockets got ``TCP_NOTSENT_LOWAT`` — see
:data:`atoll_gateway.relay.NOTSENT_LOWAT`: until then the kernel sent most of
a bulk direction from ACK softirqs on the *client's* core, which nginx and
wrk saturate here); termination keep-alive 0.84x / 0.84x (0.82-0.84x in
other runs that day; the Python relays 0.70x in the same hour), p99 2.1 vs
3.2 ms; termination new connections 3.12x / 3.13x (31,193 streams on the
served side over the whole run, 31,130 of them on a reused tunnel; before
pooling, with resumed handshakes per connection, 0.68x); termination bulk
0.89x / 0.88x (0.93x in another run; 0.86x with the Python relays); churn of
~7,000 connections: no fd leak. Separate runs the same day moved each ratio
by up to ~0.1. ``--relay copy`` for passthrough: keep-alive 0.76x, bulk
0.83x per CPU-s (splice wins on bulk). ``--loop asyncio`` is within the
noise of uvloop.
Memory: peak RSS of the two proxy processes, HAProxy 39-40 MiB, Atoll
177-213 MiB (4.6-5.3x: mostly the interpreter and its imports — gRPC, FastAPI, pydantic —
not connections; a copy relay holds 2 x 16 KiB (64 KiB for a bulk direction), a splice
relay two pooled pipes).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from atoll_gateway.testing import TestPki
from atoll_trust.ca import mint_x509_svid
from atoll_trust.spiffe_id import TrustDomain
from tests.bench._procs import BenchError, ServerProcess, http_get, proc_usage
from tests.certkit import self_signed

HOST = "127.0.90.41"  # proxies' TLS side (east)
EGRESS = "127.0.90.42"  # egress side (west)
NGINX = "127.0.90.31"
NAME = "web.demo.svc.atoll.test"
PLAIN_SNI = "plain.demo.svc.east.atoll.test"
PORTS = {
    "nginx_tls": 8443,
    "nginx_plain": 8080,
    "atoll": 15443,
    "haproxy": 9443,
    "haproxy_term": 9444,
    "atoll_egress": 8080,
    "haproxy_egress": 19080,
    "east_admin": 15000,
    "west_admin": 15001,
    "west_listen": 15444,
}


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_pki(d: Path) -> None:
    pki = TestPki("east.atoll.lab", "west.atoll.lab")
    for role in ("east", "west"):
        td = TrustDomain(f"{role}.atoll.lab")
        ca = pki.states[td.name].active_x509
        assert ca is not None
        # a DNS SAN too, because HAProxy checks the server name it sends (SNI) against it
        svid = mint_x509_svid(
            ca,
            td.spiffe_id("atoll", "gateway"),
            now=pki.now,
            ttl=dt.timedelta(hours=2),
            dns_names=[PLAIN_SNI],
        )
        (d / f"{role}-gw.crt").write_bytes(svid.chain_pem())
        (d / f"{role}-gw.key").write_bytes(svid.private_key_pem())
        (d / f"{role}-gw.pem").write_bytes(svid.chain_pem() + svid.private_key_pem())
        bundle = pki.bundles(f"{role}.atoll.lab")
        (d / f"{role}-ca.crt").write_bytes(
            b"".join(_pem(c) for b in bundle for c in b.x509_authorities)
        )
    (d / "certs").mkdir()
    self_signed(NAME, dns_names=[NAME]).write_pem(
        d / "certs" / "server.crt", d / "certs" / "server.key"
    )


NGINX_CONF = """worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 10000000;
    types {{ text/plain txt; application/octet-stream bin; }}
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    ssl_certificate {d}/certs/server.crt;
    ssl_certificate_key {d}/certs/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {{ listen {nginx}:{nginx_tls} ssl; root {d}/www; }}
    server {{ listen {nginx}:{nginx_plain}; root {d}/www; }}
}}
"""

_HAPROXY_GLOBAL = """global
    nbthread 1
    maxconn 8000
    log stdout format raw local0 err
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""

#: the gateway of cluster east: SNI passthrough and mTLS termination
HAPROXY_EAST = (
    _HAPROXY_GLOBAL
    + """frontend fe_sni
    bind {host}:{haproxy}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    tcp-request content reject
    use_backend be_web if {{ req.ssl_sni -i {name} }}
backend be_web
    server web {nginx}:{nginx_tls}
frontend fe_term
    bind {host}:{haproxy_term} ssl crt {d}/east-gw.pem ca-file {d}/west-ca.crt verify required
    default_backend be_plain
backend be_plain
    server plain {nginx}:{nginx_plain}
"""
)

#: the egress of cluster west: plain in, mTLS to east's gateway out
HAPROXY_WEST = (
    _HAPROXY_GLOBAL
    + """frontend fe_egress
    bind {egress}:{haproxy_egress}
    default_backend be_east
backend be_east
    server east {server_east}
"""
)


@dataclass
class Result:
    rps: float
    mbps: float
    p99_ms: float
    requests: int
    errors: int
    cpu: float

    def per_cpu(self) -> float:
        return self.requests / self.cpu if self.cpu > 0 else float("inf")

    def mb_per_cpu(self, seconds: float) -> float:
        return self.mbps * seconds / self.cpu if self.cpu > 0 else float("inf")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_SIZE = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}


def median_result(results: list[Result]) -> Result:
    """The run with the median throughput (its CPU and latency travel with it)."""
    ranked = sorted(results, key=lambda r: r.rps)
    return ranked[len(ranked) // 2]


def parse_wrk(out: str) -> tuple[float, float, float, int, int]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    t = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    mbps = float(t.group(1)) * _SIZE[t.group(2)] if t else 0.0
    p = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(p.group(1)) * _UNITS[p.group(2)] if p else float("nan")
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, mbps, p99, n, errs + (int(non2xx.group(1)) if non2xx else 0)


def run_wrk(
    d: Path, url: str, *, conns: int, seconds: float, close: bool, pids: list[int]
) -> Result:
    hdr = ["-H", "Connection: close"] if close else []
    wrk = [
        "taskset",
        "-c",
        "1",
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{seconds:.0f}s",
        "--latency",
        *hdr,
        url,
    ]
    cmd = [
        "unshare",
        "-m",
        "sh",
        "-c",
        f"mount --bind {d}/hosts /etc/hosts && exec " + " ".join(f"'{a}'" for a in wrk),
    ]
    before = sum(proc_usage(p).cpu_seconds for p in pids)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    cpu = sum(proc_usage(p).cpu_seconds for p in pids) - before
    if out.returncode != 0 or "Requests/sec" not in out.stdout:
        raise BenchError(f"wrk failed: {out.stderr.strip()[:300]} {out.stdout[-300:]}")
    rps, mbps, p99, n, errs = parse_wrk(out.stdout)
    return Result(rps, mbps, p99, n, errs, cpu)


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def server_counts(exposition: str, metric: str, flag: str) -> dict[str, float]:
    """A ``role="server"`` counter from a /metrics page, summed by its boolean label
    ``flag`` (``true`` / ``false``)."""
    counts: dict[str, float] = {}
    for line in exposition.splitlines():
        if not line.startswith(metric + "{") or 'role="server"' not in line:
            continue
        key = "true" if f'{flag}="true"' in line else "false"
        counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def fd_count(pid: int, admin: str) -> int:
    """Open fds of the gateway, less what it keeps open on purpose: idle pipes, and
    served tunnels waiting for the peer egress's next stream."""
    _, body = http_get(f"http://{admin}/v1/status")
    status = json.loads(body or b"{}")
    kept = 2 * int(status.get("pooled_pipes", 0)) + int(status.get("tunnels_waiting", 0))
    return len(list(Path(f"/proc/{pid}/fd").iterdir())) - kept


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run (default 6)")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    ap.add_argument("--relay", choices=("auto", "splice", "copy"), default="auto")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="interleaved runs per side; the median is shown"
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="unmeasured seconds of load per side before each scenario (default 1; 0: none)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    ap.add_argument("--only", default="", help="comma-separated scenario prefixes to run")
    args = ap.parse_args()
    for tool in ("haproxy", "nginx", "wrk", "unshare", "taskset"):
        if shutil.which(tool) is None:
            print(
                f"{tool} not found: apt-get install haproxy nginx wrk util-linux", file=sys.stderr
            )
            return 2
    busy = [
        f"{host}:{port}"
        for host in (HOST, EGRESS, NGINX)
        for port in sorted(set(PORTS.values()))
        if _listening(host, port)
    ]
    if busy:  # a previous run still alive would answer for ours and skew every figure
        print(
            f"already listening: {', '.join(busy)} — is another benchmark running? "
            "(pkill -f tests.bench._gateway_child; pkill haproxy; pkill nginx)",
            file=sys.stderr,
        )
        return 2
    d = Path(tempfile.mkdtemp(prefix="atoll-bench-gw-"))
    d.chmod(0o755)  # nginx workers run as an unprivileged user
    procs: list[ServerProcess] = []
    try:
        write_pki(d)
        for sub in ("www", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "www" / "small.txt").write_text("hello from nginx\n")
        with (d / "www" / "bulk.bin").open("wb") as fh:
            fh.truncate(64 << 20)
        (d / "hosts").write_text(f"127.0.0.1 localhost\n{HOST} {NAME}\n")
        server_east = (
            f"{HOST}:{PORTS['haproxy_term']} ssl crt {d}/west-gw.pem ca-file {d}/east-ca.crt "
            f"verify required sni str({PLAIN_SNI})"
        )
        fmt = dict(
            server_east=server_east,
            d=d,
            host=HOST,
            egress=EGRESS,
            nginx=NGINX,
            name=NAME,
            plain_sni=PLAIN_SNI,
            **PORTS,
        )
        (d / "nginx.conf").write_text(NGINX_CONF.format(**fmt))
        (d / "haproxy-east.cfg").write_text(HAPROXY_EAST.format(**fmt))
        (d / "haproxy-west.cfg").write_text(HAPROXY_WEST.format(**fmt))
        (d / "plan.json").write_text(
            json.dumps(
                {
                    "east_listen": f"{HOST}:{PORTS['atoll']}",
                    "east_admin": f"{HOST}:{PORTS['east_admin']}",
                    "west_listen": f"{EGRESS}:{PORTS['west_listen']}",
                    "west_admin": f"{EGRESS}:{PORTS['west_admin']}",
                    "egress_host": EGRESS,
                    "egress_port": PORTS["atoll_egress"],
                    "relay": args.relay,
                    "nginx_host": NGINX,
                    "nginx_tls": PORTS["nginx_tls"],
                    "nginx_plain": PORTS["nginx_plain"],
                }
            )
        )
        nginx = ServerProcess(
            "nginx",
            ["taskset", "-c", "1", "nginx", "-p", str(d), "-c", str(d / "nginx.conf")],
            log_path=d / "nginx.log",
            cwd=d,
        ).start()
        haproxy, haproxy_west = (
            ServerProcess(
                f"haproxy-{side}",
                ["taskset", "-c", "0", "haproxy", "-f", str(d / f"haproxy-{side}.cfg")],
                log_path=d / f"haproxy-{side}.log",
                cwd=d,
            ).start()
            for side in ("east", "west")
        )
        py = [sys.executable, "-m", "tests.bench._gateway_child", str(d)]
        east = ServerProcess(
            "atoll-east",
            ["taskset", "-c", "0", *py, "east", args.loop],
            log_path=d / "east.log",
            cwd=Path.cwd(),
        ).start()
        west = ServerProcess(
            "atoll-west",
            ["taskset", "-c", "0", *py, "west", args.loop],
            log_path=d / "west.log",
            cwd=Path.cwd(),
        ).start()
        procs += [nginx, haproxy, haproxy_west, east, west]
        for p, url in (
            (east, f"http://{HOST}:{PORTS['east_admin']}/readyz"),
            (west, f"http://{EGRESS}:{PORTS['west_admin']}/readyz"),
        ):
            p.wait_until(lambda u=url: http_get(u)[0] == 200, "ready", 30)  # type: ignore[misc]
        for p, port in ((nginx, PORTS["nginx_tls"]), (haproxy, PORTS["haproxy"])):
            host = NGINX if p is nginx else HOST
            p.wait_until(lambda h=host, o=port: _listening(h, o), "listening", 15)  # type: ignore[misc]
        haproxy_west.wait_until(
            lambda: _listening(EGRESS, PORTS["haproxy_egress"]), "listening", 15
        )
        hpids, apids = [haproxy.pid, haproxy_west.pid], [east.pid, west.pid]
        fds_start = fd_count(east.pid, f"{HOST}:{PORTS['east_admin']}")
        secs, conns = args.duration, args.connections
        _, body = http_get(f"http://{HOST}:{PORTS['east_admin']}/v1/status")
        relays = json.loads(body or b"{}").get("relays", "?")
        print(
            f"gateway benchmark: loop={args.loop} relay={args.relay} relays={relays} "
            f"{secs:.0f}s per run, median of {args.rounds} interleaved runs per side, "
            f"{conns} connections; ratios are Atoll / HAProxy 2.6 (nbthread 1, one per cluster)"
        )
        rows: list[tuple[str, Result, Result, str]] = []

        only = [o for o in args.only.split(",") if o]

        def pair(label: str, hurl: str, aurl: str, *, close: bool, c: int, unit: str) -> None:
            if only and not any(label.startswith(o) for o in only):
                return
            hs: list[Result] = []
            as_: list[Result] = []
            if args.warmup > 0:  # connection set-up belongs to "new conns", not to this
                for url in (hurl, aurl):
                    run_wrk(d, url, conns=c, seconds=args.warmup, close=close, pids=[])
            for i in range(args.rounds):  # interleaved: drift on a shared box hits both
                hs.append(run_wrk(d, hurl, conns=c, seconds=secs, close=close, pids=hpids))
                as_.append(run_wrk(d, aurl, conns=c, seconds=secs, close=close, pids=apids))
                h, a = hs[-1], as_[-1]
                print(
                    f"  [{label} {i + 1}/{args.rounds}] HAProxy {h.rps:.0f} req/s "
                    f"{h.per_cpu():.0f}/CPU-s, Atoll {a.rps:.0f} req/s {a.per_cpu():.0f}/CPU-s",
                    file=sys.stderr,
                    flush=True,
                )
            rows.append((label, median_result(hs), median_result(as_), unit))

        tls = f"https://{NAME}:{{}}/"
        pair(
            "passthrough keep-alive",
            tls.format(PORTS["haproxy"]) + "small.txt",
            tls.format(PORTS["atoll"]) + "small.txt",
            close=False,
            c=conns,
            unit="req",
        )
        pair(
            "passthrough new conns",
            tls.format(PORTS["haproxy"]) + "small.txt",
            tls.format(PORTS["atoll"]) + "small.txt",
            close=True,
            c=conns,
            unit="req",
        )
        pair(
            "passthrough bulk 64MiB",
            tls.format(PORTS["haproxy"]) + "bulk.bin",
            tls.format(PORTS["atoll"]) + "bulk.bin",
            close=False,
            c=4,
            unit="MB",
        )
        plain = "http://" + EGRESS + ":{}/small.txt"
        pair(
            "termination keep-alive",
            plain.format(PORTS["haproxy_egress"]),
            plain.format(PORTS["atoll_egress"]),
            close=False,
            c=conns,
            unit="req",
        )
        pair(
            "termination new conns",
            plain.format(PORTS["haproxy_egress"]),
            plain.format(PORTS["atoll_egress"]),
            close=True,
            c=conns,
            unit="req",
        )
        bulk = "http://" + EGRESS + ":{}/bulk.bin"
        pair(
            "termination bulk 64MiB",
            bulk.format(PORTS["haproxy_egress"]),
            bulk.format(PORTS["atoll_egress"]),
            close=False,
            c=4,
            unit="MB",
        )

        print(
            f"{'scenario':26} {'HAProxy':>22} {'Atoll':>22} {'ratio':>6} | "
            f"{'per proxy CPU-s H':>17} {'A':>10} {'ratio':>6} | p99 ms H / A   errors H/A"
        )
        for label, h, a, unit in rows:
            if unit == "MB":
                hv, av = f"{h.mbps:9.1f} MB/s", f"{a.mbps:9.1f} MB/s"
                ratio = a.mbps / h.mbps if h.mbps else float("nan")
                hc, ac = h.mb_per_cpu(secs), a.mb_per_cpu(secs)
            else:
                hv, av = f"{h.rps:9.0f} req/s", f"{a.rps:9.0f} req/s"
                ratio = a.rps / h.rps if h.rps else float("nan")
                hc, ac = h.per_cpu(), a.per_cpu()
            print(
                f"{label:26} {hv:>22} {av:>22} {ratio:5.2f}x | {hc:17.0f} {ac:10.0f} "
                f"{ac / hc if hc else float('nan'):5.2f}x | {h.p99_ms:6.1f} / {a.p99_ms:6.1f}   "
                f"{h.errors}/{a.errors}"
            )

        _, metrics_body = http_get(f"http://{HOST}:{PORTS['east_admin']}/metrics")
        exposition = metrics_body.decode()
        hs = server_counts(exposition, "atoll_gateway_tls_handshakes_total", "resumed")
        streams = server_counts(exposition, "atoll_gateway_tunnel_streams_total", "reused")
        print(
            f"east gateway as server: TLS handshakes {hs.get('false', 0):.0f} full, "
            f"{hs.get('true', 0):.0f} resumed; pooled-tunnel streams "
            f"{streams.get('true', 0) + streams.get('false', 0):.0f}, of which "
            f"{streams.get('true', 0):.0f} on a reused tunnel"
        )

        # churn with an fd-leak check (the gateway under connection churn)
        time.sleep(1.0)  # let the last runs' connections close
        fds_before = fd_count(east.pid, f"{HOST}:{PORTS['east_admin']}")
        if fds_before > fds_start + 16:
            print(f"FD LEAK during the runs: east gateway fds {fds_start} -> {fds_before}")
        churn = run_wrk(
            d,
            tls.format(PORTS["atoll"]) + "small.txt",
            conns=64,
            seconds=secs,
            close=True,
            pids=apids,
        )
        time.sleep(1.0)
        fds_after = fd_count(east.pid, f"{HOST}:{PORTS['east_admin']}")
        print(
            f"churn: {churn.requests} new connections through Atoll passthrough in {secs:.0f}s "
            f"({churn.errors} errors); east gateway fds {fds_before} -> {fds_after} "
            f"({'no leak' if fds_after <= fds_before + 2 else f'LEAK +{fds_after - fds_before}'})"
        )
        peaks = {
            side: sum(proc_usage(pid).peak_rss for pid in pids) / 2**20
            for side, pids in (("HAProxy", hpids), ("Atoll", apids))
        }
        print(
            f"peak RSS of the two proxy processes: HAProxy {peaks['HAProxy']:.0f} MiB, "
            f"Atoll {peaks['Atoll']:.0f} MiB ({peaks['Atoll'] / peaks['HAProxy']:.2f}x)"
        )
        for p in procs:
            p.check_alive("benchmarking")
        return 0
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for p in reversed(procs):
            p.stop()
        if args.keep:
            print(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
