"""The outbox sender: takes due deliveries, makes one attempt each, and records the outcome.

Woken by commits that wrote outbox rows, by finished attempts, and by a timer set to the next
delivery due; no polling. Taken deliveries wait in one lane per destination and start round-robin,
with a cap per destination (see lanes.py), so slow receivers delay only their own webhooks.
A delivery is leased from the moment it is taken; a crash leaves the lease, and the next start
releases it, so a delivery is delayed by a crash but never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.trace import Tracer

from jobwire_server.domain.clock import Clock
from jobwire_server.domain.deliveries import AttemptOutcome, AttemptRecord, Delivery, Verdict, strip_query
from jobwire_server.domain.errors import StorageError
from jobwire_server.domain.models import Event, PendingEvent
from jobwire_server.domain.states import EventType
from jobwire_server.engine.webhooks.http import HttpResult, WebhookClient
from jobwire_server.engine.webhooks.lanes import Lanes
from jobwire_server.engine.webhooks.signing import Signer
from jobwire_server.engine.writer import Writer
from jobwire_server.metrics import Metrics
from jobwire_server.store.base import JobStore, RecordDeliveryAttempt, ReleaseDeliveryLeases, TakeDeliveries
from jobwire_server.telemetry import webhook_span

log = logging.getLogger("jobwire.webhooks")

#: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts over about 27.5 hours.
DEFAULT_SCHEDULE: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
#: How long a taken delivery stays leased beyond its attempt timeout.
LEASE_MARGIN = 30.0
JITTER = 0.1
#: The longest wait a receiver's Retry-After can ask for.
RETRY_AFTER_CAP = 86_400.0
ERROR_BACKOFF = 1.0


@dataclass(frozen=True, slots=True)
class SenderSettings:
    schedule: Sequence[float] = DEFAULT_SCHEDULE
    timeout: float = 10.0
    concurrency: int = 16
    #: Attempts in flight at once to one destination (host and port).
    per_destination: int = 4
    read_cap: int = 64 * 1024


_METRIC_OUTCOME = {Verdict.DELIVERED: "delivered", Verdict.RETRY: "retry", Verdict.FAILED: "failed",
                   Verdict.GONE: "failed"}


class WebhookSender:
    def __init__(self, store: JobStore, writer: Writer, client: WebhookClient, signer: Signer, clock: Clock,
                 settings: SenderSettings, *, tracer: Tracer | None = None, metrics: Metrics | None = None) -> None:
        self._store = store
        self._writer = writer
        self._client = client
        self._signer = signer
        self._clock = clock
        self._settings = settings
        self._tracer = tracer
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._lanes = Lanes(settings.concurrency, min(settings.per_destination, settings.concurrency))
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        released = await self._writer.write(ReleaseDeliveryLeases(self._clock.now()), fail_fast=True)
        if released:
            log.info("%d webhook deliveries taken before a restart are due again", released)
        await self._client.start()
        self._task = asyncio.create_task(self._run(), name="jobwire-webhooks")

    def kick(self) -> None:
        """New deliveries may be due (a commit wrote outbox rows)."""
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Stop taking deliveries; attempts in flight get `grace` seconds, then are cancelled and
        stay leased, so the next start sends them again."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._client.close()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._take()
                wait = await self._until_next_due()
            except StorageError:
                wait = ERROR_BACKOFF  # the writer reports storage faults, once per change
            except Exception:
                log.exception("webhook outbox unavailable; trying again")
                wait = ERROR_BACKOFF
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _take(self) -> None:
        room = self._lanes.room()
        if room > 0:
            now = self._clock.now()
            lease_until = now + self._settings.timeout + LEASE_MARGIN
            # A delivery that waited in its lane past its lease comes back here; it is held already.
            for delivery in await self._writer.write(TakeDeliveries(now, room, lease_until), fail_fast=True):
                self._lanes.hold(delivery)
        while (ready := self._lanes.next_ready()) is not None:
            task = asyncio.create_task(self._attempt(ready), name=f"jobwire-webhook-{ready.id}")
            self._inflight.add(task)
            task.add_done_callback(functools.partial(self._done, ready))

    def _done(self, delivery: Delivery, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._lanes.finished(delivery)
        self._wake.set()

    async def _until_next_due(self) -> float | None:
        if self._lanes.room() <= 0:
            return None  # a finishing attempt wakes us
        due = await self._store.next_delivery_due()
        return None if due is None else max(0.0, due - self._clock.now())

    async def _attempt(self, delivery: Delivery) -> None:
        now = self._clock.now()
        headers = self._signer.headers(delivery.id, delivery.body, now)
        with webhook_span(self._tracer, delivery.event_type, delivery.url, job_id=delivery.job_id,
                          queue=delivery.queue, kind=delivery.kind, attempt=delivery.attempts + 1,
                          trace_parent=delivery.trace_parent) as span:
            result = await self._client.post(delivery.url, delivery.body, {**headers, **span.headers()})
            if result.status:
                span.set_status_code(result.status)
            else:
                span.fail(result.error, "refused" if result.refused else "network")
        outcome = judge(delivery, result, now, self._settings.schedule)
        if self._metrics is not None:
            name = "refused" if result.refused else _METRIC_OUTCOME[outcome.verdict]
            self._metrics.webhook_attempt(name, result.latency)
        try:
            # The WEBHOOK_* event it may append is published by the writer with its commit.
            await self._writer.write(RecordDeliveryAttempt(outcome, self._clock.now(), _event_for(outcome)))
        except Exception:
            log.exception("recording webhook attempt %s of %s failed; it will be sent again", outcome.record.number,
                          delivery.id)
            return
        _log_outcome(outcome)


def judge(delivery: Delivery, result: HttpResult, now: float, schedule: Sequence[float]) -> AttemptOutcome:
    """The verdict of one attempt and, for a retry, when the next one is due: the schedule's delay
    with jitter, or longer when the receiver's Retry-After asks (at most a day)."""
    number = delivery.attempts + 1
    record = AttemptRecord(number, now, strip_query(delivery.url), result.status, result.latency,
                           result.response, result.error or _status_error(result.status))
    verdict = _verdict(result)
    if verdict is not Verdict.RETRY:
        return AttemptOutcome(delivery, record, verdict)
    if number > len(schedule):
        return AttemptOutcome(delivery, record, Verdict.FAILED)
    delay = schedule[number - 1] * (1 - JITTER + 2 * JITTER * random.random())
    if result.retry_after is not None:
        delay = max(delay, min(result.retry_after, RETRY_AFTER_CAP))
    return AttemptOutcome(delivery, record, verdict, next_at=now + result.latency + delay)


def _verdict(result: HttpResult) -> Verdict:
    if result.refused:
        return Verdict.FAILED
    status = result.status
    if status in {0, 429} or status >= 500:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    return Verdict.GONE if status == 410 else Verdict.FAILED


def _status_error(status: int) -> str:
    if 200 <= status < 300:
        return ""
    if 300 <= status < 400:
        return f"HTTP {status}: redirects are not followed"
    return f"HTTP {status}"


def _event_for(outcome: AttemptOutcome) -> PendingEvent | None:
    """The job event that ends a delivery (none while it is retried)."""
    record, delivery = outcome.record, outcome.delivery
    what = f"{delivery.event_type} webhook to {record.url}"
    if outcome.verdict is Verdict.DELIVERED:
        return PendingEvent(EventType.WEBHOOK_DELIVERED,
                            detail=f"{what} delivered: HTTP {record.status_code} on attempt {record.number}")
    if outcome.verdict is Verdict.GONE:
        return PendingEvent(EventType.WEBHOOK_FAILED,
                            detail=f"{what} answered 410 Gone: no more deliveries to it for this job")
    if outcome.verdict is Verdict.FAILED:
        return PendingEvent(EventType.WEBHOOK_FAILED,
                            detail=f"{what} failed after {record.number} attempt(s): {record.error}")
    return None


def _log_outcome(outcome: AttemptOutcome) -> None:
    r = outcome.record
    if outcome.verdict is Verdict.DELIVERED:
        log.debug("webhook %s delivered (HTTP %d, %.0f ms)", outcome.delivery.id, r.status_code, r.latency * 1000)
    elif outcome.verdict is Verdict.RETRY:
        log.info("webhook %s attempt %d failed (%s); retrying", outcome.delivery.id, r.number, r.error)
    else:
        log.warning("webhook %s to %s failed: %s", outcome.delivery.id, r.url, r.error)


def webhook_wanted(events: Sequence[Event]) -> bool:
    """Whether any committed event wrote an outbox row (its job's webhook wants that event type)."""
    return any(e.job is not None and e.job.webhook is not None and e.type in e.job.webhook.events for e in events)
