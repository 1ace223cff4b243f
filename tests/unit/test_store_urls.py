"""Store URL parsing (pure) and open_store (builds the right backend)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atoll.errors import InvalidError
from atoll.store.urls import EtcdUrl, SqliteUrl, open_store, parse_store_url


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("sqlite:///var/lib/atoll/store.db", SqliteUrl(path="/var/lib/atoll/store.db")),
        ("sqlite://state/atoll.db", SqliteUrl(path="state/atoll.db")),
        (
            "sqlite:///x.db?synchronous=normal&retain=500",
            SqliteUrl(path="/x.db", synchronous="NORMAL", retain_revisions=500),
        ),
        ("sqlite:///x.db?retain=all", SqliteUrl(path="/x.db", retain_revisions=None)),
        ("etcd://127.0.0.1:2379", EtcdUrl(endpoints=(("127.0.0.1", 2379),))),
        (
            "etcd://127.0.0.1:2379,127.0.0.1:22379/",
            EtcdUrl(endpoints=(("127.0.0.1", 2379), ("127.0.0.1", 22379))),
        ),
        ("etcd://etcd.example", EtcdUrl(endpoints=(("etcd.example", 2379),))),
        ("etcd://[::1]:2379?timeout=2.5", EtcdUrl(endpoints=(("::1", 2379),), timeout=2.5)),
    ],
)
def test_accepted_forms(url: str, parsed: SqliteUrl | EtcdUrl) -> None:
    assert parse_store_url(url) == parsed


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/var/lib/atoll.db",
        "sqlite://",
        "sqlite:///dir/",
        "sqlite:///x.db?synchronous=maybe",
        "sqlite:///x.db?retain=-1",
        "sqlite:///x.db?color=blue",
        "etcd://",
        "etcd://127.0.0.1:2379,",
        "etcd://127.0.0.1:0",
        "etcd://127.0.0.1:99999",
        "etcd://127.0.0.1:port",
        "etcd://user@host:2379",
        "etcd://127.0.0.1?timeout=0",
        "etcd://127.0.0.1?timeout=soon",
        "redis://localhost:6379",
        "postgres://db/atoll",
    ],
)
def test_rejected_forms_say_what_is_accepted(url: str) -> None:
    with pytest.raises(InvalidError) as info:
        parse_store_url(url)
    assert "sqlite:///" in str(info.value) and "etcd://" in str(info.value)
    assert info.value.field == "store_url"


def check_parsed(url: str) -> None:
    """Parsing either fails with InvalidError or yields a well-formed result."""
    try:
        parsed = parse_store_url(url)
    except InvalidError:
        return
    if isinstance(parsed, EtcdUrl):
        assert parsed.endpoints
        assert all(host and 0 < port < 65536 for host, port in parsed.endpoints)
        assert 0 < parsed.timeout <= 600
    else:
        assert parsed.path and not parsed.path.endswith("/")
        assert parsed.synchronous in ("FULL", "NORMAL", "OFF")


@given(st.text(max_size=80))
def test_any_text_parses_or_is_an_invalid_error(text: str) -> None:
    check_parsed(text)


@given(st.sampled_from(["sqlite://", "etcd://"]), st.text(max_size=60))
def test_any_suffix_parses_or_is_an_invalid_error(scheme: str, rest: str) -> None:
    check_parsed(scheme + rest)


async def test_open_store_builds_each_backend(tmp_path: Path) -> None:
    from atoll.store.etcd import EtcdStore
    from atoll.store.sqlite import SqliteStore

    sqlite = open_store(f"sqlite://{tmp_path}/s.db")
    assert isinstance(sqlite, SqliteStore)
    assert (await sqlite.put("k", b"v")).version == 1
    await sqlite.close()
    etcd = open_store("etcd://127.0.0.1:2379,127.0.0.1:22379")
    assert isinstance(etcd, EtcdStore)
    assert etcd.endpoints == (("127.0.0.1", 2379), ("127.0.0.1", 22379))
    await etcd.close()  # never connected: nothing to do
    with pytest.raises(InvalidError, match="IP addresses"):
        open_store("etcd://etcd-0:2379,etcd-1:2379")
