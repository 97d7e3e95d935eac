"""Request messages → validated domain values. Every bad field is reported at once: the functions
here collect all field violations and raise one :class:`InvalidArgument` listing them.

Field paths are proto field names (``priority``, ``webhook.url``, ``webhook.events[2]``, ``labels``),
prefixed with ``field_prefix`` for batches (``requests[3].kind``). Descriptions quote user input only
in truncated form, and a repeated or map field contributes at most a few violations (plus a count of
the rest), so an error always fits in gRPC trailers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Final, Protocol
from urllib.parse import urlsplit

from google.protobuf import duration_pb2, timestamp_pb2
from jobwire.v1 import jobwire_pb2

from jobwire_server.api.convert import event_type_from_proto, job_state_from_proto
from jobwire_server.domain.errors import FieldViolation, InvalidArgument, PayloadTooLarge
from jobwire_server.domain.ids import is_job_id
from jobwire_server.domain.models import DEFAULT_PRIORITY, DEFAULT_QUEUE, MAX_PRIORITY, MIN_PRIORITY, NewJob, Webhook
from jobwire_server.domain.queries import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, JobQuery, filters_digest
from jobwire_server.domain.queues import MAX_CONCURRENCY_KEY
from jobwire_server.domain.states import EventType, JobState
from jobwire_server.handlers.kind import NAME_PATTERN, Kind
from jobwire_server.handlers.registry import Registry

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "bulk_request_to_query",
    "decode_page_token",
    "encode_page_token",
    "enqueue_to_new_job",
    "filters_digest",
    "list_request_to_query",
    "validate_job_id",
    "watch_events_filter",
]

MAX_ATTEMPTS = 1000
MAX_DEDUPE_KEY = 256
MAX_REQUEST_ID = 128
MAX_LABEL_VALUE = 256
MAX_URL = 2048
LABEL_KEY_PATTERN = re.compile(r"^[A-Za-z0-9._/-]{1,63}$")
#: Values one `label_in` key may list.
MAX_LABEL_IN_VALUES = 100
#: Keys and values are compared and indexed as text, and PostgreSQL text cannot hold NUL.
NO_NUL = "must not contain NUL characters"
#: Characters of a cancel reason.
MAX_REASON = 1024
MAX_PAGE_TOKEN = 1024
#: At most this many violations per repeated/map field; the rest are summed up in one more.
MAX_VIOLATIONS_PER_FIELD = 10

#: Webhook events: the terminal ones by default; never the synthetic or the webhook's own.
DEFAULT_WEBHOOK_EVENTS: Final = (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED)
FORBIDDEN_WEBHOOK_EVENTS: Final = frozenset({EventType.SNAPSHOT, EventType.WEBHOOK_DELIVERED,
                                             EventType.WEBHOOK_FAILED})

#: google.protobuf.Timestamp's valid range (0001-01-01 … 9999-12-31T23:59:59.999999999Z) and Duration's.
_MIN_TIMESTAMP_SECONDS = -62_135_596_800
_MAX_TIMESTAMP_SECONDS = 253_402_300_799
_MAX_DURATION_SECONDS = 315_576_000_000
_NANOS = 1_000_000_000

_NAME_RULE = "must be 1–128 letters, digits, '.', '-' or '_'"
_TOKEN_MAC_BYTES = 16
_TOKEN_ALPHABET = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits the API enforces (the server builds one from its config)."""

    max_payload_bytes: int = 1 << 20
    max_labels: int = 64
    max_batch: int = 1000


DEFAULT_LIMITS: Final = Limits()


class _Violations:
    """Collects violations; each group (a repeated or map field) keeps at most a few of them."""

    __slots__ = ("_counts", "_prefix", "items")

    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        self._counts: dict[str, int] = {}
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str, group: str | None = None) -> None:
        if group is not None:
            seen = self._counts.get(group, 0) + 1
            self._counts[group] = seen
            if seen > MAX_VIOLATIONS_PER_FIELD:
                return
        self.items.append(FieldViolation(self._prefix + field, description))

    def raise_if_any(self, reason: str = "INVALID_ARGUMENT") -> None:
        for group, seen in self._counts.items():
            if seen > MAX_VIOLATIONS_PER_FIELD:
                hidden = seen - MAX_VIOLATIONS_PER_FIELD
                self.items.append(FieldViolation(self._prefix + group, f"{hidden} more violations not shown"))
        self._counts.clear()
        if self.items:
            raise InvalidArgument(self.items, reason=reason)

    def __bool__(self) -> bool:
        return bool(self.items) or any(self._counts.values())


def _show(text: str, limit: int = 40) -> str:
    """User input quoted for an error message, cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


# ----------------------------------------------------------------------------- time


def _timestamp_seconds(value: timestamp_pb2.Timestamp, field: str, out: _Violations) -> float | None:
    """Epoch seconds of a valid Timestamp; None (and a violation) for one out of range."""
    if not (_MIN_TIMESTAMP_SECONDS <= value.seconds <= _MAX_TIMESTAMP_SECONDS and 0 <= value.nanos < _NANOS):
        out.add(field, "must be a valid timestamp between 0001-01-01 and 9999-12-31")
        return None
    return value.seconds + value.nanos / _NANOS


def _duration_seconds(value: duration_pb2.Duration, field: str, out: _Violations) -> float | None:
    """Seconds of a valid, non-negative Duration; None (and a violation) otherwise."""
    seconds, nanos = value.seconds, value.nanos
    if (abs(seconds) > _MAX_DURATION_SECONDS or abs(nanos) >= _NANOS
            or (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0)):
        out.add(field, "must be a valid duration")
        return None
    if seconds < 0 or nanos < 0:
        out.add(field, "must not be negative")
        return None
    return seconds + nanos / _NANOS


# ----------------------------------------------------------------------------- names and labels


def _check_name(value: str, field: str, out: _Violations, group: str | None = None) -> bool:
    if NAME_PATTERN.fullmatch(value) is None:
        out.add(field, f"{_NAME_RULE}, got {_show(value)}", group)
        return False
    return True


def _check_labels(labels: Mapping[str, str], field: str, max_labels: int, out: _Violations) -> dict[str, str]:
    if len(labels) > max_labels:
        out.add(field, f"at most {max_labels} labels are allowed, got {len(labels)}")
    for key in sorted(labels):
        value = labels[key]
        if LABEL_KEY_PATTERN.fullmatch(key) is None:
            out.add(field, f"label key {_show(key)} must be 1–63 letters, digits, '.', '_', '/' or '-'", field)
        if len(value) > MAX_LABEL_VALUE:
            out.add(field, f"value of label {_show(key)} is {len(value)} characters; at most {MAX_LABEL_VALUE}", field)
        if "\x00" in value:
            out.add(field, f"value of label {_show(key)} {NO_NUL}", field)
    return dict(sorted(labels.items()))


# ----------------------------------------------------------------------------- webhook


def _check_url(url: str, field: str, out: _Violations) -> None:
    if not url:
        out.add(field, "required when a webhook is given")
        return
    if len(url) > MAX_URL:
        out.add(field, f"must be at most {MAX_URL} characters, got {len(url)}")
        return
    problem = "must be an absolute http or https URL"
    if any(c <= " " or c == "\x7f" for c in url):
        out.add(field, f"{problem} without spaces or control characters")
        return
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a malformed port
    except ValueError:
        out.add(field, problem)
        return
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        out.add(field, f"{problem}, got {_show(url)}")


def _webhook(config: jobwire_pb2.WebhookConfig, field: str, out: _Violations) -> Webhook:
    _check_url(config.url, f"{field}.url", out)
    events: list[EventType] = []
    for index, number in enumerate(config.events):
        path = f"{field}.events[{index}]"
        try:
            event_type = event_type_from_proto(number)
        except ValueError:
            out.add(path, f"unknown event type {number}", f"{field}.events")
            continue
        if event_type in FORBIDDEN_WEBHOOK_EVENTS:
            out.add(path, f"EVENT_TYPE_{event_type.name} cannot be delivered to a webhook", f"{field}.events")
        elif event_type not in events:
            events.append(event_type)
    if not config.events:
        events = list(DEFAULT_WEBHOOK_EVENTS)
    return Webhook(url=config.url, events=tuple(events))


# ----------------------------------------------------------------------------- enqueue


def _fingerprint(req: jobwire_pb2.EnqueueRequest) -> str:
    """sha256 hex of the request (without its request_id), serialized deterministically."""
    clone = jobwire_pb2.EnqueueRequest()
    clone.CopyFrom(req)
    clone.ClearField("request_id")
    return hashlib.sha256(clone.SerializeToString(deterministic=True)).hexdigest()


def _known_kinds(registry: Registry, limit: int = 20) -> str:
    names = sorted(kind.name for kind in registry)
    if not names:
        return "no kinds are registered"
    shown = ", ".join(names[:limit])
    return f"known kinds: {shown}" + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _kind(req: jobwire_pb2.EnqueueRequest, registry: Registry, out: _Violations) -> tuple[Kind | None, bool]:
    """The kind the request names, and whether it names one that has no handler."""
    if not req.kind:
        out.add("kind", "required")
    elif _check_name(req.kind, "kind", out):
        kind = registry.get(req.kind)
        if kind is not None:
            return kind, False
        out.add("kind", f"no handler is registered for kind {_show(req.kind)}; {_known_kinds(registry)}")
        return None, True
    return None, False


def _run_at(req: jobwire_pb2.EnqueueRequest, now: float, out: _Violations) -> float:
    has_run_at, has_delay = req.HasField("run_at"), req.HasField("delay")
    if has_run_at and has_delay:
        out.add("run_at", "at most one of run_at and delay may be set")
        out.add("delay", "at most one of run_at and delay may be set")
    elif has_run_at:
        requested = _timestamp_seconds(req.run_at, "run_at", out)
        if requested is not None:
            return max(requested, now)  # a time in the past means "now"
    elif has_delay:
        delay = _duration_seconds(req.delay, "delay", out)
        if delay is not None:
            if now + delay > _MAX_TIMESTAMP_SECONDS:
                out.add("delay", "puts the job's start beyond 9999-12-31")
            return now + delay
    return now


def _max_attempts(req: jobwire_pb2.EnqueueRequest, kind: Kind | None, out: _Violations) -> int:
    value = req.max_attempts
    if value < 0 or value > MAX_ATTEMPTS:
        out.add("max_attempts", f"must be between 1 and {MAX_ATTEMPTS} (0 means the kind's default), got {value}")
    elif value == 0 and kind is not None:
        return kind.max_attempts
    return value


def _timeout(req: jobwire_pb2.EnqueueRequest, kind: Kind | None, out: _Violations) -> float:
    timeout = 0.0
    if req.HasField("timeout"):
        timeout = _duration_seconds(req.timeout, "timeout", out) or 0.0
    if timeout == 0.0 and kind is not None:
        return kind.timeout
    return timeout


def enqueue_to_new_job(req: jobwire_pb2.EnqueueRequest, registry: Registry, now: float, limits: Limits,
                       field_prefix: str = "", *, trace_parent: str = "") -> NewJob:
    """Validate one EnqueueRequest and apply the defaults of its kind.

    Raises PayloadTooLarge (checked first, on ``payload``) or one InvalidArgument listing every bad
    field. Its reason is UNKNOWN_KIND when the kind has no handler (any other violations are
    listed too), INVALID_ARGUMENT otherwise.
    """
    size = len(req.payload)
    if size > limits.max_payload_bytes:
        raise PayloadTooLarge(f"{field_prefix}payload", size, limits.max_payload_bytes)
    out = _Violations(field_prefix)

    kind, unknown_kind = _kind(req, registry, out)
    queue = req.queue
    if not queue:
        queue = kind.queue if kind is not None else DEFAULT_QUEUE
    else:
        _check_name(queue, "queue", out)
    priority = req.priority or DEFAULT_PRIORITY
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        out.add("priority", f"must be between {MIN_PRIORITY} and {MAX_PRIORITY} (0 means {DEFAULT_PRIORITY}), "
                            f"got {req.priority}")
    run_at = _run_at(req, now, out)
    max_attempts = _max_attempts(req, kind, out)
    timeout = _timeout(req, kind, out)
    if len(req.dedupe_key) > MAX_DEDUPE_KEY:
        out.add("dedupe_key", f"must be at most {MAX_DEDUPE_KEY} characters, got {len(req.dedupe_key)}")
    if len(req.request_id) > MAX_REQUEST_ID:
        out.add("request_id", f"must be at most {MAX_REQUEST_ID} characters, got {len(req.request_id)}")
    if len(req.concurrency_key) > MAX_CONCURRENCY_KEY:
        out.add("concurrency_key", f"must be at most {MAX_CONCURRENCY_KEY} characters, "
                                   f"got {len(req.concurrency_key)}")
    for field, value in (("dedupe_key", req.dedupe_key), ("request_id", req.request_id),
                         ("concurrency_key", req.concurrency_key)):
        if "\x00" in value:
            out.add(field, NO_NUL)
    labels = _check_labels(req.labels, "labels", limits.max_labels, out)
    webhook = _webhook(req.webhook, "webhook", out) if req.HasField("webhook") else None

    out.raise_if_any("UNKNOWN_KIND" if unknown_kind else "INVALID_ARGUMENT")
    assert kind is not None  # no violation means the kind is known
    return NewJob(
        queue=queue,
        kind=kind.name,
        payload=req.payload,
        priority=priority,
        run_at=run_at,
        max_attempts=max_attempts,
        timeout=timeout,
        phase_names=tuple(kind.phases_for(req.payload)),
        dedupe_key=req.dedupe_key,
        request_id=req.request_id,
        fingerprint=_fingerprint(req) if req.request_id else "",  # only a request_id is ever compared
        labels=MappingProxyType(labels),
        webhook=webhook,
        trace_parent=trace_parent,
        concurrency_key=req.concurrency_key,
        # Unset: the queue's stored default (applied when the job is written) replaces these.
        priority_unset=req.priority == 0,
        max_attempts_unset=req.max_attempts == 0,
    )


# ----------------------------------------------------------------------------- ids


def _job_id_problem(value: str) -> str | None:
    if not value:
        return "required"
    if not is_job_id(value):
        return "must be a job id (UUID)"
    return None


def validate_job_id(value: str, field: str = "id") -> str:
    """`value` when it is a job id; InvalidArgument on `field` otherwise."""
    problem = _job_id_problem(value)
    if problem is not None:
        raise InvalidArgument([FieldViolation(field, problem)])
    return value


# ----------------------------------------------------------------------------- listing


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_page_token(last_id: str, filters_digest: str, secret: bytes) -> str:
    """An opaque, tamper-evident cursor: urlsafe base64 of a 16-byte HMAC-SHA256 followed by the JSON
    ``{"a": last_id, "f": filters_digest}`` it authenticates."""
    body = json.dumps({"a": last_id, "f": filters_digest}, sort_keys=True, separators=(",", ":")).encode()
    mac = hmac.new(secret, body, hashlib.sha256).digest()[:_TOKEN_MAC_BYTES]
    return _b64encode(mac + body)


def named_page(page_size: int, page_token: str, secret: bytes, kind: str,
               name_problem: Callable[[str], str | None], violations: list[FieldViolation]) -> tuple[str, int]:
    """(the name to list after, the page size) of a list of things kept by name (queues, schedules),
    whose page tokens are made with `kind` as their digest; raises InvalidArgument with `violations`
    and any of its own."""
    if page_size < 0:
        violations.append(FieldViolation("page_size", f"must not be negative, got {page_size}"))
    after = ""
    if page_token:
        decoded = decode_page_token(page_token, secret)
        if decoded is None or name_problem(decoded[0]) is not None or not hmac.compare_digest(decoded[1], kind):
            violations.append(FieldViolation("page_token", "is malformed or was altered; pass next_page_token "
                                                           "unchanged"))
        else:
            after = decoded[0]
    if violations:
        raise InvalidArgument(violations)
    return after, max(1, min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE))


def decode_page_token(token: str, secret: bytes) -> tuple[str, str] | None:
    """(last_id, filters_digest) of a token made by :func:`encode_page_token` with `secret`;
    None for anything malformed or altered."""
    if len(token) > MAX_PAGE_TOKEN or _TOKEN_ALPHABET.fullmatch(token) is None or len(token) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if _b64encode(raw) != token or len(raw) <= _TOKEN_MAC_BYTES:  # only the canonical spelling is valid
        return None
    mac, body = raw[:_TOKEN_MAC_BYTES], raw[_TOKEN_MAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()[:_TOKEN_MAC_BYTES]):
        return None
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("a"), str) or not isinstance(data.get("f"), str):
        return None
    return data["a"], data["f"]


class _FilterFields(Protocol):
    """The filter fields ListJobsRequest and JobFilter share (same names, same meaning)."""

    @property
    def queue(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def states(self) -> Sequence[int]: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def label_keys(self) -> Sequence[str]: ...
    @property
    def label_in(self) -> Mapping[str, jobwire_pb2.LabelValues]: ...
    def HasField(self, field_name: str) -> bool: ...


def _job_filter(source: _FilterFields, out: _Violations, limits: Limits, prefix: str = "") -> JobQuery:
    """The filters of a ListJobsRequest or a JobFilter as a query; violations on `prefix` + field."""
    if source.queue:
        _check_name(source.queue, f"{prefix}queue", out)
    if source.kind:
        _check_name(source.kind, f"{prefix}kind", out)
    states: set[JobState] = set()
    for index, number in enumerate(source.states):
        try:
            states.add(job_state_from_proto(number))
        except ValueError:
            out.add(f"{prefix}states[{index}]", "JOB_STATE_UNSPECIFIED is not a state" if number == 0
                    else f"unknown job state {number}", f"{prefix}states")
    labels = _check_labels(source.labels, f"{prefix}labels", limits.max_labels, out)
    def time(name: str) -> float | None:
        return _timestamp_seconds(getattr(source, name), prefix + name, out) if source.HasField(name) else None

    return JobQuery(queue=source.queue or None, kind=source.kind or None, states=frozenset(states),
                    labels=MappingProxyType(labels), label_keys=_label_keys(source.label_keys, prefix, limits, out),
                    label_in=_label_in(source.label_in, f"{prefix}label_in", limits, out),
                    created_after=time("created_after"), created_before=time("created_before"),
                    finished_after=time("finished_after"), finished_before=time("finished_before"))


def _label_keys(keys: Sequence[str], prefix: str, limits: Limits, out: _Violations) -> frozenset[str]:
    if len(keys) > limits.max_labels:
        out.add(f"{prefix}label_keys", f"at most {limits.max_labels} keys are allowed, got {len(keys)}")
    for index, key in enumerate(keys):
        if LABEL_KEY_PATTERN.fullmatch(key) is None:
            out.add(f"{prefix}label_keys[{index}]", f"label key {_show(key)} must be 1–63 letters, digits, "
                                                     "'.', '_', '/' or '-'", f"{prefix}label_keys")
    return frozenset(keys)


def _label_in(entries: Mapping[str, jobwire_pb2.LabelValues], field: str, limits: Limits,
              out: _Violations) -> Mapping[str, frozenset[str]]:
    if len(entries) > limits.max_labels:
        out.add(field, f"at most {limits.max_labels} keys are allowed, got {len(entries)}")
    found: dict[str, frozenset[str]] = {}
    for key in sorted(entries):
        values = list(entries[key].values)
        if LABEL_KEY_PATTERN.fullmatch(key) is None:
            out.add(field, f"label key {_show(key)} must be 1–63 letters, digits, '.', '_', '/' or '-'", field)
        if not 1 <= len(values) <= MAX_LABEL_IN_VALUES:
            out.add(field, f"label {_show(key)} needs 1–{MAX_LABEL_IN_VALUES} values, got {len(values)}", field)
        if any(len(value) > MAX_LABEL_VALUE for value in values):
            out.add(field, f"a value of label {_show(key)} is longer than {MAX_LABEL_VALUE} characters", field)
        found[key] = frozenset(values)
    return MappingProxyType(found)


def list_request_to_query(req: jobwire_pb2.ListJobsRequest, secret: bytes, *,
                          limits: Limits = DEFAULT_LIMITS) -> JobQuery:
    """Validate ListJobs filters and its page token (which must carry the same filters)."""
    out = _Violations()
    query = _job_filter(req, out, limits)
    page_size = req.page_size
    if page_size < 0:
        out.add("page_size", f"must not be negative, got {page_size}")
    query = replace(query, page_size=max(min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), 1))
    after_id: str | None = None
    if req.page_token:
        decoded = decode_page_token(req.page_token, secret)
        if decoded is None or _job_id_problem(decoded[0]) is not None:
            out.add("page_token", "is malformed or was altered; pass next_page_token unchanged")
        elif not out and not hmac.compare_digest(decoded[1], filters_digest(query)):
            out.add("page_token", "was made for different filters; use the filters of the first page")
        else:
            after_id = decoded[0]
    out.raise_if_any()
    return query if after_id is None else replace(query, after_id=after_id)


# ----------------------------------------------------------------------------- bulk actions


def bulk_request_to_query(req: jobwire_pb2.CancelJobsRequest | jobwire_pb2.RetryJobsRequest, *,
                          limits: Limits = DEFAULT_LIMITS) -> JobQuery:
    """Validate a CancelJobs or RetryJobs request: its filter (fields reported as `filter.<field>`),
    which must have a criterion unless `all` is set, and a cancel's `reason`."""
    out = _Violations()
    query = _job_filter(req.filter, out, limits, "filter.")
    if not query.has_criteria and not req.all:
        out.add("filter", "has no criteria, so it matches every job: give at least one (queue, kind, states, "
                          "labels, label_keys, label_in, a time bound), or set all to act on every job")
    if isinstance(req, jobwire_pb2.CancelJobsRequest) and len(req.reason) > MAX_REASON:
        out.add("reason", f"must be at most {MAX_REASON} characters")
    out.raise_if_any()
    return query


# ----------------------------------------------------------------------------- watching


def watch_events_filter(req: jobwire_pb2.WatchEventsRequest
                        ) -> tuple[frozenset[str], frozenset[str], frozenset[EventType]]:
    """(queues, kinds, types) of a WatchEvents request; an empty set matches everything."""
    out = _Violations()
    queues = _names(req.queues, "queues", out)
    kinds = _names(req.kinds, "kinds", out)
    types: set[EventType] = set()
    for index, number in enumerate(req.types):
        try:
            types.add(event_type_from_proto(number))
        except ValueError:
            out.add(f"types[{index}]", "EVENT_TYPE_UNSPECIFIED is not an event type" if number == 0
                    else f"unknown event type {number}", "types")
    out.raise_if_any()
    return queues, kinds, frozenset(types)


def _names(values: Iterable[str], field: str, out: _Violations) -> frozenset[str]:
    names: set[str] = set()
    for index, value in enumerate(values):
        if _check_name(value, f"{field}[{index}]", out, field):
            names.add(value)
    return frozenset(names)
