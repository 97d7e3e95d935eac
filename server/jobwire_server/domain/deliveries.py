"""Webhook deliveries: what goes into the outbox, the body receivers get, and how an attempt ends.

No I/O here. The store writes a `NewDelivery` for every committed event a job's webhook asks for,
in the same transaction as the event; the sender (engine/webhooks) delivers it and reports each
attempt as an `AttemptRecord` with the `DeliveryVerdict` it reached.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from jobwire_server.domain.ids import new_job_id
from jobwire_server.domain.models import Event, Job


class DeliveryState(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    #: Gave up: a refused address, a 3xx or 4xx answer, or the retry schedule ran out.
    FAILED = "FAILED"
    #: Not sent: the receiver answered 410 Gone to another delivery of the same job and URL.
    STOPPED = "STOPPED"


class Verdict(StrEnum):
    """What one attempt means for its delivery."""

    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    #: 410 Gone: this delivery fails and the job's other deliveries to the URL stop.
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class NewDelivery:
    id: str
    job_id: str
    event_seq: int
    event_type: str
    url: str
    body: bytes
    time: float


@dataclass(frozen=True, slots=True)
class Delivery:
    """An outbox row the sender has taken to deliver."""

    id: str
    job_id: str
    event_seq: int
    event_type: str
    url: str
    body: bytes
    attempts: int
    create_time: float
    #: Of the job, for traces and metrics.
    queue: str = ""
    kind: str = ""
    trace_parent: str = ""


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One POST, as the delivery log keeps it."""

    number: int
    time: float
    url: str
    status_code: int
    latency: float
    response: str
    error: str


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    delivery: Delivery
    record: AttemptRecord
    verdict: Verdict
    #: When to try again (RETRY only).
    next_at: float = 0.0


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    """A delivery with its log, for `jobwire webhooks ID`."""

    id: str
    job_id: str
    event_seq: int
    event_type: str
    url: str
    state: DeliveryState
    attempts: int
    next_at: float
    create_time: float
    last_error: str
    log: tuple[AttemptRecord, ...]


def deliveries_for(event: Event) -> NewDelivery | None:
    """The outbox row an event needs, if its job's webhook asks for this event type."""
    job = event.job
    if job is None or job.webhook is None or event.type not in job.webhook.events:
        return None
    return NewDelivery(
        id="msg_" + new_job_id(event.time).replace("-", ""), job_id=job.id, event_seq=event.sequence,
        event_type=event.type.value, url=job.webhook.url, body=webhook_body(event, job), time=event.time,
    )


def webhook_body(event: Event, job: Job) -> bytes:
    """The JSON a receiver gets, in the Standard Webhooks shape: type, timestamp, data. `data` uses
    the field names and enum spellings of the proto's JSON mapping so one parser fits both."""
    data: dict[str, Any] = {
        "jobId": job.id,
        "sequence": event.sequence,
        "type": "EVENT_TYPE_" + event.type.value,
        "job": _job_json(job),
    }
    if event.phase:
        data["phase"] = event.phase
    if event.detail:
        data["detail"] = event.detail
    body = {"type": "job." + event.type.value.lower(), "timestamp": _rfc3339(event.time), "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _job_json(job: Job) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id, "queue": job.queue, "kind": job.kind, "state": "JOB_STATE_" + job.state.value,
        "attempt": job.attempt, "maxAttempts": job.max_attempts, "priority": job.priority,
        "labels": dict(job.labels), "createTime": _rfc3339(job.create_time),
    }
    if job.finish_time is not None:
        out["finishTime"] = _rfc3339(job.finish_time)
    if job.result:
        out["result"] = base64.b64encode(job.result).decode()
    if job.error is not None:
        out["error"] = {"type": job.error.type, "message": job.error.message, "phase": job.error.phase}
    return out


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def strip_query(url: str) -> str:
    """`url` without query string, fragment and user:password (they may carry secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a malformed port is left out rather than echoed
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
