"""A recipient's local time: which IANA zones a contact may be in, and the first moment a
quiet-hours window is open in all of them.

Pure rules on top of `zoneinfo`, `phonenumbers` and the `tzdata` package's zone tables; no
database, no network. Built for the per-send policy check, so the common case (one zone, `now`
inside the window) costs one `astimezone` call, and nothing walks minute by minute.

Time zone data fact these functions rely on: a zone changes its UTC offset at most once in any
24 hours (in tzdb the closest two changes of one zone are about four days apart).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from zoneinfo import ZoneInfo, available_timezones

import phonenumbers
from phonenumbers import timezone as phone_timezone

_DAY_SECONDS = 86_400
_MINUTE = timedelta(minutes=1)
_HORIZON = timedelta(hours=48)
_STRETCH = timedelta(days=2)
_UNKNOWN_ZONE = "Etc/Unknown"


@dataclass(frozen=True, slots=True)
class Window:
    """Allowed local hours [start, end), minute precision; end <= start means it crosses midnight
    (22:00-06:00). start == end means the whole day."""

    start: time
    end: time
    _start_minute: int = field(init=False, repr=False, compare=False)
    _end_minute: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if not isinstance(value, time):
                raise ValueError(f"window {name} must be a datetime.time, not {type(value).__name__}")
            if value.second or value.microsecond:
                raise ValueError(f"window {name} {value.isoformat()} must be a whole minute (HH:MM)")
            if value.tzinfo is not None:
                raise ValueError(f"window {name} {value.isoformat()} must be a local wall time without a zone")
        object.__setattr__(self, "_start_minute", self.start.hour * 60 + self.start.minute)
        object.__setattr__(self, "_end_minute", self.end.hour * 60 + self.end.minute)

    @classmethod
    def parse(cls, text: str) -> Window:
        """Text as 'HH:MM-HH:MM', e.g. '08:00-21:00' or '22:00-06:00'; '24:00' is accepted as an end
        and means midnight. Raises ValueError saying what to fix."""
        match = _WINDOW_TEXT.match(text)
        if match is None:
            raise ValueError(f"window {text!r} must look like 'HH:MM-HH:MM', e.g. '08:00-21:00'")
        start = _clock_time(text, match["start"], end_of_day_allowed=False)
        end = _clock_time(text, match["end"], end_of_day_allowed=True)
        return cls(start, end)

    @property
    def whole_day(self) -> bool:
        return self._start_minute == self._end_minute

    def allows(self, local: time) -> bool:
        """Whether the local wall time `local` is inside the window (its zone, if any, is ignored)."""
        return self._contains(local.hour * 60 + local.minute)

    def _contains(self, minute_of_day: int) -> bool:
        start, end = self._start_minute, self._end_minute
        if start < end:
            return start <= minute_of_day < end
        if start > end:
            return minute_of_day >= start or minute_of_day < end
        return True

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


_WINDOW_TEXT = re.compile(r"^\s*(?P<start>\d{1,2}:\d{2})\s*[-\u2013]\s*(?P<end>\d{1,2}:\d{2})\s*$")


def _clock_time(text: str, part: str, *, end_of_day_allowed: bool) -> time:
    hours, minutes = (int(p) for p in part.split(":"))
    if end_of_day_allowed and (hours, minutes) == (24, 0):
        return time(0, 0)
    if hours > 23 or minutes > 59:
        upper = "24:00" if end_of_day_allowed else "23:59"
        raise ValueError(f"window {text!r}: {part} is not a time of day between 00:00 and {upper}")
    return time(hours, minutes)


# --- candidate zones ------------------------------------------------------------------------


def zones_for(timezone: str | None, phone: str | None, country: str | None) -> tuple[str, ...]:
    """The recipient's candidate IANA zones: the contact's own valid time zone, else the zones of
    the E.164 phone number's prefix (phonenumbers.timezone.time_zones_for_number; drop
    'Etc/Unknown'), else every zone of the ISO country (tzdata's zone1970.tab or zone.tab, read via
    importlib.resources from the `tzdata` package, parsed once and cached), else ().

    A time zone that is not an IANA name, a phone number that cannot be parsed or has no known
    zone, and an unknown country each fall through to the next source. Phone zones are ordered
    with the zones of the number's own country first (in that country's tzdata order), so the
    first zone is a sensible single choice, e.g. Europe/Moscow for a +7 9xx mobile number.
    """
    if timezone:
        name = timezone.strip()
        if name in _zone_names():
            return (name,)
    if phone:
        from_phone = _phone_zones(phone.strip())
        if from_phone:
            return from_phone
    if country:
        return _country_zones().get(country.strip().upper(), ())
    return ()


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones()) - {_UNKNOWN_ZONE}


@functools.lru_cache(maxsize=65_536)
def _phone_zones(phone: str) -> tuple[str, ...]:
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return ()
    known = _zone_names()
    zones = [z for z in phone_timezone.time_zones_for_number(number) if z in known]
    home = _country_zones().get(phonenumbers.region_code_for_number(number) or "", ())
    rank = {zone: i for i, zone in enumerate(home)}
    return tuple(sorted(zones, key=lambda zone: rank.get(zone, len(home))))


@functools.cache
def _country_zones() -> Mapping[str, tuple[str, ...]]:
    """ISO 3166 alpha-2 code → its zones, principal zone first.

    zone.tab is preferred because it names each country's own zones (DE → Europe/Berlin,
    Europe/Busingen), where zone1970.tab shares zones across countries (DE → Europe/Zurich first);
    both describe the same clocks. zone1970.tab is the fallback if a tzdata release drops zone.tab.
    """
    table = resources.files("tzdata").joinpath("zoneinfo")
    for name in ("zone.tab", "zone1970.tab"):
        source = table.joinpath(name)
        if source.is_file():
            return _parse_zone_table(source.read_text(encoding="utf-8"))
    raise RuntimeError("the tzdata package has neither zone.tab nor zone1970.tab")  # pragma: no cover


def _parse_zone_table(text: str) -> dict[str, tuple[str, ...]]:
    """Rows are 'codes<TAB>coordinates<TAB>zone[<TAB>comment]'; codes is comma-separated."""
    known = _zone_names()
    zones: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        columns = line.split("\t")
        if len(columns) < 3 or columns[2] not in known:
            continue
        for code in columns[0].split(","):
            zones.setdefault(code.strip().upper(), []).append(columns[2])
    return {code: tuple(names) for code, names in zones.items()}


# --- the next allowed moment ----------------------------------------------------------------


_LOADED: dict[str, ZoneInfo] = {}


def _zone(name: str) -> ZoneInfo:
    zone = _LOADED.get(name)
    if zone is None:
        if name not in _zone_names():
            raise ValueError(f"time zone {name!r} is not an IANA zone name such as 'America/New_York'")
        zone = _LOADED.setdefault(name, ZoneInfo(name))
    return zone


def next_allowed(now: datetime, zones: Sequence[str], window: Window) -> datetime:
    """`now` (aware UTC) itself when the local time in EVERY zone is inside the window; otherwise the
    start (second 0, microsecond 0) of the earliest later UTC minute at which it is inside the window
    in every zone. When no minute in the next 48 h is allowed in all zones (zones spread too wide for
    the window, e.g. Russia and 09-17), fall back to the first zone alone. Empty zones → `now`.
    Handles DST gaps/overlaps correctly (use zoneinfo; a local minute that does not exist is skipped).

    "Inside the window at a UTC minute" means the zone's wall clock at that instant reads a time in
    [start, end). Unknown zone names raise ValueError; a naive `now` raises ValueError.
    """
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware (UTC), got naive {now.isoformat()}")
    if not zones or window.whole_day:
        return now
    loaded = (_zone(zones[0]),) if len(zones) == 1 else _distinct_clocks(tuple(zones), now.toordinal())
    if _inside_everywhere(now, loaded, window):
        return now
    utc_now = now.astimezone(UTC)
    found = _first_common_minute(_ceil_minute(utc_now), loaded, window, utc_now + _HORIZON)
    if found is not None:
        return found
    if _inside_everywhere(now, loaded[:1], window):
        return now
    return _first_minute_inside(_ceil_minute(utc_now), loaded[0], window)


@functools.lru_cache(maxsize=1024)
def _distinct_clocks(zones: tuple[str, ...], day: int) -> tuple[ZoneInfo, ...]:
    """`zones` loaded, keeping only the first of those whose wall clocks agree from the start of
    proleptic day `day` - 1 to the start of `day` + 5 (UTC). That covers the 48 h search from any
    `now` whose own date is `day`, whatever its UTC offset; the search's answer only depends on the
    clocks up to its end. Order is kept, so the first zone stays first (the fallback zone).

    Clocks agree over a stretch when they have the same offsets at its ends and change offset at
    the same instant in between; a stretch of two days holds at most one change of a zone.
    """
    edges = [datetime.combine(date.fromordinal(day - 1), time(), UTC) + _STRETCH * i for i in range(4)]
    kept: dict[tuple[object, ...], ZoneInfo] = {}
    for name in zones:
        zone = _zone(name)
        offsets = [edge.astimezone(zone).utcoffset() for edge in edges]
        changes = [
            _offset_change(edges[i], edges[i + 1], zone) if offsets[i] != offsets[i + 1] else None
            for i in range(len(edges) - 1)
        ]
        kept.setdefault((*offsets, *changes), zone)
    return tuple(kept.values())


def _inside_everywhere(instant: datetime, zones: Sequence[ZoneInfo], window: Window) -> bool:
    for zone in zones:
        local = instant.astimezone(zone)
        if not window._contains(local.hour * 60 + local.minute):
            return False
    return True


def _ceil_minute(instant: datetime) -> datetime:
    floor = instant.replace(second=0, microsecond=0)
    return floor if floor == instant else floor + _MINUTE


def _first_common_minute(
    start: datetime, zones: Sequence[ZoneInfo], window: Window, latest: datetime
) -> datetime | None:
    """The earliest UTC minute ≥ `start` (minute-aligned) inside the window in every zone, or None
    when there is none up to `latest`.

    Leapfrog: the answer is never earlier than any single zone's next allowed minute, so jump to
    the latest of those until no zone moves. Each jump lands on a distinct window start or offset
    change of some zone, of which a zone has at most six before `latest` plus a day; hence the bound.
    """
    candidate = start
    for _ in range(6 * len(zones) + 4):
        moved = False
        for zone in zones:
            earliest = _first_minute_inside(candidate, zone, window)
            if earliest != candidate:
                candidate, moved = earliest, True
                if candidate > latest:
                    return None
        if not moved:
            return candidate
    return None  # pragma: no cover - unreachable by the bound's argument above


def _first_minute_inside(start: datetime, zone: ZoneInfo, window: Window) -> datetime:
    """The earliest UTC minute ≥ `start` (minute-aligned, UTC) whose wall time in `zone` is inside
    the window. Steps from window start to window start and across offset changes, never by minute;
    a day holds at most one offset change, so three steps suffice and the loop bound is generous."""
    candidate = start
    for _ in range(8):
        local = candidate.astimezone(zone)
        if window._contains(local.hour * 60 + local.minute):
            return candidate
        of_day = local.hour * 3600 + local.minute * 60 + local.second
        offset = local.utcoffset()
        rise = candidate + timedelta(seconds=(window._start_minute * 60 - of_day) % _DAY_SECONDS)
        if rise.astimezone(zone).utcoffset() == offset:
            candidate = _ceil_minute(rise)  # the wall clock reads `start` at `rise`
        else:
            candidate = _ceil_minute(_offset_change(candidate, rise, zone))
    raise RuntimeError(f"no allowed minute found in {zone.key} after {start.isoformat()}")  # pragma: no cover


def _offset_change(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The first whole second in (before, after] at which `zone`'s UTC offset differs from its
    offset at `before`; the caller knows there is exactly one change in between. Bisection over
    whole seconds (transitions in tzdb are whole seconds): at most 17 steps for one day."""
    offset = before.astimezone(zone).utcoffset()
    low, high = 0, int((after - before).total_seconds())
    while high - low > 1:
        middle = (low + high) // 2
        if (before + timedelta(seconds=middle)).astimezone(zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return before + timedelta(seconds=high)
