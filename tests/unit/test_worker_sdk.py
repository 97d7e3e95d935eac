"""The worker SDK's pure parts: reconnect backoff, how handler outcomes and kinds become protocol
messages."""

from __future__ import annotations

import asyncio
import random

import pytest
from jobwire.v1 import worker_pb2
from jobwire.worker import Backoff, Kind, PermanentError, RetryableError, RetryPolicy, Worker, protocol


def test_backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() -> None:
    random.seed(7)
    backoff = Backoff(initial=0.1, maximum=5.0)
    for failures, ceiling in ((0, 0.1), (1, 0.2), (3, 0.8), (6, 5.0), (60, 5.0)):
        draws = [backoff.delay(failures) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in draws), failures
        assert max(draws) - min(draws) > ceiling / 10  # jittered, not one value


@pytest.mark.parametrize(("exc", "retryable", "retry_after"), [
    (PermanentError("bad input"), False, None),
    (RetryableError("busy", retry_after=30), True, 30.0),
    (RetryableError("busy"), True, None),
    (ValueError("oops"), True, None),
])
def test_a_handler_exception_becomes_a_failure(exc: Exception, retryable: bool, retry_after: float | None) -> None:
    failure = protocol.failure(exc)
    assert (failure.type, failure.message, failure.retryable) == (type(exc).__name__, str(exc), retryable)
    assert (protocol.seconds(failure.retry_after) if failure.HasField("retry_after") else None) == retry_after


@pytest.mark.parametrize(("value", "result"), [
    (None, b""), (b"raw", b"raw"), ("text", b"text"), ({"a": [1, 2]}, b'{"a":[1,2]}'),
])
def test_a_return_value_becomes_the_result(value: object, result: bytes) -> None:
    assert protocol.to_bytes(value) == result


def test_a_return_value_that_is_not_bytes_text_or_json_is_refused() -> None:
    with pytest.raises(TypeError, match="not bytes, str or JSON"):
        protocol.to_bytes(object())


def test_a_kind_is_declared_with_its_phases_and_defaults() -> None:
    kind = Kind("thumbnail", queue="media", max_attempts=5, timeout=60, retry=RetryPolicy(0.5, 30))
    kind.phase("fetch")(lambda ctx: b"")
    kind.phase("resize")(lambda ctx: b"")
    declared = protocol.declare(kind)
    assert (declared.name, list(declared.phases), declared.default_queue, declared.default_max_attempts) == (
        "thumbnail", ["fetch", "resize"], "media", 5)
    assert [protocol.seconds(d) for d in (declared.default_timeout, declared.retry_base_delay,
                                          declared.retry_max_delay)] == [60.0, 0.5, 30.0]


def test_a_finished_phase_task_becomes_its_report() -> None:
    async def report_of(outcome: object) -> worker_pb2.PhaseDoneReport:
        async def phase() -> bytes:
            if isinstance(outcome, BaseException):
                raise outcome
            return b"result"

        task = asyncio.ensure_future(phase())
        await asyncio.wait({task})
        return protocol.phase_done("job", 2, "fetch", task).phase_done

    done = asyncio.run(report_of(None))
    assert (done.job_id, done.attempt, done.phase, done.result) == ("job", 2, "fetch", b"result")
    failed = asyncio.run(report_of(PermanentError("no")))
    assert (failed.WhichOneof("outcome"), failed.failure.retryable) == ("failure", False)
    assert protocol.phase_done("job", 2, "fetch", None, cancelled=True).phase_done.cancelled


def test_a_worker_needs_kinds_and_a_sane_slot_count() -> None:
    kind = Kind("k")
    kind.phase("run")(lambda ctx: b"")
    with pytest.raises(ValueError, match="at least one kind"):
        Worker("127.0.0.1:1", [])
    with pytest.raises(ValueError, match="slots"):
        Worker("127.0.0.1:1", [kind], slots=0)
    assert Worker("127.0.0.1:1", [kind]).slots == 100
