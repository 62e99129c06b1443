"""The send-time policy's checks (domain/policy.py): one unit test per check, then hypothesis
property tests over random contacts, consents, suppressions, time zones and windows."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from herald.domain.localtime import Window, zones_for
from herald.domain.policy import (
    DEFAULT_SETTINGS_JSON,
    PolicyContext,
    PolicySettings,
    Recipient,
    SendRequest,
    SettingsInvalid,
    WhatsAppTemplate,
    best_channels,
    decide,
    decide_all,
    parse_settings,
    settings_json,
)

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # 10:00 in New York, 07:00 in Los Angeles
NO_LIMITS = PolicySettings()


def request(channel: str = "email", purpose: str = "marketing", contact: str | None = "c1",
            address: str | None = None, store: str | None = "st1", **kw: object) -> SendRequest:
    if address is None:
        address = "ana@example.net" if channel == "email" else "+12125550123"
    return SendRequest(message_id="m1", contact_id=contact, store_id=store, channel=channel, purpose=purpose,
                       address=address, sending_domain="shop.example" if channel == "email" else None,
                       **kw)  # type: ignore[arg-type]


def granted(ctx: PolicyContext, contact: str = "c1", channel: str = "email", purpose: str = "marketing",
            store: str | None = "st1", at: datetime = NOW - timedelta(days=30), state: str = "granted") -> None:
    ctx.consents[(contact, channel, purpose, store)] = (at, state)


def context(settings: PolicySettings = NO_LIMITS, **kw: object) -> PolicyContext:
    ctx = PolicyContext(settings=settings, domains={"shop.example": "verified"}, **kw)  # type: ignore[arg-type]
    ctx.recipients["c1"] = Recipient(timezone="America/New_York", phone="+12125550123", country="US")
    return ctx


# -- one test per check ------------------------------------------------------------------------------

def test_a_consented_marketing_email_is_sent() -> None:
    ctx = context()
    granted(ctx)
    assert decide(request(), ctx, NOW).verdict == "send"


@pytest.mark.parametrize(("reason", "purpose", "refused"), [
    ("unsubscribed", "marketing", True), ("unsubscribed", "transactional", False),
    ("manual", "transactional", False), ("hard_bounce", "transactional", True),
    ("complaint", "transactional", True), ("erased", "transactional", True), ("invalid", "marketing", True),
])
def test_suppression(reason: str, purpose: str, refused: bool) -> None:
    ctx = context()
    granted(ctx, purpose=purpose)
    ctx.suppressed[("email", "ana@example.net")] = reason
    decision = decide(request(purpose=purpose), ctx, NOW)
    assert (decision.verdict, decision.code) == (("refuse", f"suppressed:{reason}") if refused else ("send", None))


@pytest.mark.parametrize(("state", "code"), [(None, "consent:missing"), ("withdrawn", "consent:withdrawn"),
                                             ("pending", "consent:pending")])
def test_marketing_needs_a_grant(state: str | None, code: str) -> None:
    ctx = context()
    if state:
        granted(ctx, state=state)
    assert decide(request(), ctx, NOW).code == code


def test_marketing_without_a_contact_is_refused_and_transactional_is_not() -> None:
    ctx = context()
    assert decide(request(contact=None), ctx, NOW).code == "consent:missing"
    assert decide(request(contact=None, purpose="transactional"), ctx, NOW).verdict == "send"


def test_transactional_goes_unless_withdrawn() -> None:
    ctx = context()
    assert decide(request(purpose="transactional"), ctx, NOW).verdict == "send"
    granted(ctx, purpose="transactional", state="withdrawn")
    assert decide(request(purpose="transactional"), ctx, NOW).code == "consent:withdrawn"


def test_the_later_of_store_and_workspace_wide_consent_applies() -> None:
    ctx = context()
    granted(ctx, store="st1", at=NOW - timedelta(days=5))
    granted(ctx, store=None, at=NOW - timedelta(days=1), state="withdrawn")  # "unsubscribe from everything"
    assert decide(request(), ctx, NOW).code == "consent:withdrawn"
    granted(ctx, store="st1", at=NOW - timedelta(hours=1))  # then re-subscribed at this store
    assert decide(request(), ctx, NOW).verdict == "send"
    assert decide(request(store="st2"), ctx, NOW).code == "consent:withdrawn"  # not at the other store


def test_whatsapp_free_form_only_within_24_hours_of_the_contacts_message() -> None:
    ctx = context()
    granted(ctx, channel="whatsapp", purpose="transactional")
    free_form = request(channel="whatsapp", purpose="transactional")
    assert decide(free_form, ctx, NOW).code == "whatsapp:window_closed"
    ctx.recipients["c1"] = Recipient(whatsapp_inbound_at=NOW - timedelta(hours=23, minutes=59))
    assert decide(free_form, ctx, NOW).verdict == "send"
    ctx.recipients["c1"] = Recipient(whatsapp_inbound_at=NOW - timedelta(hours=24))
    assert decide(free_form, ctx, NOW).code == "whatsapp:window_closed"


def test_whatsapp_templates_must_be_approved_and_not_marketing_to_plus_one() -> None:
    ctx = context()
    granted(ctx, channel="whatsapp")
    marketing = WhatsAppTemplate("marketing", approved=True)
    assert decide(request(channel="whatsapp", whatsapp_template=marketing), ctx, NOW).code == \
        "whatsapp:marketing_to_us"
    ctx.recipients["c2"] = Recipient(country="BR")
    granted(ctx, contact="c2", channel="whatsapp")
    to_brazil = request(channel="whatsapp", contact="c2", address="+5511987654321", whatsapp_template=marketing)
    assert decide(to_brazil, ctx, NOW).verdict == "send"
    unapproved = WhatsAppTemplate("utility", approved=False)
    assert decide(request(channel="whatsapp", whatsapp_template=unapproved, purpose="transactional"), ctx,
                  NOW).code == "whatsapp:template_not_approved"


def test_marketing_email_needs_a_verified_domain() -> None:
    ctx = context()
    granted(ctx)
    ctx.domains["shop.example"] = "pending"
    assert decide(request(), ctx, NOW).code == "domain_unverified"
    assert decide(request(purpose="transactional"), ctx, NOW).verdict == "send"


def test_frequency_caps_per_channel_and_overall_with_transactional_exempt() -> None:
    settings = parse_settings({"frequency_caps": [{"channel": "email", "limit": 2, "hours": 24},
                                                  {"channel": "*", "limit": 3, "hours": 168}],
                               "quiet_hours": {}})
    ctx = context(settings)
    granted(ctx)
    granted(ctx, channel="sms")
    ctx.sends["c1"] = [(NOW - timedelta(hours=2), "email"), (NOW - timedelta(hours=25), "email")]
    assert decide(request(), ctx, NOW).verdict == "send"
    ctx.sends["c1"].append((NOW - timedelta(minutes=1), "email"))
    assert decide(request(), ctx, NOW).code == "frequency_cap"  # 2 emails in 24 h
    assert decide(request(purpose="transactional"), ctx, NOW).verdict == "send"
    assert decide(request(channel="sms"), ctx, NOW).code == "frequency_cap"  # 3 on any channel in 7 days
    ctx.sends["c1"] = [(NOW - timedelta(days=8), "email")] * 5
    assert decide(request(channel="sms"), ctx, NOW).verdict == "send"  # outside every window


def test_decide_all_counts_each_allowed_send_towards_the_next() -> None:
    settings = parse_settings({"frequency_caps": [{"channel": "*", "limit": 2, "hours": 24}]})
    ctx = context(settings)
    granted(ctx)
    decisions = decide_all([request(), request(), request()], ctx, NOW)
    assert [d.verdict for d in decisions] == ["send", "send", "refuse"]


def test_quiet_hours_defer_us_marketing_sms_to_8_local() -> None:
    ctx = context(parse_settings({"quiet_hours": {}}))  # even with no workspace quiet hours: the US rule
    granted(ctx, channel="sms")
    ctx.recipients["c1"] = Recipient(phone="+12125550123", country="US")  # New York by the number
    early = datetime(2026, 11, 23, 12, 30, tzinfo=UTC)  # 07:30 in New York
    decision = decide(request(channel="sms"), ctx, early)
    assert decision.verdict == "defer" and decision.code == "quiet_hours"
    assert decision.until == datetime(2026, 11, 23, 13, 0, tzinfo=UTC)  # 08:00 New York
    assert decide(request(channel="sms"), ctx, decision.until).verdict == "send"
    assert decide(request(channel="sms", purpose="transactional"), ctx, early).verdict == "send"


def test_quiet_hours_use_the_contacts_time_zone_before_the_phones() -> None:
    ctx = context(parse_settings({"quiet_hours": {"push": "09:00-20:00"}}))
    granted(ctx, channel="push")
    ctx.recipients["c1"] = Recipient(timezone="Asia/Tokyo", phone="+12125550123", country="US")
    at = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo, 22:00 in New York
    assert decide(request(channel="push", address="token"), ctx, at).verdict == "send"


def test_balance_refuses_a_send_it_cannot_cover_and_reserves_what_it_allows() -> None:
    ctx = context(balance_minor=10)
    granted(ctx)
    paid = request(cost_minor=6)
    decisions = decide_all([paid, paid], ctx, NOW)
    assert [d.code for d in decisions] == [None, "insufficient_balance"]
    assert ctx.balance_minor == 4


def test_first_refusal_wins() -> None:
    ctx = context()
    ctx.suppressed[("email", "ana@example.net")] = "complaint"
    ctx.domains.clear()
    assert decide(request(), ctx, NOW).code == "suppressed:complaint"  # not consent, not domain


def test_best_channel_follows_the_countrys_order_and_the_addresses_held() -> None:
    settings = parse_settings(None)
    assert best_channels(settings, "BR", {"email": "a@b.c", "sms": "+5511987654321"}) == ["sms", "email"]
    assert best_channels(settings, "AE", {"email": "a@b.c", "sms": "+971501234567"}) == ["sms"]
    assert best_channels(settings, "US", {"email": "a@b.c", "sms": "+12125550123"}) == ["email", "sms"]
    assert best_channels(settings, "ZZ", {"push": "tok"}) == ["push"]


@pytest.mark.parametrize(("raw", "field"), [
    ({"frequency_caps": [{"channel": "fax", "limit": 1, "hours": 1}]}, "frequency_caps[0].channel"),
    ({"frequency_caps": [{"channel": "*", "limit": 0, "hours": 1}]}, "frequency_caps[0].limit"),
    ({"frequency_caps": [{"channel": "*", "limit": 1, "hours": -1}]}, "frequency_caps[0].hours"),
    ({"quiet_hours": {"sms": "8 to 9"}}, "quiet_hours.sms"),
    ({"channel_order": {"usa": ["email"]}}, "channel_order.usa"),
    ({"channel_order": {"US": []}}, "channel_order.US"),
    ({"quiet_hour": {}}, "quiet_hour"),
])
def test_bad_settings_name_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(SettingsInvalid) as caught:
        parse_settings(raw)
    assert caught.value.field == field


def test_settings_round_trip() -> None:
    settings = parse_settings(DEFAULT_SETTINGS_JSON)
    assert parse_settings(settings_json(settings)) == settings


# -- properties --------------------------------------------------------------------------------------

STATES = st.sampled_from([None, "granted", "withdrawn", "pending"])
REASONS = st.sampled_from([None, "unsubscribed", "hard_bounce", "complaint", "invalid", "erased", "manual"])
TIMES = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2028, 12, 31),
                     timezones=st.just(UTC))
US_PHONES = st.sampled_from(["+12125550123", "+13105550123", "+18085550123", "+19075550123", "+13125550123",
                             "+16025550123"])
ZONES = st.sampled_from(["America/New_York", "America/Chicago", "America/Los_Angeles", "Pacific/Honolulu",
                         "America/Anchorage", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe", None])


@st.composite
def consent_history(draw: st.DrawFn) -> PolicyContext:
    ctx = context(parse_settings(None))
    for store in ("st1", None):
        state = draw(STATES)
        if state is not None:
            granted(ctx, store=store, state=state, at=NOW - timedelta(minutes=draw(st.integers(1, 10**6))))
    reason = draw(REASONS)
    if reason is not None:
        ctx.suppressed[("email", "ana@example.net")] = reason
    return ctx


@given(consent_history(), TIMES)
def test_no_marketing_send_to_an_unconsented_or_suppressed_contact(ctx: PolicyContext, now: datetime) -> None:
    decision = decide(request(), ctx, now)
    own, everywhere = ctx.consents.get(("c1", "email", "marketing", "st1")), \
        ctx.consents.get(("c1", "email", "marketing", None))
    latest = max((r for r in (own, everywhere) if r is not None), default=None, key=lambda r: r[0])
    if decision.verdict == "send":
        assert latest is not None and latest[1] == "granted"
        assert ("email", "ana@example.net") not in ctx.suppressed
    if ("email", "ana@example.net") in ctx.suppressed or latest is None or latest[1] != "granted":
        assert decision.verdict == "refuse"


def _local_ok(at: datetime, zones: tuple[str, ...], start: int = 8, end: int = 21) -> bool:
    return all(time(start) <= at.astimezone(ZoneInfo(z)).time() < time(end) for z in zones)


@settings(max_examples=300)
@given(TIMES, US_PHONES, ZONES)
def test_no_us_marketing_sms_outside_8_to_21_local(now: datetime, phone: str, zone: str | None) -> None:
    ctx = context(parse_settings({"quiet_hours": {"sms": None}}))
    granted(ctx, channel="sms")
    ctx.recipients["c1"] = Recipient(timezone=zone, phone=phone, country="US")
    zones = zones_for(zone, phone, "US")
    decision = decide(request(channel="sms", address=phone), ctx, now)
    if decision.verdict == "send":
        assert _local_ok(now, zones)
    else:
        assert decision.verdict == "defer" and decision.until is not None
        assert not _local_ok(now, zones)
        assert _local_ok(decision.until, zones)
        assert decision.until.second == 0 and decision.until.microsecond == 0


@settings(max_examples=200)
@given(TIMES, US_PHONES, ZONES, st.integers(0, 23), st.integers(1, 23))
def test_deferrals_land_in_the_next_allowed_minute(now: datetime, phone: str, zone: str | None, start: int,
                                                   length: int) -> None:
    end = (start + length) % 24
    window = f"{start:02d}:00-{end:02d}:00"
    ctx = context(parse_settings({"quiet_hours": {"push": window}}))
    granted(ctx, channel="push")
    ctx.recipients["c1"] = Recipient(timezone=zone, phone=phone, country="US")
    decision = decide(request(channel="push", address="token"), ctx, now)
    if decision.verdict == "send":
        return
    assert decision.until is not None
    w = Window.parse(window)
    zones = zones_for(zone, phone, "US")
    assume(all(w.allows(decision.until.astimezone(ZoneInfo(z)).time()) for z in zones))  # not the fallback
    previous = decision.until - timedelta(minutes=1)
    assert previous < now or not all(w.allows(previous.astimezone(ZoneInfo(z)).time()) for z in zones)


@given(TIMES, st.integers(0, 48 * 60), st.booleans())
def test_no_free_form_whatsapp_outside_24_hours(now: datetime, minutes_ago: int, known: bool) -> None:
    ctx = context()
    granted(ctx, channel="whatsapp", purpose="transactional")
    inbound = now - timedelta(minutes=minutes_ago) if known else None
    ctx.recipients["c1"] = Recipient(whatsapp_inbound_at=inbound)
    decision = decide(request(channel="whatsapp", purpose="transactional", address="+5511987654321"), ctx, now)
    assert (decision.verdict == "send") == (inbound is not None and now - inbound < timedelta(hours=24))


def test_decide_runs_the_checks_in_their_documented_order() -> None:
    """decide() writes the CHECKS order out for speed: it must stay the same order."""
    import inspect

    from herald.domain import policy

    source = inspect.getsource(policy.decide)
    positions = [source.index(check.__name__ + "(") for check in policy.CHECKS]
    assert positions == sorted(positions)
