"""worker.proto messages <-> the engine's session records (engine/remote/messages.py), and the
hello's validation: every bad field is reported at once, as for the other requests."""

from __future__ import annotations

import re
from typing import Final

from google.protobuf import duration_pb2
from jobwire.v1 import worker_pb2

from jobwire_server.api.convert import duration_to_proto
from jobwire_server.domain.errors import FieldViolation, InvalidArgument
from jobwire_server.domain.kinds import KindSpec
from jobwire_server.domain.models import DEFAULT_QUEUE
from jobwire_server.domain.outcomes import Cancelled, Failed, Outcome, Succeeded
from jobwire_server.engine.remote.messages import (
    Ack,
    AckStatus,
    Assign,
    CancelCommand,
    Command,
    DrainCommand,
    HeldJob,
    Hello,
    PhaseDone,
    Pong,
    ProgressReport,
    Released,
    Report,
    Started,
    Welcome,
)
from jobwire_server.handlers.kind import NAME_PATTERN

MAX_SLOTS: Final = 1024
MAX_KINDS: Final = 100
MAX_PHASES: Final = 100
MAX_ATTEMPTS: Final = 1000
WORKER_ID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_NAME_RULE: Final = "must be 1-128 letters, digits, '.', '-' or '_'"

_STATUS: Final = {AckStatus.OK: worker_pb2.ACK_STATUS_OK, AckStatus.FENCED: worker_pb2.ACK_STATUS_FENCED,
                  AckStatus.CANCELLED: worker_pb2.ACK_STATUS_CANCELLED,
                  AckStatus.REJECTED: worker_pb2.ACK_STATUS_REJECTED}


def _seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


# ---------------------------------------------------------------------- the hello


def hello_from_proto(message: worker_pb2.WorkerHello) -> Hello:
    """A validated Hello, or InvalidArgument listing every bad field (paths under `hello.`)."""
    bad: list[FieldViolation] = []
    if WORKER_ID.fullmatch(message.worker_id) is None:
        bad.append(FieldViolation("hello.worker_id", "must be 1-128 letters, digits, '.', '-', '_' or ':'"))
    if not 1 <= message.slots <= MAX_SLOTS:
        bad.append(FieldViolation("hello.slots", f"must be within 1-{MAX_SLOTS}, got {message.slots}"))
    if not 1 <= len(message.kinds) <= MAX_KINDS:
        bad.append(FieldViolation("hello.kinds", f"must declare 1-{MAX_KINDS} kinds, got {len(message.kinds)}"))
    kinds = [_kind(kind, f"hello.kinds[{i}]", bad) for i, kind in enumerate(message.kinds[:MAX_KINDS])]
    if len({k.name for k in kinds}) != len(kinds):
        bad.append(FieldViolation("hello.kinds", "declares a kind twice"))
    for i, queue in enumerate(message.queues):
        if NAME_PATTERN.fullmatch(queue) is None:
            bad.append(FieldViolation(f"hello.queues[{i}]", _NAME_RULE))
    held = [HeldJob(h.job_id, h.attempt, h.phase) for h in message.held]
    if len(held) > message.slots:
        bad.append(FieldViolation("hello.held", "holds more jobs than the worker has slots"))
    if bad:
        raise InvalidArgument(bad[:20])
    sdk = f"{message.sdk_name or 'unknown SDK'} {message.sdk_version}".strip()
    return Hello(message.worker_id, sdk, tuple(kinds), tuple(message.queues), message.slots, tuple(held))


def _kind(message: worker_pb2.WorkerKind, path: str, bad: list[FieldViolation]) -> KindSpec:
    if NAME_PATTERN.fullmatch(message.name) is None:
        bad.append(FieldViolation(f"{path}.name", _NAME_RULE))
    phases = tuple(message.phases)
    if not 1 <= len(phases) <= MAX_PHASES or len(set(phases)) != len(phases):
        bad.append(FieldViolation(f"{path}.phases", f"must list 1-{MAX_PHASES} distinct phase names"))
    for j, phase in enumerate(phases):
        if NAME_PATTERN.fullmatch(phase) is None:
            bad.append(FieldViolation(f"{path}.phases[{j}]", _NAME_RULE))
    if message.default_queue and NAME_PATTERN.fullmatch(message.default_queue) is None:
        bad.append(FieldViolation(f"{path}.default_queue", _NAME_RULE))
    if not 0 <= message.default_max_attempts <= MAX_ATTEMPTS:
        bad.append(FieldViolation(f"{path}.default_max_attempts", f"must be within 0-{MAX_ATTEMPTS}"))
    timeout = _seconds(message.default_timeout)
    base = _seconds(message.retry_base_delay) or 1.0
    cap = _seconds(message.retry_max_delay) or 300.0
    if timeout < 0:
        bad.append(FieldViolation(f"{path}.default_timeout", "must not be negative"))
    if not 0 < base <= cap:
        bad.append(FieldViolation(f"{path}.retry_base_delay", "must be positive and at most retry_max_delay"))
    return KindSpec(name=message.name, phases=phases, queue=message.default_queue or DEFAULT_QUEUE,
                    max_attempts=message.default_max_attempts or 3, timeout=max(timeout, 0.0),
                    retry_base_delay=base, retry_max_delay=cap)


# ---------------------------------------------------------------------- reports


def report_from_proto(message: worker_pb2.ConnectRequest) -> Report | None:
    """The report a message carries; None for the other messages (hello, credit, ping, none)."""
    which = message.WhichOneof("message")
    if which == "started":
        s = message.started
        return Started(s.job_id, s.attempt, s.phase)
    if which == "progress":
        p = message.progress
        return ProgressReport(p.job_id, p.attempt, p.phase, p.percent, p.message)
    if which == "phase_done":
        return _phase_done(message.phase_done)
    if which == "released":
        r = message.released
        return Released(r.job_id, r.attempt, r.reason)
    return None


def _phase_done(message: worker_pb2.PhaseDoneReport) -> PhaseDone:
    which = message.WhichOneof("outcome")
    outcome: Outcome
    if which == "failure":
        f = message.failure
        retry_after = _seconds(f.retry_after) if f.HasField("retry_after") and f.retryable else None
        outcome = Failed(f.message[:4096] or f.type or "failed", f.type[:200] or "Error", f.retryable,
                         max(retry_after, 0.0) if retry_after is not None else None)
    elif which == "cancelled":
        outcome = Cancelled()
    else:  # a result, or no outcome set: an empty result
        outcome = Succeeded(message.result)
    return PhaseDone(message.job_id, message.attempt, message.phase, outcome, len(message.result))


# ---------------------------------------------------------------------- commands


def command_to_proto(command: Command) -> worker_pb2.ConnectResponse:
    if isinstance(command, Ack):
        return worker_pb2.ConnectResponse(ack=worker_pb2.WorkerAck(
            job_id=command.job_id, attempt=command.attempt, phase=command.phase, status=_STATUS[command.status],
            next_phase=command.next_phase, reason=command.reason.value, detail=command.detail))
    if isinstance(command, Assign):
        return worker_pb2.ConnectResponse(assign=_assign(command))
    if isinstance(command, CancelCommand):
        return worker_pb2.ConnectResponse(cancel=worker_pb2.CancelJobCommand(
            job_id=command.job_id, attempt=command.attempt, reason=command.reason,
            grace=duration_to_proto(command.grace)))
    if isinstance(command, Pong):
        return worker_pb2.ConnectResponse(pong=worker_pb2.WorkerPong(nonce=command.nonce))
    if isinstance(command, DrainCommand):
        return worker_pb2.ConnectResponse(drain=worker_pb2.DrainCommand(deadline=duration_to_proto(command.deadline)))
    return worker_pb2.ConnectResponse(welcome=_welcome(command))


def _welcome(welcome: Welcome) -> worker_pb2.WorkerWelcome:
    return worker_pb2.WorkerWelcome(
        session_id=welcome.session_id, lease_ttl=duration_to_proto(welcome.lease_ttl),
        ping_interval=duration_to_proto(welcome.ping_interval), keep_job_ids=welcome.keep,
        drop_job_ids=welcome.drop, max_result_bytes=welcome.max_result_bytes)


def _assign(assign: Assign) -> worker_pb2.JobAssignment:
    job = assign.job
    done = [worker_pb2.DonePhase(name=name, result=result) for name, result in job.results.items()]
    message = worker_pb2.JobAssignment(
        job_id=job.id, attempt=job.attempt, kind=job.kind, queue=job.queue, payload=job.payload,
        labels=dict(job.labels), phases=[p.name for p in job.phases], done=done,
        phase=job.phases[assign.phase].name if assign.phase < len(job.phases) else "",
        traceparent=job.trace_parent)
    if job.timeout > 0:
        message.phase_timeout.CopyFrom(duration_to_proto(job.timeout))
    return message
