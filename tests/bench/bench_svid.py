"""X.509-SVID issuance throughput on one core, as ratios against peers measured in the same run.

Run: ``.venv/bin/python tests/bench/bench_svid.py [--seconds 2]``

What is measured (each for ``--seconds`` of wall time, single process, single thread):

* **atoll mint** — :func:`atoll_trust.ca.mint_x509_svid`: generate a P-256 key
  pair and issue a complete X.509-SVID (what the Workload API does per identity);
* **atoll issue (CSR-style)** — :func:`atoll_trust.ca.issue_x509_svid` over a
  pre-generated public key (what signing a workload's CSR would cost);
* **floor: raw cryptography** — a P-256 key generation plus one ECDSA-SHA256
  signature over 512 bytes with the same ``cryptography`` library: the
  unavoidable crypto work of a mint, without building any certificate;
* **peer: openssl speed** — ``openssl speed ecdsap256`` sign/s, OpenSSL's C
  signing rate on this machine (signature only, no key generation, no X.509).

The goal in issue 3 is >= 2,000 mints/s on one core with ECDSA P-256.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from atoll_trust.ca import generate_x509_authority, issue_x509_svid, mint_x509_svid
from atoll_trust.spiffe_id import TrustDomain

GOAL_PER_SECOND = 2000.0


def _rate(fn: Callable[[], object], seconds: float) -> float:
    for _ in range(20):  # warm up
        fn()
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            fn()
        count += 50
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def _openssl_sign_rate(seconds: float) -> float | None:
    exe = shutil.which("openssl")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "speed", "-seconds", str(max(1, round(seconds))), "ecdsap256"],
            capture_output=True,
            text=True,
            timeout=60 + 4 * seconds,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    match = re.search(r"ecdsa \(nistp256\)\s+\S+\s+\S+\s+([0-9.]+)", out)
    return float(match.group(1)) if match else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="time per measurement (default 2)"
    )
    args = parser.parse_args(argv)
    seconds = max(0.2, min(args.seconds, 30.0))

    td = TrustDomain("bench.atoll")
    now = dt.datetime.now(dt.UTC)
    ca = generate_x509_authority(td, now=now, ttl=dt.timedelta(days=1))
    sid = td.spiffe_id("ns", "default", "sa", "web")
    ttl = dt.timedelta(hours=1)
    fixed_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    payload = b"x" * 512

    def floor() -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        ca.private_key.sign(payload, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg,arg-type]
        del key

    results = {
        "atoll mint (keygen + X.509-SVID)": _rate(
            lambda: mint_x509_svid(ca, sid, now=now, ttl=ttl), seconds
        ),
        "atoll issue (CSR-style, no keygen)": _rate(
            lambda: issue_x509_svid(ca, sid, public_key=fixed_key, now=now, ttl=ttl), seconds
        ),
        "floor: raw cryptography keygen + sign": _rate(floor, seconds),
    }
    openssl = _openssl_sign_rate(seconds)
    mint = results["atoll mint (keygen + X.509-SVID)"]
    floor_rate = results["floor: raw cryptography keygen + sign"]
    print(f"{'measurement':42} {'per second':>12}")
    for name, rate in results.items():
        print(f"{name:42} {rate:12,.0f}")
    if openssl is not None:
        print(f"{'peer: openssl speed ecdsap256 (sign only)':42} {openssl:12,.0f}")
    print()
    print(f"atoll mint / raw-cryptography floor   = {mint / floor_rate:.2f}")
    if openssl is not None:
        print(f"atoll mint / openssl C sign rate      = {mint / openssl:.3f}")
    print(f"atoll mint / goal ({GOAL_PER_SECOND:,.0f}/s)           = {mint / GOAL_PER_SECOND:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
