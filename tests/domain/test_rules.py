"""Pure rules: ids, identity normalisation, backoff."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.domain import contacts as rules
from herald.domain.auth import generate_api_key, hash_api_key, looks_like_api_key
from herald.domain.ids import new_id, ulid
from herald.domain.jobs import Backoff


def test_ids_sort_in_creation_order() -> None:
    earlier = [ulid(now_ms=1_700_000_000_000 + i) for i in range(50)]
    assert earlier == sorted(earlier)
    assert new_id("ct").startswith("ct_") and len(new_id("ct")) == 29
    with pytest.raises(ValueError, match="unknown id prefix"):
        new_id("zz")


def test_api_keys_are_random_and_well_formed() -> None:
    keys = {generate_api_key() for _ in range(200)}
    assert len(keys) == 200
    assert all(looks_like_api_key(k) for k in keys)
    assert len(hash_api_key(next(iter(keys)))) == 64


@pytest.mark.parametrize(("raw", "region", "e164"), [
    ("+1 (415) 555-0123", None, "+14155550123"),
    ("(11) 98765-4321", "BR", "+5511987654321"),
    ("030 901820", "DE", "+4930901820"),
    ("050 123 4567", "AE", "+971501234567"),
])
def test_phone_numbers_become_e164(raw: str, region: str | None, e164: str) -> None:
    assert rules.normalize_phone(raw, region) == e164


@pytest.mark.parametrize(("raw", "region", "why"), [
    ("98765-4321", None, "no country code"),
    ("+1 555", None, "not a valid number"),
    ("call me", "US", "not a phone number"),
])
def test_bad_phone_numbers_say_why(raw: str, region: str | None, why: str) -> None:
    with pytest.raises(rules.InvalidValue, match=why):
        rules.normalize_phone(raw, region)


def test_emails_keep_the_local_part_and_lower_the_domain() -> None:
    assert rules.normalize_email(" Ana@Example.COM ") == "Ana@example.com"
    for bad in ("no-at", "a@", "a@@b.com", "a b@example.com"):
        with pytest.raises(rules.InvalidValue):
            rules.normalize_email(bad)


def test_country_language_zone() -> None:
    assert rules.normalize_country("br") == "BR"
    assert rules.normalize_language("pt_br") == "pt-BR"
    assert rules.normalize_language("zh-Hant-TW") == "zh-Hant-TW"
    assert rules.normalize_timezone("Asia/Dubai") == "Asia/Dubai"
    for fn, bad in ((rules.normalize_country, "XX"), (rules.normalize_language, "klingon"),
                    (rules.normalize_timezone, "Europe/Atlantis")):
        with pytest.raises(rules.InvalidValue):
            fn(bad)


@given(attempt=st.integers(min_value=1, max_value=40), seed=st.integers(), base=st.floats(0.1, 60),
       cap=st.floats(1, 86_400))
def test_backoff_never_shrinks_and_respects_the_cap(attempt: int, seed: int, base: float, cap: float) -> None:
    policy = Backoff(base=base, cap=cap)
    this = policy.delay(attempt, random.Random(seed))
    following = policy.delay(attempt + 1, random.Random(seed + 1))
    assert 0 < this <= cap
    if base * 2 ** attempt <= cap:  # below the cap, the next wait is never shorter than this one
        assert following >= this
    ceiling = min(cap, base * 2 ** (attempt - 1))
    assert ceiling / 2 <= this <= ceiling
