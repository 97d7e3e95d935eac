"""Schedules declared in the config file: the ``[[schedules]]`` tables.

Each table is checked here for its shape (known keys, value types, durations), so a typo fails
like any other setting. What it says (the cron expression, the zone, the kind…) is validated like
a CreateSchedule when the server starts, which then makes the stored config schedules match the
file: new ones are created, changed ones replaced, those no longer in the file deleted.

    [[schedules]]
    id = "nightly-report"
    cron = "0 3 * * *"              # or: every = "15m"
    time_zone = "Europe/Paris"
    kind = "report"
    payload = { day = "yesterday" } # a table or array is sent as JSON, a string as it is
    overlap = "skip"                # allow (default), skip, cancel_previous
    catchup = "run_once"            # skip (default), run_once
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobwire_server.domain.schedules import CatchupPolicy, OverlapPolicy


class ScheduleFileError(ValueError):
    """A ``[[schedules]]`` table that is malformed; the message names it and the key."""


@dataclass(frozen=True)
class DeclaredSchedule:
    """One ``[[schedules]]`` table, its values typed (durations in seconds)."""

    id: str
    kind: str
    cron: str = ""
    every: float = 0.0
    time_zone: str = ""
    jitter: float = 0.0
    overlap: str = ""
    catchup: str = ""
    description: str = ""
    queue: str = ""
    payload: bytes = b""
    priority: int = 0
    max_attempts: int = 0
    timeout: float = 0.0
    dedupe_key: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    webhook_url: str = ""
    webhook_events: tuple[str, ...] = ()


def parse_schedules(name: str, value: Any, duration: Callable[[str, Any], float]) -> tuple[DeclaredSchedule, ...]:
    """The ``[[schedules]]`` array of tables; `duration` parses ``30s``-style values."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ScheduleFileError(f"{name} must be an array of tables ([[schedules]])")
    out = [_one(f"{name}[{index}]", item, duration) for index, item in enumerate(value)]
    seen: set[str] = set()
    for item in out:
        if item.id in seen:
            raise ScheduleFileError(f"{name}: two schedules have the id {item.id!r}")
        seen.add(item.id)
    return tuple(out)


_STRINGS = ("id", "kind", "cron", "time_zone", "description", "queue", "dedupe_key")
_INTS = ("priority", "max_attempts")
_DURATIONS = ("every", "jitter", "timeout")
_KEYS = frozenset({*_STRINGS, *_INTS, *_DURATIONS, "overlap", "catchup", "payload", "labels", "webhook"})


def _one(where: str, table: dict[str, Any], duration: Callable[[str, Any], float]) -> DeclaredSchedule:
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ScheduleFileError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    for key in ("id", "kind"):
        if key not in table:
            raise ScheduleFileError(f"{where}: {key} is required")
    values: dict[str, Any] = {}
    for key in _STRINGS:
        if key in table:
            if not isinstance(table[key], str):
                raise ScheduleFileError(f"{where}.{key} must be a string")
            values[key] = table[key]
    where = f"{where} ({values['id']!r})"
    for key in _INTS:
        if key in table:
            if isinstance(table[key], bool) or not isinstance(table[key], int):
                raise ScheduleFileError(f"{where}.{key} must be an integer")
            values[key] = table[key]
    for key in _DURATIONS:
        if key in table:
            values[key] = duration(f"{where}.{key}", table[key])
    values["overlap"] = _choice(where, "overlap", table.get("overlap", ""), OverlapPolicy)
    values["catchup"] = _choice(where, "catchup", table.get("catchup", ""), CatchupPolicy)
    values["payload"] = _payload(where, table.get("payload", ""))
    values["labels"] = _labels(where, table.get("labels", {}))
    url, events = _webhook(where, table.get("webhook"))
    return DeclaredSchedule(**values, webhook_url=url, webhook_events=events)


def _choice(where: str, key: str, value: Any, options: type[OverlapPolicy] | type[CatchupPolicy]) -> str:
    if value == "":
        return ""
    names = [o.value.lower() for o in options]
    if not isinstance(value, str) or value.lower().replace("-", "_") not in names:
        raise ScheduleFileError(f"{where}.{key} must be one of {', '.join(names)}, got {value!r}")
    return value.upper().replace("-", "_")


def _payload(where: str, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    raise ScheduleFileError(f"{where}.payload must be a string, or a table or array (sent as JSON)")


def _labels(where: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ScheduleFileError(f"{where}.labels must be a table of strings")
    return dict(value)


def _webhook(where: str, value: Any) -> tuple[str, tuple[str, ...]]:
    if value is None:
        return "", ()
    if not isinstance(value, dict) or set(value) - {"url", "events"} or not isinstance(value.get("url"), str):
        raise ScheduleFileError(f"{where}.webhook must be a table with url (and events)")
    events = value.get("events", [])
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise ScheduleFileError(f"{where}.webhook.events must be an array of event names")
    return value["url"], tuple(e.upper().removeprefix("EVENT_TYPE_") for e in events)
