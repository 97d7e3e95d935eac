"""When a schedule fires: a cron expression read in an IANA time zone, or a fixed interval.

Cron expressions are parsed and stepped by croniter, over *wall-clock* times of the zone (naive
datetimes, so no arithmetic crosses an offset change); each wall-clock time is then placed on the
timeline here, which is where daylight saving changes are decided, the way cron does it:

- A wall-clock time the clocks skip (spring forward) fires once, at the moment of the jump, when
  the expression names a fixed minute and hour; an expression whose minute or hour field starts
  with ``*`` (``*/15 * * * *``, ``0 * * * *``, ``@hourly``) runs on the new clock and has no firing
  in the skipped hour.
- A wall-clock time the clocks repeat (fall back) fires once, at its first occurrence, for a fixed
  minute and hour; a ``*`` expression fires at both occurrences (they are an hour apart).

Every function is pure: the same expression, zone and instant always give the same times, on
every replica.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo, available_timezones

from croniter import CroniterBadDateError, CroniterError, croniter

MACROS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FIELDS: Final = ("minute", "hour", "day-of-month", "month", "day-of-week")
DEFAULT_ZONE: Final = "UTC"
#: Wall-clock distance beyond which no clock change can reorder firings (real ones move by at most
#: two hours): the window searched around an instant.
_MARGIN: Final = timedelta(hours=4)
#: Longest interval a schedule may have.
MAX_INTERVAL: Final = 366 * 86_400
_TOKEN = re.compile(r"[,\-/()]")


class TimingError(ValueError):
    """A cron expression, time zone or interval that cannot be used; the message says why."""


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` ("" is UTC); TimingError for a name the zone database lacks."""
    name = name or DEFAULT_ZONE
    if name != DEFAULT_ZONE and name not in _zone_names():
        raise TimingError(f"unknown time zone {name[:64]!r}; use an IANA name such as Europe/Paris, "
                          "America/New_York or UTC")
    return ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class Cron:
    """A cron expression in a time zone."""

    expression: str
    zone: ZoneInfo
    #: The five fields (a macro expanded).
    fields: str
    #: True when the minute or hour field starts with `*`: such an expression follows the wall
    #: clock through daylight saving changes instead of keeping fixed times (see the module).
    wall_clock: bool

    @classmethod
    def parse(cls, expression: str, zone_name: str = DEFAULT_ZONE) -> Cron:
        """Raises TimingError naming what is wrong with the expression or the zone."""
        tz = zone(zone_name)
        text = " ".join(expression.split())
        if not text:
            raise TimingError("a cron expression is required")
        fields = MACROS.get(text.lower(), text)
        parts = fields.split(" ")
        if text.startswith("@") and text.lower() not in MACROS:
            raise TimingError(f"unknown macro {text[:20]!r}; use one of {', '.join(MACROS)}")
        if len(parts) != len(FIELDS):
            raise TimingError(f"must have 5 fields ({' '.join(FIELDS)}), got {len(parts)}")
        for name, part in zip(FIELDS, parts, strict=True):
            # croniter's hashed (H) and random (R) values would differ between replicas.
            if any(token.upper() in ("H", "R") for token in _TOKEN.split(part)):
                raise TimingError(f"{name} field {part[:20]!r}: H and R are not supported")
        try:
            croniter(fields, datetime(2000, 1, 1)).get_next(datetime)
        except CroniterBadDateError:
            raise TimingError(f"{text[:60]!r} never matches a date") from None
        except (CroniterError, ValueError, KeyError, IndexError) as exc:
            raise TimingError(f"{text[:60]!r} is not a valid cron expression ({str(exc)[:120]})") from None
        return cls(expression=text, zone=tz, fields=fields, wall_clock=parts[0][0] == "*" or parts[1][0] == "*")

    def after(self, t: float, count: int = 1) -> list[float]:
        """The first `count` firing times strictly after instant `t`, earliest first."""
        found: set[float] = set()
        steps = croniter(self.fields, self._wall(t) - _MARGIN)
        while True:
            wall: datetime = steps.get_next(datetime)
            found.update(x for x in self._instants(wall) if x > t)
            if len(found) >= count:
                best = sorted(found)[:count]
                if wall - _MARGIN > self._wall(best[-1]):  # nothing later can come before these
                    return best

    def latest(self, t: float) -> float | None:
        """The last firing time at or before instant `t` (None when there is none)."""
        found: set[float] = set()
        steps = croniter(self.fields, self._wall(t) + _MARGIN)
        while True:
            try:
                wall: datetime = steps.get_prev(datetime)
            except CroniterBadDateError:
                return max(found) if found else None
            found.update(x for x in self._instants(wall) if x <= t)
            if found and wall + _MARGIN < self._wall(max(found)):
                return max(found)

    def _wall(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.zone).replace(tzinfo=None)

    def _instants(self, wall: datetime) -> list[float]:
        """The instants a wall-clock time fires at: one, two (a repeated hour, `*` expressions), or
        none (a skipped hour, `*` expressions); a skipped fixed time fires at the jump."""
        first = wall.replace(tzinfo=self.zone, fold=0).timestamp()
        second = wall.replace(tzinfo=self.zone, fold=1).timestamp()
        if first == second:
            return [first]
        if first < second:  # the clocks repeat this time: fold 0 is its first occurrence
            return [first, second] if self.wall_clock else [first]
        # The clocks skip this time (fold 0 reads it with the offset before the jump, so later).
        return [] if self.wall_clock else [self._jump(second, first)]

    def _jump(self, low: float, high: float) -> float:
        """The instant between `low` and `high` at which the zone's offset changes."""
        before = datetime.fromtimestamp(low, self.zone).utcoffset()
        lo, hi = math.floor(low), math.ceil(high)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if datetime.fromtimestamp(mid, self.zone).utcoffset() == before:
                lo = mid
            else:
                hi = mid
        return float(hi)


@dataclass(frozen=True, slots=True)
class Interval:
    """A fixed interval in whole seconds; firings fall on its multiples since the epoch."""

    seconds: int

    def after(self, t: float, count: int = 1) -> list[float]:
        first = (math.floor(t / self.seconds) + 1) * self.seconds
        return [float(first + n * self.seconds) for n in range(count)]

    def latest(self, t: float) -> float | None:
        return float(math.floor(t / self.seconds) * self.seconds)


Timing = Cron | Interval


def interval(seconds: float) -> Interval:
    """Raises TimingError unless `seconds` is a whole number from 1 to MAX_INTERVAL."""
    if seconds != int(seconds) or not 1 <= seconds <= MAX_INTERVAL:
        raise TimingError(f"must be a whole number of seconds from 1s to {MAX_INTERVAL // 86_400} days")
    return Interval(int(seconds))


def show(t: float) -> str:
    """An instant as RFC 3339 UTC, for messages and request ids."""
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
