"""Standard Webhooks verification: interop with the reference library, rotation, tolerance, hostile input."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from workers.config import ConfigError
from workers.ingress.webhook_server import SignatureError, SignatureVerifier, decode_secret

OLD = "whsec_" + base64.b64encode(b"old-secret-0123456789").decode()
NEW = "whsec_" + base64.b64encode(b"new-secret-9876543210").decode()
OTHER = "whsec_" + base64.b64encode(b"someone-elses-secret").decode()
NOW = 1_800_000_000
BODY = b'{"event":"InvoicePaid","occurred_at":"2027-01-15T08:00:00Z","data":{"client_id":1,"invoice_id":2}}'


def sign(secret: str, msg_id: str = "msg_1", ts: int = NOW, body: bytes = BODY) -> str:
    """A signature header as the reference implementation (``standardwebhooks``) writes it."""
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())


def verifier(*secrets: str, tolerance_s: float = 300, now: float = NOW) -> SignatureVerifier:
    return SignatureVerifier(list(secrets) or [NEW], tolerance_s=tolerance_s, clock=lambda: now)


def code_of(check: SignatureVerifier, msg_id: str | None, ts: str | None, sig: str | None, body: bytes = BODY) -> str:
    with pytest.raises(SignatureError) as caught:
        check.verify(msg_id, ts, sig, body)
    return caught.value.code


def test_a_signature_made_by_the_reference_library_is_accepted() -> None:
    verifier(NEW).verify("msg_1", str(NOW), sign(NEW), BODY)


def test_any_active_secret_verifies_during_rotation() -> None:
    """Rotation: the receiver holds the new and the old secret; a sender on either one is accepted."""
    check = verifier(NEW, OLD)
    check.verify("msg_1", str(NOW), sign(OLD), BODY)
    check.verify("msg_1", str(NOW), sign(NEW), BODY)
    assert code_of(check, "msg_1", str(NOW), sign(OTHER)) == "invalid_signature"


def test_one_matching_signature_among_several_is_enough() -> None:
    """Senders may send several space-separated signatures; unknown versions and junk are skipped."""
    header = " ".join(["v1a,notours", "v1,!!notbase64!!", sign(OTHER), "garbage", sign(OLD)])
    verifier(NEW, OLD).verify("msg_1", str(NOW), header, BODY)


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_timestamps_within_the_tolerance_are_accepted(skew: int) -> None:
    verifier(NEW).verify("msg_1", str(NOW + skew), sign(NEW, ts=NOW + skew), BODY)


@pytest.mark.parametrize("skew", [-301, 301, -86_400])
def test_timestamps_outside_the_tolerance_in_either_direction_are_stale(skew: int) -> None:
    assert code_of(verifier(NEW), "msg_1", str(NOW + skew), sign(NEW, ts=NOW + skew)) == "stale_timestamp"


def test_the_tolerance_is_configurable() -> None:
    check = verifier(NEW, tolerance_s=10)
    assert code_of(check, "msg_1", str(NOW - 11), sign(NEW, ts=NOW - 11)) == "stale_timestamp"


@pytest.mark.parametrize(
    ("msg_id", "ts", "sig"),
    [(None, str(NOW), "v1,x"), ("msg_1", None, "v1,x"), ("msg_1", str(NOW), None), ("", str(NOW), "v1,x")],
)
def test_missing_headers_are_reported_as_such(msg_id: str | None, ts: str | None, sig: str | None) -> None:
    assert code_of(verifier(NEW), msg_id, ts, sig) == "missing_signature"


@pytest.mark.parametrize("ts", ["1.8e9", "-5", "abc", "１２３", "²", "9" * 16])
def test_timestamps_that_are_not_plain_integer_seconds_are_invalid(ts: str) -> None:
    assert code_of(verifier(NEW), "msg_1", ts, sign(NEW)) == "invalid_timestamp"


def test_a_changed_body_id_or_timestamp_breaks_the_signature() -> None:
    check, good = verifier(NEW), sign(NEW)
    assert code_of(check, "msg_1", str(NOW), good, BODY + b" ") == "invalid_signature"
    assert code_of(check, "msg_2", str(NOW), good) == "invalid_signature"
    assert code_of(check, "msg_1", str(NOW + 1), good) == "invalid_signature"


def test_secrets_decode_like_the_reference_library() -> None:
    assert decode_secret(NEW) == b"new-secret-9876543210"
    assert decode_secret("whsec_c2VjcmV0") == b"secret"  # unpadded base64 is accepted, as upstream does
    with pytest.raises(ConfigError):
        decode_secret("whsec_")
    with pytest.raises(ConfigError):
        SignatureVerifier([], tolerance_s=300)


@settings(max_examples=300, deadline=None)
@given(
    msg_id=st.one_of(st.none(), st.text(max_size=300)),
    ts=st.one_of(st.none(), st.text(max_size=30), st.integers(NOW - 400, NOW + 400).map(str)),
    sig=st.one_of(st.none(), st.text(max_size=400), st.lists(st.text(max_size=60)).map(" ".join)),
    body=st.binary(max_size=512),
)
def test_hostile_input_only_ever_raises_signature_error(
    msg_id: str | None, ts: str | None, sig: str | None, body: bytes
) -> None:
    try:
        verifier(NEW).verify(msg_id, ts, sig, body)
    except SignatureError:
        pass
