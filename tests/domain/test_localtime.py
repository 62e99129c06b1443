"""Recipient local time: candidate zones and the next moment a quiet-hours window is open.

The property tests compare `next_allowed` with a brute-force oracle that walks UTC minute by
minute (bounded: at most 48 h for the common search, 72 h for the single-zone fallback).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.domain.localtime import Window, next_allowed, zones_for

NEW_YORK = ZoneInfo("America/New_York")
HONOLULU = ZoneInfo("Pacific/Honolulu")
MINUTE = timedelta(minutes=1)
ALL_ZONES = sorted(available_timezones())
US_ZONES = zones_for(None, None, "US")


# --- the oracle -----------------------------------------------------------------------------


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _inside(instant: datetime, zone: str, window: Window) -> bool:
    """Written independently of Window.allows: compares wall-clock times directly."""
    wall = instant.astimezone(_zone(zone)).time().replace(second=0, microsecond=0)
    if window.start < window.end:
        return window.start <= wall < window.end
    if window.start > window.end:
        return wall >= window.start or wall < window.end
    return True


def _inside_all(instant: datetime, zones: Sequence[str], window: Window) -> bool:
    return all(_inside(instant, zone, window) for zone in zones)


def _ceil_minute(instant: datetime) -> datetime:
    floor = instant.replace(second=0, microsecond=0)
    return floor if floor == instant else floor + MINUTE


def _first_minute(now: datetime, zones: Sequence[str], window: Window, hours: int) -> datetime | None:
    """Brute force: the first UTC minute after `now` (up to now + `hours`) inside in all zones."""
    minute = _ceil_minute(now)
    while minute <= now + timedelta(hours=hours):
        if _inside_all(minute, zones, window):
            return minute
        minute += MINUTE
    return None


def _expected(now: datetime, zones: Sequence[str], window: Window) -> tuple[datetime, bool]:
    """(the answer the contract promises, whether the single-first-zone fallback applied)."""
    if _inside_all(now, zones, window):
        return now, False
    common = _first_minute(now, zones, window, 48)
    if common is not None:
        return common, False
    if _inside(now, zones[0], window):
        return now, True
    alone = _first_minute(now, zones[:1], window, 72)
    assert alone is not None, "every zone has an allowed minute within three days"
    return alone, True


def _check(now: datetime, zones: Sequence[str], window: Window) -> datetime:
    result = next_allowed(now, zones, window)
    expected, fell_back = _expected(now, zones, window)
    assert result >= now
    if result != now:
        assert (result.second, result.microsecond) == (0, 0)
        assert result.utcoffset() == timedelta(0)
    checked_zones = zones[:1] if fell_back else zones
    assert _inside_all(result, checked_zones, window), (result, checked_zones)
    assert result == expected, (now, zones, str(window), result, expected)
    return result


# --- strategies -----------------------------------------------------------------------------

minute_times = st.builds(time, st.integers(0, 23), st.integers(0, 59))
windows = st.one_of(
    st.builds(Window, minute_times, minute_times),
    st.sampled_from(["08:00-21:00", "22:00-06:00", "09:00-17:00", "02:30-03:00", "01:15-01:45",
                     "00:00-01:30", "02:00-02:01", "23:59-00:01", "12:00-12:01"]).map(Window.parse),
)
instants = st.datetimes(min_value=datetime(1880, 1, 1), max_value=datetime(2140, 1, 1), timezones=st.just(UTC))
zone_lists = st.lists(st.sampled_from(ALL_ZONES), min_size=1, max_size=3)
DST_ZONES = ["America/New_York", "America/Santiago", "America/Havana", "Europe/London", "Europe/Berlin",
             "Australia/Lord_Howe", "Pacific/Chatham", "Asia/Tehran", "America/St_Johns", "Africa/Casablanca",
             "Pacific/Apia", "Asia/Gaza", "America/Asuncion", "Europe/Chisinau"]


@cache
def _offset_changes(zone: str, year: int) -> tuple[datetime, ...]:
    """The instants (to the second) in `year` at which `zone` changes its UTC offset."""
    def offset(instant: datetime) -> timedelta | None:
        return instant.astimezone(_zone(zone)).utcoffset()

    changes = []
    day = datetime(year, 1, 1, tzinfo=UTC)
    while day.year == year:
        following = day + timedelta(days=1)
        if offset(day) != offset(following):
            low, high = day, following
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                middle = middle.replace(microsecond=0)
                low, high = (middle, high) if offset(middle) == offset(day) else (low, middle)
            changes.append(high)
        day = following
    return tuple(changes)


@st.composite
def near_changes(draw: st.DrawFn, zones: list[str]) -> datetime:
    """An instant up to 36 h before or 12 h after one of the first zone's offset changes."""
    year = draw(st.integers(1975, 2035))
    changes = _offset_changes(zones[0], year) or (datetime(year, 6, 1, tzinfo=UTC),)
    change = draw(st.sampled_from(changes))
    return change + timedelta(seconds=draw(st.integers(-36 * 3600, 12 * 3600)))


dst_zone_lists = st.lists(st.sampled_from(DST_ZONES), min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(now=instants, zones=zone_lists, window=windows)
def test_matches_brute_force_for_random_zones_and_times(now: datetime, zones: list[str], window: Window) -> None:
    _check(now, zones, window)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), zones=dst_zone_lists, window=windows)
def test_matches_brute_force_around_offset_changes(data: st.DataObject, zones: list[str], window: Window) -> None:
    _check(data.draw(near_changes(zones)), zones, window)


@settings(max_examples=40, deadline=None)
@given(now=st.one_of(instants, near_changes(["America/New_York"]), near_changes(["America/Anchorage"])),
       window=windows)
def test_matches_brute_force_for_every_us_zone(now: datetime, window: Window) -> None:
    _check(now, US_ZONES, window)


@settings(max_examples=100, deadline=None)
@given(now=instants, zones=zone_lists, window=windows, shift=st.sampled_from([-12, -5, 0, 5, 14]))
def test_a_now_in_another_offset_gives_the_same_instant(
    now: datetime, zones: list[str], window: Window, shift: int
) -> None:
    elsewhere = now.astimezone(ZoneInfo(f"Etc/GMT{-shift:+d}") if shift else UTC)
    assert next_allowed(elsewhere, zones, window) == next_allowed(now, zones, window)


# --- spelled-out cases ----------------------------------------------------------------------

US_HOURS = Window.parse("08:00-21:00")


def _at(zone: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> datetime:
    """A wall time in `zone` as a UTC instant."""
    return datetime(year, month, day, hour, minute, second, tzinfo=zone).astimezone(UTC)


def _utc(month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(2025, month, day, hour, minute, tzinfo=UTC)


def test_new_york_number_before_eight_waits_until_eight() -> None:
    zones = zones_for(None, "+12125550123", None)
    assert zones == ("America/New_York",)
    assert next_allowed(_at(NEW_YORK, 2025, 6, 2, 7, 59), zones, US_HOURS) == _at(NEW_YORK, 2025, 6, 2, 8, 0)
    assert next_allowed(_at(NEW_YORK, 2025, 6, 2, 7, 59, 59), zones, US_HOURS) == _at(NEW_YORK, 2025, 6, 2, 8, 0)
    inside = _at(NEW_YORK, 2025, 6, 2, 8, 0, 1)
    assert next_allowed(inside, zones, US_HOURS) is inside
    assert next_allowed(_at(NEW_YORK, 2025, 6, 2, 21, 0), zones, US_HOURS) == _at(NEW_YORK, 2025, 6, 3, 8, 0)


def test_honolulu_number_uses_hawaii_time() -> None:
    zones = zones_for(None, "+18085550123", None)
    assert zones == ("Pacific/Honolulu",)
    late = _at(HONOLULU, 2025, 1, 15, 20, 59)
    assert next_allowed(late, zones, US_HOURS) == late
    assert next_allowed(_at(HONOLULU, 2025, 1, 15, 21, 0), zones, US_HOURS) == _at(HONOLULU, 2025, 1, 16, 8, 0)
    # 08:00 in New York is 03:00 in Honolulu: still quiet there.
    assert next_allowed(_at(NEW_YORK, 2025, 1, 15, 8, 0), zones, US_HOURS) == _at(HONOLULU, 2025, 1, 15, 8, 0)


def test_us_contact_with_only_a_country_must_be_inside_in_every_us_zone() -> None:
    assert {"America/New_York", "America/Chicago", "America/Los_Angeles", "America/Anchorage",
            "Pacific/Honolulu"} <= set(US_ZONES)
    # Summer: 08:00 Hawaii is 18:00 UTC, 21:00 EDT is 01:00 UTC, so 18:00-01:00 UTC is open.
    assert next_allowed(datetime(2025, 7, 1, 17, 59, tzinfo=UTC), US_ZONES, US_HOURS) == datetime(
        2025, 7, 1, 18, 0, tzinfo=UTC)
    open_late = datetime(2025, 7, 2, 0, 59, 59, tzinfo=UTC)
    assert next_allowed(open_late, US_ZONES, US_HOURS) is open_late
    assert next_allowed(datetime(2025, 7, 2, 1, 0, tzinfo=UTC), US_ZONES, US_HOURS) == datetime(
        2025, 7, 2, 18, 0, tzinfo=UTC)
    # Winter: 21:00 EST is 02:00 UTC, an hour later.
    open_in_winter = datetime(2025, 1, 16, 1, 30, tzinfo=UTC)
    assert next_allowed(open_in_winter, US_ZONES, US_HOURS) is open_in_winter


def test_spring_forward_day_in_new_york() -> None:
    zones = ["America/New_York"]
    # 2025-03-09 02:00 EST becomes 03:00 EDT (07:00 UTC); from then on 08:00 local is 12:00 UTC.
    assert next_allowed(_at(NEW_YORK, 2025, 3, 8, 21, 0), zones, US_HOURS) == datetime(2025, 3, 9, 12, 0, tzinfo=UTC)
    assert next_allowed(datetime(2025, 3, 9, 11, 59, tzinfo=UTC), zones, US_HOURS) == datetime(
        2025, 3, 9, 12, 0, tzinfo=UTC)
    # 02:30 does not exist that day; the first existing local minute inside 02:30-04:00 is 03:00 EDT.
    assert next_allowed(_at(NEW_YORK, 2025, 3, 9, 1, 0), zones, Window.parse("02:30-04:00")) == datetime(
        2025, 3, 9, 7, 0, tzinfo=UTC)
    # A window wholly inside the gap is skipped until the next day.
    assert next_allowed(_at(NEW_YORK, 2025, 3, 9, 1, 0), zones, Window.parse("02:10-02:50")) == _at(
        NEW_YORK, 2025, 3, 10, 2, 10)


def test_fall_back_day_in_new_york() -> None:
    zones = ["America/New_York"]
    # 2025-11-02 02:00 EDT becomes 01:00 EST (06:00 UTC); 08:00 EST is 13:00 UTC.
    assert next_allowed(_at(NEW_YORK, 2025, 11, 1, 21, 0), zones, US_HOURS) == datetime(2025, 11, 2, 13, 0, tzinfo=UTC)
    # 01:15-01:45 happens twice: 05:15 UTC (EDT) and 06:15 UTC (EST).
    twice = Window.parse("01:15-01:45")
    assert next_allowed(_utc(11, 2, 5, 0), zones, twice) == _utc(11, 2, 5, 15)
    assert next_allowed(_utc(11, 2, 5, 50), zones, twice) == _utc(11, 2, 6, 15)
    # Closed at 01:30 EDT, open again when the clock falls back to 01:00 EST.
    early = Window.parse("00:00-01:30")
    assert next_allowed(_utc(11, 2, 5, 30), zones, early) == _utc(11, 2, 6, 0)


def test_zones_spread_too_wide_fall_back_to_the_first_zone() -> None:
    russia = zones_for(None, None, "RU")
    assert russia[0] == "Europe/Kaliningrad" and "Asia/Anadyr" in russia
    office = Window.parse("09:00-17:00")
    now = datetime(2025, 6, 2, 16, 0, tzinfo=UTC)  # 18:00 in Kaliningrad
    assert _first_minute(now, russia, office, 48) is None
    assert next_allowed(now, russia, office) == _at(ZoneInfo("Europe/Kaliningrad"), 2025, 6, 3, 9, 0)


def test_trivial_inputs() -> None:
    now = datetime(2025, 6, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert next_allowed(now, [], US_HOURS) is now
    assert next_allowed(now, ["Asia/Tokyo", "America/Lima"], Window.parse("00:00-24:00")) is now
    with pytest.raises(ValueError, match="timezone-aware"):
        next_allowed(datetime(2025, 6, 2, 3, 4), ["UTC"], US_HOURS)
    with pytest.raises(ValueError, match="'Mars/Olympus' is not an IANA zone"):
        next_allowed(now, ["Mars/Olympus"], US_HOURS)


# --- zones_for ------------------------------------------------------------------------------


def test_zones_come_from_the_time_zone_then_the_phone_then_the_country() -> None:
    assert zones_for("Europe/Berlin", "+12125550123", "US") == ("Europe/Berlin",)
    assert zones_for(" Asia/Tokyo ", None, None) == ("Asia/Tokyo",)
    assert zones_for("Mars/Olympus", "+12125550123", "US") == ("America/New_York",)
    assert zones_for("", "+18085550123", "US") == ("Pacific/Honolulu",)
    assert zones_for("america/new_york", None, "BR")[0] == "America/Noronha"
    assert zones_for(None, "not a phone", "us") == US_ZONES
    assert zones_for(None, "2125550123", "DE") == ("Europe/Berlin", "Europe/Busingen")  # no +: not E.164
    assert zones_for(None, "+1555", "GB") == ("Europe/London",)  # Etc/Unknown is dropped
    assert zones_for(None, None, "XX") == ()
    assert zones_for(None, None, None) == ()


def test_phone_zones_list_the_numbers_own_country_first() -> None:
    moscow_mobile = zones_for(None, "+79161234567", None)
    assert moscow_mobile[0] == "Europe/Moscow"
    assert "Asia/Vladivostok" in moscow_mobile and "Etc/Unknown" not in moscow_mobile
    assert zones_for(None, "+5511987654321", None) == ("America/Sao_Paulo",)


def test_every_country_zone_is_loadable() -> None:
    for code in ("US", "BR", "IN", "AE", "AU", "CA", "MX", "ID", "KZ", "CN"):
        zones = zones_for(None, None, code)
        assert zones, code
        for zone in zones:
            ZoneInfo(zone)


# --- Window ---------------------------------------------------------------------------------


def test_window_parse_and_allows() -> None:
    day = Window.parse("08:00-21:00")
    assert (day.start, day.end) == (time(8), time(21))
    assert day.allows(time(8, 0)) and day.allows(time(20, 59, 59)) and not day.allows(time(21, 0))
    assert not day.allows(time(7, 59, 59))
    night = Window.parse(" 22:00 - 06:00 ")
    assert night.allows(time(23, 30)) and night.allows(time(5, 59)) and not night.allows(time(6, 0))
    assert not night.allows(time(12))
    assert Window.parse("8:00\u201321:00") == day
    assert Window.parse("18:00-24:00") == Window(time(18), time(0))
    assert Window.parse("00:00-24:00").whole_day and Window.parse("07:00-07:00").allows(time(3))
    assert str(night) == "22:00-06:00"


@pytest.mark.parametrize(("text", "message"), [
    ("8-21", "must look like 'HH:MM-HH:MM'"),
    ("08:00 to 21:00", "must look like 'HH:MM-HH:MM'"),
    ("", "must look like 'HH:MM-HH:MM'"),
    ("25:00-06:00", "25:00 is not a time of day between 00:00 and 23:59"),
    ("24:00-06:00", "24:00 is not a time of day between 00:00 and 23:59"),
    ("08:00-24:30", "24:30 is not a time of day between 00:00 and 24:00"),
    ("08:60-21:00", "08:60 is not a time of day"),
])
def test_window_parse_rejects_bad_text_clearly(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Window.parse(text)


def test_window_needs_whole_minutes_of_wall_time() -> None:
    with pytest.raises(ValueError, match="whole minute"):
        Window(time(8, 0, 30), time(21))
    with pytest.raises(ValueError, match="without a zone"):
        Window(time(8, tzinfo=UTC), time(21))
