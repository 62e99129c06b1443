"""Consent link tokens: round trips, tampering, kind confusion, expiry, key rotation."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.pipeline.consent_links import (
    CONFIRMATION_TTL,
    PREFERENCES_TTL,
    BadToken,
    Confirmation,
    ConsentLinks,
    ExpiredToken,
)

KEY = b"k" * 32
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
LINKS = ConsentLinks("https://herald.test/", KEY)


def confirmation(**changes: object) -> Confirmation:
    values: dict[str, object] = {
        "contact_id": "ct_01HZZZZZZZZZZZZZZZZZZZZZZZ", "channel": "email", "purpose": "marketing",
        "store_id": "st_01HYYYYYYYYYYYYYYYYYYYYYYY", "wording_version": "signup-v3",
        "pending_since": datetime(2026, 5, 1, 11, 59, 58, 123456, tzinfo=UTC),
        "expires_at": NOW + CONFIRMATION_TTL, **changes}
    return Confirmation(**values)  # type: ignore[arg-type]


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_a_confirmation_round_trips() -> None:
    made = confirmation()
    url = LINKS.confirmation_url(made)
    assert url.startswith("https://herald.test/c/")
    got = LINKS.verify_confirmation(token_of(url), NOW)
    assert got == replace(made, expires_at=made.expires_at.replace(microsecond=0))  # whole seconds


def test_optional_fields_come_back_as_none() -> None:
    url = LINKS.confirmation_url(confirmation(store_id=None, wording_version=None))
    got = LINKS.verify_confirmation(token_of(url), NOW)
    assert got.store_id is None and got.wording_version is None


def test_a_preference_link_round_trips_and_expires() -> None:
    url = LINKS.preferences_url("ct_1", NOW)
    assert url.startswith("https://herald.test/p/")
    assert LINKS.verify_preferences(token_of(url), NOW).contact_id == "ct_1"
    assert LINKS.verify_preferences(token_of(url), NOW + PREFERENCES_TTL - timedelta(seconds=1)).contact_id == "ct_1"
    with pytest.raises(ExpiredToken):
        LINKS.verify_preferences(token_of(url), NOW + PREFERENCES_TTL)


def test_a_confirmation_expires_after_its_time() -> None:
    token = token_of(LINKS.confirmation_url(confirmation()))
    with pytest.raises(ExpiredToken):
        LINKS.verify_confirmation(token, NOW + CONFIRMATION_TTL)


def test_kinds_do_not_mix() -> None:
    with pytest.raises(BadToken):
        LINKS.verify_confirmation(token_of(LINKS.preferences_url("ct_1", NOW)), NOW)
    with pytest.raises(BadToken):
        LINKS.verify_preferences(token_of(LINKS.confirmation_url(confirmation())), NOW)


def test_another_key_is_refused_and_a_previous_key_still_verifies() -> None:
    old = ConsentLinks("https://herald.test", b"o" * 32)
    token = token_of(old.preferences_url("ct_1", NOW))
    with pytest.raises(BadToken) as raised:
        LINKS.verify_preferences(token, NOW)
    assert not isinstance(raised.value, ExpiredToken)
    rotated = ConsentLinks("https://herald.test", KEY, previous_keys=[b"o" * 32])
    assert rotated.verify_preferences(token, NOW).contact_id == "ct_1"


def test_an_expired_forgery_is_bad_not_expired() -> None:
    """Only a token we signed may be reported as expired."""
    forged = ConsentLinks("https://herald.test", b"f" * 32).preferences_url("ct_1", NOW - timedelta(days=365))
    with pytest.raises(BadToken) as raised:
        LINKS.verify_preferences(token_of(forged), NOW)
    assert not isinstance(raised.value, ExpiredToken)


@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_single_bit_flip_is_refused(position: int, flip: int) -> None:
    token = token_of(LINKS.confirmation_url(confirmation()))
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[position % len(raw)] ^= flip
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(BadToken):
        LINKS.verify_confirmation(tampered, NOW)


@pytest.mark.parametrize("token", ["", "a", "!!!!", "A" * 3000, "AAAA", "AAAAA"])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(BadToken):
        LINKS.verify_preferences(token, NOW)


def test_bad_construction_is_refused() -> None:
    with pytest.raises(ValueError, match="base URL"):
        ConsentLinks("ftp://x", KEY)
    with pytest.raises(ValueError, match="16 bytes"):
        ConsentLinks("https://x", b"short")
