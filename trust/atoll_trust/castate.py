"""Persist a :class:`~atoll_trust.rotation.CaState` with every private key sealed.

The file is JSON (version 1) so an operator can read what is in it — trust
domain, sequence, each key's state, validity and certificate — while the
private keys are opaque :mod:`~atoll_trust.kek` envelopes bound to the trust
domain::

    {"version": 1, "trust_domain": "eu.atoll", "sequence": 4,
     "x509": [{"state": "active", "published_at": "...", "forced": false,
               "certificate": "<PEM>", "key": "<base64 sealed PKCS#8>"}],
     "jwt":  [{"state": "active", "published_at": "...", "forced": false, "kid": "...",
               "not_before": "...", "not_after": "...", "key": "<base64 sealed PKCS#8>"}]}

Loading checks that each certificate matches its key. A file that does not
parse is :class:`CaStateCorruptError`; a key that does not open is
:class:`~atoll_trust.errors.KeyDecryptionError`. Both are fatal: an agent must
not silently start a new CA in place of a broken one. :func:`write_ca_state_file`
writes atomically (temporary file, fsync, rename) with mode 0600.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from atoll.fileio import write_private_file
from atoll_trust.ca import JwtAuthority, X509Authority
from atoll_trust.errors import CaStateCorruptError, KeyDecryptionError
from atoll_trust.kek import KeyEncryptor, open_private_key, seal_private_key
from atoll_trust.rotation import AuthorityState, CaState, Slot
from atoll_trust.spiffe_id import parse_trust_domain

__all__ = [
    "dump_ca_state",
    "load_ca_state",
    "read_ca_state_file",
    "write_ca_state_file",
]

VERSION = 1


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def dump_ca_state(state: CaState, encryptor: KeyEncryptor) -> bytes:
    td = state.trust_domain

    def sealed(key: Any) -> str:
        return base64.b64encode(seal_private_key(key, encryptor, trust_domain=td)).decode()

    doc = {
        "version": VERSION,
        "trust_domain": td.name,
        "sequence": state.sequence,
        "kek_id": encryptor.key_id,
        "x509": [
            {
                "state": s.state.value,
                "published_at": s.published_at.isoformat(),
                "forced": s.forced,
                "certificate": s.authority.certificate.public_bytes(
                    serialization.Encoding.PEM
                ).decode(),
                "key": sealed(s.authority.private_key),
            }
            for s in state.x509
        ],
        "jwt": [
            {
                "state": s.state.value,
                "published_at": s.published_at.isoformat(),
                "forced": s.forced,
                "kid": s.authority.key_id,
                "not_before": s.authority.not_before.isoformat(),
                "not_after": s.authority.not_after.isoformat(),
                "key": sealed(s.authority.private_key),
            }
            for s in state.jwt
        ],
    }
    return json.dumps(doc, indent=2).encode()


def load_ca_state(data: bytes, encryptor: KeyEncryptor) -> CaState:
    try:
        doc = json.loads(data)
        if doc.get("version") != VERSION:
            raise CaStateCorruptError(f"unsupported CA state version {doc.get('version')!r}")
        td = parse_trust_domain(doc["trust_domain"])
        x509_slots: list[Slot[X509Authority]] = []
        for entry in doc["x509"]:
            cert = x509.load_pem_x509_certificate(entry["certificate"].encode())
            key = open_private_key(
                base64.b64decode(entry["key"], validate=True), encryptor, trust_domain=td
            )
            if _spki(key.public_key()) != _spki(cert.public_key()):
                raise CaStateCorruptError("a CA certificate does not match its sealed key")
            x509_slots.append(
                Slot(
                    X509Authority(td, cert, key),
                    AuthorityState(entry["state"]),
                    dt.datetime.fromisoformat(entry["published_at"]),
                    bool(entry.get("forced", False)),
                )
            )
        jwt_slots: list[Slot[JwtAuthority]] = []
        for entry in doc["jwt"]:
            key = open_private_key(
                base64.b64decode(entry["key"], validate=True), encryptor, trust_domain=td
            )
            authority = JwtAuthority(
                td,
                str(entry["kid"]),
                key,
                dt.datetime.fromisoformat(entry["not_before"]),
                dt.datetime.fromisoformat(entry["not_after"]),
            )
            jwt_slots.append(
                Slot(
                    authority,
                    AuthorityState(entry["state"]),
                    dt.datetime.fromisoformat(entry["published_at"]),
                    bool(entry.get("forced", False)),
                )
            )
        sequence = doc["sequence"]
        if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
            raise CaStateCorruptError("sequence must be a non-negative integer")
    except (KeyDecryptionError, CaStateCorruptError):
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CaStateCorruptError(f"CA state is corrupt: {exc!r}") from exc
    return CaState(td, tuple(x509_slots), tuple(jwt_slots), sequence)


def write_ca_state_file(path: Path, state: CaState, encryptor: KeyEncryptor) -> None:
    """Atomically replace ``path`` with the sealed state (mode 0600)."""
    write_private_file(path, dump_ca_state(state, encryptor))


def read_ca_state_file(path: Path, encryptor: KeyEncryptor) -> CaState:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CaStateCorruptError(f"cannot read CA state {path}: {exc.strerror}") from exc
    return load_ca_state(data, encryptor)
