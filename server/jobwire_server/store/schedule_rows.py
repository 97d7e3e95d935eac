"""Schedule rows <-> records, shared by both stores.

A schedule is one row: what it does and when (`spec`, JSON, so a new field of the spec needs no
migration), whether it is paused or declared in the config file, and where it stands (`next_fire`,
NULL while paused, which the due-schedules index covers; `last_fire`, `last_job_id`).
"""

from __future__ import annotations

import base64
import json
from types import MappingProxyType
from typing import Any

from jobwire_server.domain.models import Webhook
from jobwire_server.domain.schedules import CatchupPolicy, JobTemplate, OverlapPolicy, Schedule, ScheduleSpec
from jobwire_server.domain.states import EventType

COLUMNS = ("id", "spec", "paused", "from_config", "next_fire", "last_fire", "last_job_id", "create_time",
           "update_time")
SELECT = ", ".join(COLUMNS)


def spec_to_json(spec: ScheduleSpec) -> str:
    t = spec.template
    template = {
        "queue": t.queue, "kind": t.kind, "payload": base64.b64encode(t.payload).decode("ascii"),
        "priority": t.priority, "max_attempts": t.max_attempts, "timeout": t.timeout,
        "phase_names": list(t.phase_names), "dedupe_key": t.dedupe_key, "labels": dict(t.labels),
        "webhook": None if t.webhook is None else {"url": t.webhook.url, "events": [e.value for e in t.webhook.events]},
    }
    if t.concurrency_key:  # only when set: the specs stored before there were keys read back the same
        template["concurrency_key"] = t.concurrency_key
    for name, unset in (("priority_unset", t.priority_unset), ("max_attempts_unset", t.max_attempts_unset)):
        if unset:  # likewise: the specs stored before these flags read back as set
            template[name] = True
    return json.dumps({
        "template": template, "cron": spec.cron, "time_zone": spec.time_zone, "interval": spec.interval,
        "jitter": spec.jitter, "overlap": spec.overlap.value, "catchup": spec.catchup.value,
        "description": spec.description,
    }, separators=(",", ":"), sort_keys=True)


def spec_from_json(text: str) -> ScheduleSpec:
    data = json.loads(text)
    t = data["template"]
    hook = t.get("webhook")
    template = JobTemplate(
        queue=t["queue"], kind=t["kind"], payload=base64.b64decode(t["payload"]), priority=int(t["priority"]),
        max_attempts=int(t["max_attempts"]), timeout=float(t["timeout"]), phase_names=tuple(t["phase_names"]),
        dedupe_key=t.get("dedupe_key", ""), labels=MappingProxyType(dict(t.get("labels", {}))),
        webhook=None if hook is None else Webhook(hook["url"], tuple(EventType(e) for e in hook["events"])),
        concurrency_key=t.get("concurrency_key", ""), priority_unset=bool(t.get("priority_unset", False)),
        max_attempts_unset=bool(t.get("max_attempts_unset", False)))
    return ScheduleSpec(
        template=template, cron=data.get("cron", ""), time_zone=data.get("time_zone", ""),
        interval=int(data.get("interval", 0)), jitter=float(data.get("jitter", 0.0)),
        overlap=OverlapPolicy(data.get("overlap", OverlapPolicy.ALLOW.value)),
        catchup=CatchupPolicy(data.get("catchup", CatchupPolicy.SKIP.value)), description=data.get("description", ""))


def params(schedule: Schedule) -> tuple[Any, ...]:
    """The row's values in COLUMNS order (flags as bool; a store adapts them)."""
    s = schedule
    return (s.id, spec_to_json(s.spec), s.paused, s.from_config, s.next_fire, s.last_fire, s.last_job_id or None,
            s.create_time, s.update_time)


def from_row(row: Any) -> Schedule:
    """A row in COLUMNS order (a tuple, or an asyncpg Record)."""
    return Schedule(
        id=row[0], spec=spec_from_json(row[1]), paused=bool(row[2]), from_config=bool(row[3]),
        next_fire=None if row[4] is None else float(row[4]), last_fire=None if row[5] is None else float(row[5]),
        last_job_id=row[6] or "", create_time=float(row[7]), update_time=float(row[8]))
