"""Federation client decisions and the bundle endpoint answer, without sockets."""

from __future__ import annotations

import datetime as dt
import json

from atoll_trust.bundle import BundleSet, parse_bundle, render_bundle
from atoll_trust.federation import (
    EndpointStatus,
    FetchFailed,
    FetchSucceeded,
    answer_bundle_request,
    apply_fetch_result,
    next_poll_delay,
)
from atoll_trust.rotation import (
    GeneratingAuthorityFactory,
    RotationPolicy,
    bootstrap_ca_state,
    rotate,
)
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.testing import T0

B = TrustDomain("b.atoll")
STATE = bootstrap_ca_state(B, now=T0, policy=RotationPolicy())


def test_poll_delay_is_a_quarter_of_the_hint_but_at_least_a_minute() -> None:
    assert next_poll_delay(None) == dt.timedelta(seconds=75)
    assert next_poll_delay(3600) == dt.timedelta(minutes=15)
    assert next_poll_delay(100) == dt.timedelta(minutes=1)
    assert next_poll_delay(0) == dt.timedelta(minutes=1)


def test_success_then_failures_keep_the_last_good_bundle() -> None:
    status = EndpointStatus(B, "https://b.example/")
    doc = render_bundle(STATE.bundle(refresh_hint=600))
    status, bundles = apply_fetch_result(status, FetchSucceeded(T0, doc), BundleSet())
    assert bundles.get(B) == STATE.bundle(refresh_hint=600)
    assert status.last_success == T0 and status.next_poll_at == T0 + dt.timedelta(seconds=150)
    good = bundles

    later = T0 + dt.timedelta(minutes=3)
    for result in (
        FetchFailed(later, "connection refused"),
        FetchSucceeded(later, b"{garbage"),
        FetchSucceeded(
            later,
            render_bundle(
                STATE.bundle(refresh_hint=600).__class__(
                    B, STATE.bundle().x509_authorities, sequence=0
                )
            ),
        ),
    ):
        status, bundles = apply_fetch_result(status, result, bundles)
        assert bundles == good
    assert status.consecutive_failures == 3
    assert status.last_success == T0 and status.last_attempt == later
    assert status.last_error is not None and "lower than the stored" in status.last_error

    rotated, _ = rotate(
        STATE,
        now=T0 + dt.timedelta(hours=12),
        policy=RotationPolicy(),
        factory=GeneratingAuthorityFactory(),
    )
    status, bundles = apply_fetch_result(
        status, FetchSucceeded(later, render_bundle(rotated.bundle())), bundles
    )
    assert status.consecutive_failures == 0 and status.last_error is None
    stored = bundles.get(B)
    assert stored is not None and stored.sequence == rotated.sequence


def test_bundle_endpoint_answers() -> None:
    bundle = STATE.bundle()
    ok = answer_bundle_request("GET", "/", bundle)
    assert ok.status == 200 and ok.content_type == "application/json"
    assert parse_bundle(ok.body, trust_domain=B) == bundle
    assert json.loads(ok.body)["spiffe_sequence"] == STATE.sequence
    assert answer_bundle_request("GET", "/?x=1", bundle).status == 200
    assert answer_bundle_request("HEAD", "/", bundle).body == b""
    assert answer_bundle_request("GET", "/other", bundle).status == 404
    assert answer_bundle_request("POST", "/", bundle).status == 405
