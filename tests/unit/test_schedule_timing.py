"""When schedules fire: cron expressions in a time zone (daylight saving included) and intervals."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from jobwire_server.domain.timing import Cron, TimingError, interval, show, zone

NEW_YORK = "America/New_York"
NY = ZoneInfo(NEW_YORK)


def at(text: str, tz: ZoneInfo = NY, fold: int = 0) -> float:
    """An instant from a wall-clock time in `tz`; `fold=1` picks the second of a repeated time."""
    return datetime.fromisoformat(text).replace(tzinfo=tz, fold=fold).timestamp()


def local(times: list[float], tz: ZoneInfo = NY) -> list[str]:
    return [datetime.fromtimestamp(t, tz).strftime("%m-%d %H:%M %Z") for t in times]


# 2026 in New York: clocks jump from 02:00 EST to 03:00 EDT on 8 March, and fall back from 02:00 EDT
# to 01:00 EST on 1 November.
SPRING_EVE = at("2026-03-07 23:00")
FALL_EVE = at("2026-10-31 23:00")


def test_cron_in_utc_and_macros() -> None:
    start = datetime(2026, 1, 1, 10, 30, tzinfo=UTC).timestamp()
    assert [show(t) for t in Cron.parse("0 * * * *").after(start, 2)] == ["2026-01-01T11:00:00Z",
                                                                          "2026-01-01T12:00:00Z"]
    assert Cron.parse("@hourly").after(start) == Cron.parse("0 * * * *").after(start)
    assert [show(t) for t in Cron.parse("@daily").after(start, 1)] == ["2026-01-02T00:00:00Z"]
    assert [show(t) for t in Cron.parse("@weekly").after(start, 1)] == ["2026-01-04T00:00:00Z"]  # a Sunday
    assert [show(t) for t in Cron.parse("@monthly").after(start, 1)] == ["2026-02-01T00:00:00Z"]
    assert [show(t) for t in Cron.parse("@yearly").after(start, 1)] == ["2027-01-01T00:00:00Z"]
    assert [show(t) for t in Cron.parse("0 9 * * MON-FRI").after(start, 2)] == ["2026-01-02T09:00:00Z",
                                                                                "2026-01-05T09:00:00Z"]


def test_after_is_strictly_after_and_latest_is_at_or_before() -> None:
    hourly = Cron.parse("0 * * * *")
    on_the_hour = datetime(2026, 1, 1, 11, tzinfo=UTC).timestamp()
    assert hourly.after(on_the_hour) == [on_the_hour + 3600]
    assert hourly.latest(on_the_hour) == on_the_hour
    assert hourly.latest(on_the_hour + 3599) == on_the_hour


def test_a_time_zone_moves_the_firings() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert [show(t) for t in Cron.parse("0 9 * * *", "Europe/Paris").after(start, 1)] == ["2026-01-01T08:00:00Z"]
    assert [show(t) for t in Cron.parse("0 9 * * *", "Asia/Kolkata").after(start, 1)] == ["2026-01-01T03:30:00Z"]


def test_spring_forward_a_fixed_time_in_the_skipped_hour_fires_once_at_the_jump() -> None:
    daily = Cron.parse("30 2 * * *", NEW_YORK)
    assert local(daily.after(SPRING_EVE, 3)) == ["03-08 03:00 EDT", "03-09 02:30 EDT", "03-10 02:30 EDT"]
    both = Cron.parse("0,30 2 * * *", NEW_YORK)  # two times of the skipped hour: still one firing
    assert local(both.after(SPRING_EVE, 3)) == ["03-08 03:00 EDT", "03-09 02:00 EDT", "03-09 02:30 EDT"]


def test_spring_forward_a_wildcard_expression_follows_the_new_clock() -> None:
    hourly = Cron.parse("0 * * * *", NEW_YORK)
    assert local(hourly.after(at("2026-03-08 00:30"), 3)) == ["03-08 01:00 EST", "03-08 03:00 EDT",
                                                              "03-08 04:00 EDT"]
    quarter = Cron.parse("*/30 * * * *", NEW_YORK)
    assert local(quarter.after(at("2026-03-08 01:10"), 2)) == ["03-08 01:30 EST", "03-08 03:00 EDT"]


def test_fall_back_a_fixed_time_in_the_repeated_hour_fires_once() -> None:
    daily = Cron.parse("30 1 * * *", NEW_YORK)
    assert local(daily.after(FALL_EVE, 2)) == ["11-01 01:30 EDT", "11-02 01:30 EST"]
    # Asked from inside the second pass of the hour, it does not fire again.
    assert local(daily.after(at("2026-11-01 01:10", fold=1), 1)) == ["11-02 01:30 EST"]


def test_fall_back_a_wildcard_expression_fires_in_both_passes() -> None:
    hourly = Cron.parse("30 * * * *", NEW_YORK)
    assert local(hourly.after(at("2026-11-01 00:45"), 3)) == ["11-01 01:30 EDT", "11-01 01:30 EST",
                                                              "11-01 02:30 EST"]
    times = hourly.after(at("2026-11-01 00:45"), 3)
    assert times[1] - times[0] == 3600 and times[2] - times[1] == 3600  # one real hour apart each
    assert hourly.latest(at("2026-11-01 01:40", fold=1)) == at("2026-11-01 01:30", fold=1)


def test_a_time_outside_the_changes_is_unaffected_across_a_year() -> None:
    daily = Cron.parse("0 12 * * *", NEW_YORK)
    times = daily.after(at("2026-01-01 00:00"), 365)
    assert {datetime.fromtimestamp(t, NY).strftime("%H:%M") for t in times} == {"12:00"}
    assert len(set(times)) == 365


def test_an_interval_falls_on_its_multiples_since_the_epoch() -> None:
    every = interval(3600)
    assert every.after(1_800_000_000.5, 3) == [1_800_003_600.0, 1_800_007_200.0, 1_800_010_800.0]
    assert every.after(1_800_003_600.0) == [1_800_007_200.0]
    assert every.latest(1_800_003_599.0) == 1_800_000_000.0


@pytest.mark.parametrize(("expression", "message"), [
    ("", "a cron expression is required"),
    ("* * * *", "must have 5 fields"),
    ("0 0 * * * *", "must have 5 fields"),
    ("61 * * * *", "is not a valid cron expression"),
    ("*/0 * * * *", "is not a valid cron expression"),
    ("0 0 31 2 *", "never matches a date"),
    ("@reboot", "unknown macro"),
    ("H * * * *", "H and R are not supported"),
    ("0 R * * *", "H and R are not supported"),
])
def test_bad_cron_expressions_say_why(expression: str, message: str) -> None:
    with pytest.raises(TimingError, match=message):
        Cron.parse(expression)


@pytest.mark.parametrize("name", ["Mars/Base", "utc", "../etc/passwd", "Europe/"])
def test_unknown_time_zones_are_refused(name: str) -> None:
    with pytest.raises(TimingError, match="unknown time zone"):
        zone(name)


@pytest.mark.parametrize("seconds", [0, -5, 1.5, 366 * 86_400 + 1])
def test_bad_intervals_are_refused(seconds: float) -> None:
    with pytest.raises(TimingError, match="whole number of seconds"):
        interval(seconds)
