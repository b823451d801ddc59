"""When a person's digest is due: the last scheduled moment at or before `now`, local to them.

A daily digest due at 07:30 in Europe/Paris covers the day from yesterday's 07:30 to today's
07:30, Paris time; a weekly one (Monday by default) the seven days before. Periods are
computed on local calendar dates and then converted to UTC, so a period across a daylight
saving change is 23 or 25 hours long and the next one starts exactly where it ended.

The period of a run is always the last one that has ended: a scheduler that was down for
a while sends, once, the digest of the latest period (not one per missed period).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.settings import DigestSettings

CADENCES = ("daily", "weekly")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class Period:
    start: datetime   # UTC, included
    end: datetime     # UTC, excluded


def parse_time(value: str, default: str) -> time:
    """"HH:MM" as a time; a missing or malformed value falls back to `default`."""
    for candidate in (value, default):
        try:
            hours, minutes = candidate.split(":")
            return time(int(hours), int(minutes))
        except (ValueError, AttributeError):
            continue
    return time(7, 30)


def zone(name: str, default: str) -> ZoneInfo:
    """The person's time zone, else the instance's, else UTC (a bad name never stops a run)."""
    for candidate in (name, default):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def _at(day: date, at: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


def due_period(cadence: str, now: datetime, tz: ZoneInfo, at: time,
               weekday: int = 0) -> Period:
    """The last period of `cadence` that has ended at `now` for someone in `tz`."""
    local = now.astimezone(tz)
    if cadence == "daily":
        day = local.date()
        if _at(day, at, tz) > now:
            day -= timedelta(days=1)
        return Period(_at(day - timedelta(days=1), at, tz), _at(day, at, tz))
    if cadence == "weekly":
        day = local.date() - timedelta(days=(local.weekday() - weekday) % 7)
        if _at(day, at, tz) > now:
            day -= timedelta(days=7)
        return Period(_at(day - timedelta(days=7), at, tz), _at(day, at, tz))
    raise ValueError(f"unknown cadence {cadence!r}")


def preview_period(cadence: str, now: datetime) -> Period:
    """The period ending now (`causerie digest preview`)."""
    return Period(now - timedelta(days=1 if cadence == "daily" else 7), now)


def person_period(cadence: str, now: datetime, settings: DigestSettings, default_tz: str,
                  timezone: str, digest_time: str, digest_weekday: str) -> Period:
    """The due period for one person, with their overrides and the instance defaults."""
    default_time = settings.daily_time if cadence == "daily" else settings.weekly_time
    weekday = digest_weekday if digest_weekday in WEEKDAYS else settings.weekly_day
    return due_period(cadence, now, zone(timezone, default_tz),
                      parse_time(digest_time, default_time), WEEKDAYS.index(weekday))
