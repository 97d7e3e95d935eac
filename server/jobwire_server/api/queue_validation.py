"""Queue requests → validated domain values, every bad field reported at once.

An UpdateQueue carrying fields this server does not know (a newer client's setting) is refused
rather than half applied: the caller would believe a limit is in force that is not.
"""

from __future__ import annotations

import math
from typing import Final

from google.protobuf import message as _message
from google.protobuf import unknown_fields
from jobwire.v1 import jobwire_pb2

from jobwire_server.api.validation import MAX_ATTEMPTS, named_page
from jobwire_server.domain.errors import FieldViolation, InvalidArgument
from jobwire_server.domain.models import MAX_PRIORITY, MIN_PRIORITY
from jobwire_server.domain.queues import MAX_BURST, MAX_CONCURRENCY, MAX_KEY_LIMIT, MAX_RATE, QueueChange
from jobwire_server.handlers.kind import NAME_PATTERN

#: What a ListQueues page token carries instead of a filters digest (so another list's token is refused).
PAGE_TOKEN_KIND: Final = "queues"
_SETTINGS: Final = ("concurrency_limit", "rate_limit", "rate_burst", "key_limit", "default_priority",
                    "default_max_attempts")
_NAME_RULE: Final = "must be 1–128 letters, digits, '.', '-' or '_'"


def queue_name_problem(value: str) -> str | None:
    if not value:
        return "required"
    if NAME_PATTERN.fullmatch(value) is None:
        return f"{_NAME_RULE}, got {value[:40]!r}"
    return None


def validate_queue_request(request: _message.Message, field: str = "name") -> str:
    """The queue name of a Pause/Resume/GetQueue request; InvalidArgument for a bad name or for
    fields this server does not know."""
    name: str = getattr(request, field)
    violations = _unknown(request)
    problem = queue_name_problem(name)
    if problem is not None:
        violations.append(FieldViolation(field, problem))
    if violations:
        raise InvalidArgument(violations)
    return name


def _unknown(request: _message.Message) -> list[FieldViolation]:
    found = unknown_fields.UnknownFieldSet(request)
    numbers = sorted({found[index].field_number for index in range(len(found))})
    if not numbers:
        return []
    return [FieldViolation("(unknown fields)", f"this server does not know field number(s) "
                                               f"{', '.join(map(str, numbers))}; upgrade it, or leave them unset")]


def _bounded(request: jobwire_pb2.UpdateQueueRequest, field: str, low: int, high: int,
             out: list[FieldViolation], note: str = "") -> int | None:
    if not request.HasField(field):
        return None
    value: int = getattr(request, field)
    if value != 0 and not low <= value <= high:
        out.append(FieldViolation(field, f"must be between {low} and {high:,} (0 {note or 'removes it'}), got {value}"))
    return value


def update_to_change(request: jobwire_pb2.UpdateQueueRequest) -> tuple[str, QueueChange]:
    """(queue name, the change) of an UpdateQueue request."""
    out = _unknown(request)
    problem = queue_name_problem(request.name)
    if problem is not None:
        out.append(FieldViolation("name", problem))
    concurrency = _bounded(request, "concurrency_limit", 1, MAX_CONCURRENCY, out)
    burst = _bounded(request, "rate_burst", 1, MAX_BURST, out, "means one second's worth of the rate")
    key_limit = _bounded(request, "key_limit", 1, MAX_KEY_LIMIT, out)
    priority = _bounded(request, "default_priority", MIN_PRIORITY, MAX_PRIORITY, out)
    attempts = _bounded(request, "default_max_attempts", 1, MAX_ATTEMPTS, out)
    rate = _rate(request, out)
    if not out and not any(request.HasField(f) for f in _SETTINGS):
        out.append(FieldViolation("name", "no setting given: set at least one field to change"))
    if out:
        raise InvalidArgument(out)
    return request.name, QueueChange(concurrency=concurrency, rate=rate, burst=burst, key_limit=key_limit,
                                      default_priority=priority, default_max_attempts=attempts)


def _rate(request: jobwire_pb2.UpdateQueueRequest, out: list[FieldViolation]) -> float | None:
    if not request.HasField("rate_limit"):
        return None
    rate = request.rate_limit
    if not math.isfinite(rate) or rate < 0 or rate > MAX_RATE:
        out.append(FieldViolation("rate_limit", f"must be between 0 and {MAX_RATE:,.0f} jobs per second "
                                                f"(0 removes it), got {rate}"))
    return rate


def page_from_proto(req: jobwire_pb2.ListQueuesRequest, secret: bytes) -> tuple[str, int]:
    """(the name to list after, the page size) of a ListQueues request."""
    return named_page(req.page_size, req.page_token, secret, PAGE_TOKEN_KIND, queue_name_problem, _unknown(req))
