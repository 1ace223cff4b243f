"""DNS benchmark: Atoll (geo strategy) against Knot, BIND and PowerDNS-geoip.

Run from the repository root::

    python -m tests.bench.bench_dns                      # ~2.5 min: 4 servers x 3 rounds x 10 s
    python -m tests.bench.bench_dns --duration 5 --rounds 2 --servers atoll,knot
    python -m tests.bench.bench_dns --ecs                # also an Atoll run with ECS in every query

Every server serves the same 10-name zone on its own loopback address
(127.0.30.x; BIND on 127.0.0.1, as it binds only interface addresses) and is
queried by Debian's ``dnsperf`` with A queries for all 10 names, in the same
run. The script installs nothing: it checks for
``dnsperf``, ``knotd``, ``named``, ``pdns_server`` with the geoip backend and
the GeoIP country database (Debian packages dnsperf, knot, bind9, pdns-server,
pdns-backend-geoip, geoip-database) and skips a peer that is missing.

* Atoll: ``<name>.geo.gslb.test``, ten services with three clusters each in
  regions eu / na / as, TrafficPolicy ``geo``; 127.0.0.0/8 is mapped to ``eu``,
  so every query is located (by the resolver's address, or by ECS with
  ``--ecs``) and answered with the nearest region's address.
* Knot 3.2 (1 UDP worker) and BIND 9.18 (``-n 1``): the static zone of
  ``shared/notes/peer-configs/gslb.test.zone`` (no geo logic: the bar to reach).
* PowerDNS 4.7 with the geoip backend (1 receiver thread): ``%cn``
  (continent) answers from GeoIP.dat, as in ``peer-configs/pdns-geo.yaml``.

Method (as in ``shared/notes/peer-baselines.md``): the servers are pinned to
CPU ``--server-cpu`` and dnsperf to ``--client-cpu`` with ``taskset``; all
servers are started first, then each round runs dnsperf against each server
in turn (rounds interleaved, so drifting load on a shared machine is spread
over all servers) for ``--duration`` seconds with ``--clients`` clients,
saturating (no rate limit); the server's CPU time (all its processes) is read
from /proc before and after. Per server the median round is reported: QPS, queries per
server CPU-second, and p50/p99 latency from a separate, shorter dnsperf
``-v`` run (per-query latencies; printing them costs dnsperf CPU, so that
run is not used for QPS). Ratios are against Knot and against PowerDNS-geoip
measured in the same run. This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.bench._procs import BenchError, ServerProcess, free_port, proc_usage

NAMES = ("www", "api", "app", "cdn", "login", "static", "img", "video", "mail", "ns1")
ZONE = "gslb.test."
GEOIP_DAT = Path("/usr/share/GeoIP/GeoIP.dat")
#: BIND listens only on addresses configured on an interface, hence 127.0.0.1 for it
ADDRESSES = {
    "atoll": "127.0.30.10",
    "bind": "127.0.0.1",
    "knot": "127.0.30.12",
    "pdns-geoip": "127.0.30.13",
}
ECS_SUBNET = "10.2.0.0/24"  # mapped to region "na" in the Atoll zone


@dataclass(frozen=True)
class Round:
    qps: float
    completed: int
    lost: int
    cpu_seconds: float

    @property
    def per_cpu(self) -> float:
        return self.completed / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")


@dataclass(frozen=True)
class Result:
    server: str
    qps: float
    per_cpu: float
    p50_ms: float
    p99_ms: float
    lost: int
    rounds: tuple[Round, ...]


# -- zone content ------------------------------------------------------------------------


def _zone_file() -> str:
    lines = [
        f"$ORIGIN {ZONE}",
        "$TTL 30",
        f"@ IN SOA ns1.{ZONE} hostmaster.{ZONE} 2024010101 7200 3600 86400 30",
        f"@ IN NS ns1.{ZONE}",
    ]
    lines += [f"{name} IN A 192.0.2.{i}" for i, name in enumerate(NAMES, start=1)]
    return "\n".join(lines) + "\n"


def _pdns_yaml() -> str:
    z = ZONE.rstrip(".")
    out = ["domains:", f"- domain: {z}", "  ttl: 30", "  records:"]
    out += [
        f"    {z}:",
        f"      - soa: ns1.{z} hostmaster.{z} 2024010101 7200 3600 86400 30",
        f"      - ns: ns1.{z}",
    ]
    for i, name in enumerate(NAMES, start=1):
        for cont, base in (("unknown", 0), ("eu", 100), ("na", 150), ("as", 200)):
            out += [f"    {cont}.{name}.geo.{ZONE.rstrip('.')}:", f"      - a: 192.0.2.{base + i}"]
    out.append("  services:")
    out += [f"    {n}.{ZONE.rstrip('.')}: '%cn.{n}.geo.{ZONE.rstrip('.')}'" for n in NAMES]
    return "\n".join(out) + "\n"


def free_udp_tcp_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host`` a moment ago."""
    for _ in range(50):
        port = free_port(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise BenchError(f"no free port on {host}")


def _atoll_files(workdir: Path, workers: int, port: int) -> tuple[Path, Path]:
    from atoll_dns.snapshot import build_zone
    from atoll_dns.testing import make_import, make_policy, make_region, sample_config

    cfg = sample_config(
        zone=ZONE,
        listen_host=ADDRESSES["atoll"],
        listen_port=port,
        workers=workers,
        nameservers=[{"name": "ns1", "addresses": ["192.0.2.10"]}],
        client_networks=[
            {"network": "127.0.0.0/8", "region": "eu"},
            {"network": "10.1.0.0/16", "region": "eu"},
            {"network": "10.2.0.0/16", "region": "na"},
            {"network": "10.3.0.0/16", "region": "as"},
        ],
        latency_sample_every=64,
    )
    imports = [
        make_import(
            "geo",
            name,
            [
                ("eu-1", "eu", [f"192.0.2.{100 + i}"], True),
                ("na-1", "na", [f"192.0.2.{150 + i}"], True),
                ("as-1", "as", [f"192.0.2.{200 + i}"], True),
            ],
        )
        for i, name in enumerate(NAMES, start=1)
    ]
    policies = [
        make_policy("geo", n, strategy="geo", priorities=[["eu"], ["na"], ["as"]]) for n in NAMES
    ]
    regions = [
        make_region("eu", 50.1, 8.7),
        make_region("na", 38.9, -77.0),
        make_region("as", 1.3, 103.8),
    ]
    snap = build_zone(cfg, imports, policies, regions)
    config_path = workdir / "atoll-config.json"
    snap_path = workdir / "atoll-zone.json"
    config_path.write_text(cfg.model_dump_json())
    snap_path.write_text(snap.model_dump_json())
    return config_path, snap_path


# -- servers -------------------------------------------------------------------------------


def _pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv]


def _setup(
    server: str, workdir: Path, cpu: int, atoll_workers: int, port: int
) -> tuple[list[str], list[str]]:
    """(argv, query names) for one server; raises BenchError when it is not installed."""
    d = workdir / server
    d.mkdir(parents=True, exist_ok=True)
    addr = ADDRESSES[server]
    plain = [f"{n}.{ZONE}" for n in NAMES]
    if server == "atoll":
        config_path, snap_path = _atoll_files(d, atoll_workers, port)
        argv = [
            sys.executable,
            "-m",
            "tests.bench.bench_dns",
            "serve-atoll",
            "--config",
            str(config_path),
            "--snapshot",
            str(snap_path),
        ]
        if atoll_workers > 1:  # workers get the other CPUs too
            return argv, [f"{n}.geo.{ZONE}" for n in NAMES]
        return _pinned(cpu, argv), [f"{n}.geo.{ZONE}" for n in NAMES]
    if server == "knot":
        binary = _need("knotd", "knot")
        (d / "gslb.test.zone").write_text(_zone_file())
        (d / "knot.conf").write_text(
            f"server:\n    listen: {addr}@{port}\n    rundir: {d}\n    udp-workers: 1\n"
            f"    tcp-workers: 1\n    background-workers: 1\ndatabase:\n    storage: {d}\n"
            "log:\n  - target: stderr\n    any: warning\ntemplate:\n  - id: default\n"
            "    zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: none\n"
            f"zone:\n  - domain: gslb.test\n    file: {d}/gslb.test.zone\n"
        )
        return _pinned(cpu, [binary, "-c", str(d / "knot.conf")]), plain
    if server == "bind":
        binary = _need("named", "bind9")
        (d / "work").mkdir(exist_ok=True)
        (d / "gslb.test.zone").write_text(_zone_file())
        (d / "named.conf").write_text(
            f'options {{\n directory "{d}/work";\n pid-file "{d}/work/named.pid";\n'
            f' session-keyfile "{d}/work/session.key";\n listen-on port {port} {{ {addr}; }};\n'
            " listen-on-v6 { none; };\n recursion no;\n dnssec-validation no;\n"
            " allow-query { any; };\n minimal-responses yes;\n notify no;\n};\ncontrols { };\n"
            f'zone "gslb.test" {{ type primary; file "{d}/gslb.test.zone"; }};\n'
        )
        return _pinned(cpu, [binary, "-g", "-n", "1", "-4", "-c", str(d / "named.conf")]), plain
    if server == "pdns-geoip":
        binary = _need("pdns_server", "pdns-server")
        if not any(Path("/usr/lib").glob("**/pdns/libgeoipbackend.so")):
            raise BenchError("PowerDNS geoip backend missing (Debian: pdns-backend-geoip)")
        if not GEOIP_DAT.exists():
            raise BenchError(f"{GEOIP_DAT} missing (Debian: geoip-database)")
        (d / "pdns-geo.yaml").write_text(_pdns_yaml())
        (d / "pdns.conf").write_text(
            f"launch=geoip\ngeoip-zones-file={d}/pdns-geo.yaml\ngeoip-database-files={GEOIP_DAT}\n"
            f"local-address={addr}:{port}\nsocket-dir={d}\nguardian=no\ndaemon=no\n"
            "disable-syslog=yes\nloglevel=4\nsecurity-poll-suffix=\nwebserver=no\napi=no\n"
            "receiver-threads=1\ndistributor-threads=1\nreuseport=no\n"
            "edns-subnet-processing=yes\n"
        )
        return _pinned(cpu, [binary, f"--config-dir={d}"]), plain
    raise BenchError(f"unknown server {server!r}")


def _need(binary: str, package: str) -> str:
    path = shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()),
        None,
    )
    if path is None:
        raise BenchError(f"{binary} not found (Debian package {package})")
    return path


def _answers(addr: str, port: int, qname: str) -> bool:
    try:
        reply = dns.query.udp(dns.message.make_query(qname, "A"), addr, port=port, timeout=0.5)
    except (OSError, dns.exception.DNSException):
        return False
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants (Atoll worker processes)."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(BenchError):
            total += proc_usage(p).cpu_seconds
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return total


# -- dnsperf -------------------------------------------------------------------------------


def _dnsperf(
    args: argparse.Namespace,
    addr: str,
    port: int,
    qfile: Path,
    seconds: float,
    *,
    verbose: bool,
    ecs: bool,
) -> str:
    argv = [
        "dnsperf",
        "-s",
        addr,
        "-p",
        str(port),
        "-d",
        str(qfile),
        "-l",
        str(seconds),
        "-c",
        str(args.clients),
        "-q",
        str(args.outstanding),
        "-t",
        "2",
    ]
    if ecs:
        argv += ["-E", f"8:{_ecs_hex(ECS_SUBNET)}"]
    if verbose:
        argv.append("-v")
    out = subprocess.run(
        _pinned(args.client_cpu, argv), capture_output=True, text=True, timeout=seconds + 30
    )
    if out.returncode != 0:
        raise BenchError(f"dnsperf failed: {out.stderr.strip()[-300:]}")
    return out.stdout


def _ecs_hex(subnet: str) -> str:
    net, _, length = subnet.partition("/")
    prefix = int(length)
    addr = bytes(int(x) for x in net.split("."))[: (prefix + 7) // 8]
    return (b"\x00\x01" + bytes((prefix, 0)) + addr).hex()


def _field(text: str, label: str) -> float:
    for line in text.splitlines():
        if line.strip().startswith(label):
            return float(line.split(":", 1)[1].split()[0])
    raise BenchError(f"dnsperf output has no {label!r}")


def _latencies(text: str) -> list[float]:
    out = []
    for line in text.splitlines():
        if line.startswith("> "):
            with contextlib.suppress(ValueError, IndexError):
                out.append(float(line.split()[-1]))
    return out


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Target:
    """One server under test (started once; rounds of all targets are interleaved)."""

    label: str
    server: str
    ecs: bool
    addr: str
    port: int
    qfile: Path
    proc: ServerProcess
    rounds: list[Round]


def start_target(server: str, args: argparse.Namespace, workdir: Path, *, ecs: bool) -> Target:
    addr = ADDRESSES[server]
    port = free_udp_tcp_port(addr)
    argv, names = _setup(
        server,
        workdir / (f"{server}-ecs" if ecs else server),
        args.server_cpu,
        args.atoll_workers,
        port,
    )
    label = f"{server}+ecs" if ecs else server
    qfile = workdir / f"{label}-queries.txt"
    qfile.write_text("".join(f"{n} A\n" for n in names))
    proc = ServerProcess(label, argv, log_path=workdir / f"{label}.log", cwd=Path.cwd()).start()
    try:
        proc.wait_until(lambda: _answers(addr, port, names[0]), "first answer", timeout=60)
        target = Target(label, server, ecs, addr, port, qfile, proc, [])
        _dnsperf(args, addr, port, qfile, 1, verbose=False, ecs=ecs)  # warm up
    except BaseException:
        proc.stop()
        raise
    return target


def run_round(target: Target, args: argparse.Namespace) -> Round:
    before = _tree_cpu(target.proc.pid)
    text = _dnsperf(
        args, target.addr, target.port, target.qfile, args.duration, verbose=False, ecs=target.ecs
    )
    cpu = _tree_cpu(target.proc.pid) - before
    target.proc.check_alive("measuring")
    return Round(
        qps=_field(text, "Queries per second"),
        completed=int(_field(text, "Queries completed")),
        lost=int(_field(text, "Queries lost")),
        cpu_seconds=cpu,
    )


def finish(target: Target, args: argparse.Namespace) -> Result:
    lat = _latencies(
        _dnsperf(
            args,
            target.addr,
            target.port,
            target.qfile,
            args.latency_seconds,
            verbose=True,
            ecs=target.ecs,
        )
    )
    rounds = target.rounds
    median = sorted(rounds, key=lambda r: r.qps)[len(rounds) // 2]
    return Result(
        server=target.label,
        qps=median.qps,
        per_cpu=statistics.median(r.per_cpu for r in rounds),
        p50_ms=_percentile(lat, 0.50) * 1000,
        p99_ms=_percentile(lat, 0.99) * 1000,
        lost=sum(r.lost for r in rounds),
        rounds=tuple(rounds),
    )


def _ratio(value: float, base: Result | None, attr: str) -> str:
    if base is None:
        return "   -  "
    ref = getattr(base, attr)
    return f"{value / ref:5.2f}x" if ref else "   -  "


def report(results: list[Result]) -> str:
    by = {r.server: r for r in results}
    knot, pdns = by.get("knot"), by.get("pdns-geoip")
    head = (
        f"{'server':<12} {'QPS':>9} {'vs Knot':>8} {'vs PDNS':>8} {'QPS/CPU-s':>10} "
        f"{'vs Knot':>8} {'vs PDNS':>8} {'p50 ms':>7} {'p99 ms':>7} {'lost':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.server:<12} {r.qps:9.0f} {_ratio(r.qps, knot, 'qps'):>8} "
            f"{_ratio(r.qps, pdns, 'qps'):>8} "
            f"{r.per_cpu:10.0f} {_ratio(r.per_cpu, knot, 'per_cpu'):>8} "
            f"{_ratio(r.per_cpu, pdns, 'per_cpu'):>8} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.lost:6d}"
        )
    lines.append("")
    lines.append(
        "rounds (QPS / server CPU-s used): "
        + "; ".join(
            f"{r.server}: " + ", ".join(f"{x.qps:.0f}/{x.cpu_seconds:.1f}" for x in r.rounds)
            for r in results
        )
    )
    return "\n".join(lines)


# -- the Atoll server process ------------------------------------------------------------


def serve_atoll(config_path: Path, snapshot_path: Path) -> None:
    """Run Atoll's DNS server from files (uvloop), until SIGTERM."""
    import signal

    from atoll_dns.config import DnsConfig
    from atoll_dns.server import run_dns
    from atoll_dns.snapshot import ZoneSnapshot

    config = DnsConfig.model_validate_json(config_path.read_text())
    snapshot = ZoneSnapshot.model_validate_json(snapshot_path.read_text())

    async def until_terminated(_server: object) -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    run_dns(config, initial=snapshot, on_start=until_terminated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_dns",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Prints QPS, QPS per server CPU-second and p50/p99 latency, with ratios "
        "against Knot and PowerDNS-geoip measured in the same run.",
    )
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve-atoll", help="(internal) run the Atoll server of a benchmark")
    serve.add_argument("--config", type=Path, required=True)
    serve.add_argument("--snapshot", type=Path, required=True)
    parser.add_argument(
        "--servers",
        default="atoll,knot,bind,pdns-geoip",
        help="comma-separated subset of atoll,knot,bind,pdns-geoip",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (3)")
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=3.0,
        help="seconds of the dnsperf -v latency run (3)",
    )
    parser.add_argument("--clients", type=int, default=10, help="dnsperf -c (10)")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (100)")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU for the server (0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU for dnsperf (1)")
    parser.add_argument(
        "--atoll-workers",
        type=int,
        default=1,
        help="Atoll SO_REUSEPORT processes (1; >1 is not pinned)",
    )
    parser.add_argument(
        "--ecs", action="store_true", help=f"also run Atoll with ECS {ECS_SUBNET} in every query"
    )
    parser.add_argument("--workdir", type=Path, help="keep configs and logs here")
    args = parser.parse_args(argv)
    if args.command == "serve-atoll":
        serve_atoll(args.config, args.snapshot)
        return 0
    if shutil.which("dnsperf") is None:
        print("dnsperf not found (Debian package dnsperf); nothing to measure", file=sys.stderr)
        return 2
    if shutil.which("taskset") is None:
        print("taskset not found (util-linux)", file=sys.stderr)
        return 2
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    runs: list[tuple[str, bool]] = [(s, False) for s in servers]
    if args.ecs and "atoll" in servers:
        runs.append(("atoll", True))
    est = len(runs) * (args.rounds * args.duration + args.latency_seconds + 3)
    print(
        f"# {len(runs)} runs, about {est:.0f} s; server on CPU {args.server_cpu}, "
        f"dnsperf on CPU {args.client_cpu}, {args.clients} clients",
        flush=True,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="atoll-bench-dns-"))
    workdir.mkdir(parents=True, exist_ok=True)
    targets: list[Target] = []
    results: list[Result] = []
    try:
        for server, ecs in runs:
            try:
                targets.append(start_target(server, args, workdir, ecs=ecs))
            except BenchError as exc:
                print(f"# {server}: skipped: {exc}", flush=True)
        # rounds interleaved across servers, so a slow phase of a shared machine
        # hits every server rather than one
        for n in range(args.rounds):
            for target in targets:
                r = run_round(target, args)
                target.rounds.append(r)
                print(
                    f"# round {n + 1} {target.label}: {r.qps:.0f} QPS, {r.per_cpu:.0f} per CPU-s",
                    flush=True,
                )
        for target in targets:
            results.append(finish(target, args))
    finally:
        for target in targets:
            target.proc.stop()
    print()
    print(report(results))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        json.dumps(
            {
                r.server: {
                    "qps": round(r.qps),
                    "qps_per_cpu_s": round(r.per_cpu),
                    "p50_ms": round(r.p50_ms, 3),
                    "p99_ms": round(r.p99_ms, 3),
                }
                for r in results
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
