"""Prometheus metrics, counted from the events the engine publishes, and the HTTP endpoint.

Counting costs O(1) per event and never queries the database: `Metrics.observe` is a tap on the
watch hub, so every committed change (enqueue, executor outcome, cancel, rescue) is seen once, by
the same path that feeds the watch streams. Only the queue depth and the age of the oldest QUEUED
job come from the store, with one query per scrape.
"""

from __future__ import annotations

import asyncio
import logging
import platform
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import GC_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from jobwire_server.domain.models import Event, QueueStats
from jobwire_server.domain.states import EventType, JobState
from jobwire_server.telemetry import jobwire_version

log = logging.getLogger("jobwire.metrics")

#: Outcomes `Metrics.webhook_attempt` accepts.
WEBHOOK_OUTCOMES = ("delivered", "retry", "failed", "refused")

#: Outcomes `Metrics.schedule_firing` accepts.
SCHEDULE_OUTCOMES = ("enqueued", "duplicate", "skipped", "missed")

#: Jobs run from milliseconds to hours; the buckets cover both ends.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0, 1800.0, 3600.0)
WEBHOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: RPC handling times; streams stay open for as long as their job runs, so the top buckets are long.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0)
RPC_LABELS = ["grpc_type", "grpc_service", "grpc_method"]

_FINAL_OUTCOMES = {EventType.SUCCEEDED: "succeeded", EventType.FAILED: "failed", EventType.CANCELLED: "cancelled"}
_PHASE_OUTCOMES = {EventType.PHASE_SUCCEEDED: "succeeded", EventType.PHASE_FAILED: "failed"}
#: A scrape that cannot read the queue stats in this time reports the rest without them.
STATS_TIMEOUT = 5.0

QueueStatsSource = Callable[[], Awaitable[Sequence[QueueStats]]]


class Metrics:
    """The service's metrics in their own registry (never the process-global one, so several apps
    can live in one test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._queue_stats: QueueStatsSource | None = None
        self._enqueued = Counter("jobwire_jobs_enqueued", "Jobs created by Enqueue or EnqueueBatch "
                                 "(deduplicated and repeated requests are not counted).",
                                 ["queue", "kind"], registry=self.registry)
        self._finished = Counter("jobwire_jobs_finished", "Jobs that reached a terminal state.",
                                 ["queue", "kind", "outcome"], registry=self.registry)
        self._job_seconds = Histogram("jobwire_job_duration_seconds", "Seconds from enqueue to the terminal "
                                      "state, waiting and retries included.", ["queue", "kind", "outcome"],
                                      buckets=DURATION_BUCKETS, registry=self.registry)
        self._phase_seconds = Histogram("jobwire_phase_duration_seconds", "Seconds one phase attempt ran, "
                                        "for attempts that succeeded or failed.",
                                        ["queue", "kind", "phase", "outcome"], buckets=DURATION_BUCKETS,
                                        registry=self.registry)
        self._webhooks = Counter("jobwire_webhook_attempts", "Webhook delivery attempts.", ["outcome"],
                                 registry=self.registry)
        self._webhook_seconds = Histogram("jobwire_webhook_attempt_duration_seconds",
                                          "Seconds one webhook delivery attempt took.", ["outcome"],
                                          buckets=WEBHOOK_BUCKETS, registry=self.registry)
        self._firings = Counter("jobwire_schedule_firings", "Schedule firings, by what each did.",
                                ["schedule", "outcome"], registry=self.registry)
        # Per-RPC metrics, named as go-grpc-prometheus and py-grpc-prometheus name them.
        self._rpc_started = Counter("grpc_server_started", "RPCs started on the server.", RPC_LABELS,
                                    registry=self.registry)
        self._rpc_handled = Counter("grpc_server_handled", "RPCs completed on the server, whatever their status.",
                                    [*RPC_LABELS, "grpc_code"], registry=self.registry)
        self._rpc_seconds = Histogram("grpc_server_handling_seconds", "Seconds from the start of an RPC to its "
                                      "end (for streams, the whole stream).", RPC_LABELS, buckets=RPC_BUCKETS,
                                      registry=self.registry)
        # The process_*, python_* and python_gc_* series of the default registry, in ours.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        if GC_COLLECTOR is not None:
            GCCollector(registry=self.registry)
        build = Gauge("jobwire_build_info", "Always 1; the labels name the running jobwire and Python.",
                      ["version", "python_version"], registry=self.registry)
        build.labels(jobwire_version(), platform.python_version()).set(1)
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)
        # labels() takes a lock and builds a key each call; children are cached per label set
        # because observe() runs for every committed event on the hot path.
        self._counters: dict[tuple[object, ...], Counter] = {}
        self._histograms: dict[tuple[object, ...], Histogram] = {}

    def bind(self, *, watch_streams: Callable[[], int], queue_stats: QueueStatsSource) -> None:
        """Where scrape-time values come from: the hub's stream count and the store's queue stats."""
        self._snapshot.watch_streams = watch_streams
        self._queue_stats = queue_stats

    # ------------------------------------------------------------------ counting

    def observe(self, events: Iterable[Event]) -> None:
        """Count committed events (the watch hub's tap)."""
        for event in events:
            kind = event.type
            if kind is EventType.ENQUEUED:
                self._count(self._enqueued, event.queue, event.kind)
            elif kind in _PHASE_OUTCOMES:
                self._observe_phase(event, _PHASE_OUTCOMES[kind])
            elif kind in _FINAL_OUTCOMES:
                outcome = _FINAL_OUTCOMES[kind]
                self._count(self._finished, event.queue, event.kind, outcome)
                if event.job is not None:
                    self._time(self._job_seconds, event.time - event.job.create_time, event.queue, event.kind,
                               outcome)

    def _observe_phase(self, event: Event, outcome: str) -> None:
        if event.job is None:
            return
        for phase in event.job.phases:
            if phase.name == event.phase:
                if phase.start_time is not None:
                    self._time(self._phase_seconds, event.time - phase.start_time, event.queue, event.kind,
                               event.phase, outcome)
                return

    def webhook_attempt(self, outcome: str, seconds: float) -> None:
        """Count one webhook delivery attempt and how long it took.

        `outcome` is one of `WEBHOOK_OUTCOMES`: ``delivered`` (2xx), ``retry`` (failed, will be tried
        again), ``failed`` (failed, no attempts left), ``refused`` (not sent, e.g. a URL the policy
        forbids). Raises ValueError for anything else, so a typo cannot create a new series.
        """
        if outcome not in WEBHOOK_OUTCOMES:
            raise ValueError(f"webhook outcome must be one of {', '.join(WEBHOOK_OUTCOMES)}, got {outcome!r}")
        self._count(self._webhooks, outcome)
        self._time(self._webhook_seconds, seconds, outcome)

    def schedule_firing(self, schedule_id: str, outcome: str) -> None:
        """Count one firing of a schedule (timed or TriggerSchedule).

        `outcome` is one of `SCHEDULE_OUTCOMES`: ``enqueued`` (a new job), ``duplicate`` (the
        firing's job existed already: the same firing made twice), ``skipped`` (overlap policy SKIP
        and the previous job still active), ``missed`` (firing times passed while the server was
        down, dropped by catch-up policy SKIP). Raises ValueError for anything else.
        """
        if outcome not in SCHEDULE_OUTCOMES:
            raise ValueError(f"schedule outcome must be one of {', '.join(SCHEDULE_OUTCOMES)}, got {outcome!r}")
        self._count(self._firings, schedule_id, outcome)

    def rpc_started(self, grpc_type: str, service: str, method: str) -> None:
        """An RPC began (``grpc_type`` is unary, server_stream, client_stream or bidi_stream)."""
        self._count(self._rpc_started, grpc_type, service, method)

    def rpc_handled(self, grpc_type: str, service: str, method: str, code: str, seconds: float) -> None:
        """An RPC ended with status `code` (a ``grpc.StatusCode`` name) after `seconds`."""
        self._count(self._rpc_handled, grpc_type, service, method, code)
        self._time(self._rpc_seconds, seconds, grpc_type, service, method)

    def _count(self, metric: Counter, *labels: str) -> None:
        key = (metric, *labels)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = metric.labels(*labels)
        child.inc()

    def _time(self, metric: Histogram, seconds: float, *labels: str) -> None:
        key = (metric, *labels)
        child = self._histograms.get(key)
        if child is None:
            child = self._histograms[key] = metric.labels(*labels)
        child.observe(max(0.0, seconds))

    # ------------------------------------------------------------------ exposition

    async def refresh(self) -> None:
        """Read queue depth and oldest-QUEUED age (one store query) for the next exposition."""
        if self._queue_stats is None:
            return
        try:
            async with asyncio.timeout(STATS_TIMEOUT):
                self._snapshot.stats = list(await self._queue_stats())
        except Exception:  # a scrape still reports the counters; the gauges keep their last values
            log.exception("reading queue stats for metrics failed")

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) for a scrape, in the format the Accept header asks for."""
        await self.refresh()
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _Snapshot(Collector):
    """Gauges read at scrape time: queue depth per state, oldest QUEUED age, watch streams."""

    def __init__(self) -> None:
        self.stats: list[QueueStats] = []
        self.watch_streams: Callable[[], int] = lambda: 0

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("jobwire_queue_jobs", "Jobs per queue and state (read at scrape time).",
                                  labels=["queue", "state"])
        oldest = GaugeMetricFamily("jobwire_queue_oldest_queued_age_seconds",
                                   "Seconds the oldest QUEUED job of the queue has been ready to run "
                                   "(0 when none is waiting).", labels=["queue"])
        for stats in self.stats:
            for state in JobState:
                depth.add_metric([stats.queue, state.name.lower()], float(stats.counts.get(state, 0)))
            oldest.add_metric([stats.queue], stats.oldest_queued_age)
        streams = GaugeMetricFamily("jobwire_watch_streams", "Open WatchJob and WatchEvents streams.",
                                    value=float(self.watch_streams()))
        return iter((depth, oldest, streams))


# ----------------------------------------------------------------------------- HTTP endpoint


@dataclass
class _Request:
    method: str
    path: str
    accept: str


MAX_HEADER_BYTES = 16 * 1024
READ_TIMEOUT = 10.0


class MetricsServer:
    """A minimal HTTP/1.1 endpoint on the event loop: ``GET /metrics`` (and ``HEAD``). It runs on
    the loop rather than in prometheus_client's threaded server so the one store query a scrape
    needs is an ordinary await, and start/stop follow the app's."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen; raises OSError when the address cannot be bound."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEADER_BYTES)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                request = await _read_request(reader)
            if request is None:
                await _respond(writer, 400, b"bad request\n")
            elif request.path.split("?", 1)[0] != "/metrics":
                await _respond(writer, 404, b"not found: try /metrics\n")
            elif request.method not in ("GET", "HEAD"):
                await _respond(writer, 405, b"method not allowed\n", allow="GET, HEAD")
            else:
                body, content_type = await self._metrics.render(request.accept)
                await _respond(writer, 200, body, content_type=content_type, head=request.method == "HEAD")
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the scraper went away or sent garbage: nothing to answer
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    head = await reader.readuntil(b"\r\n\r\n")  # LimitOverrunError past MAX_HEADER_BYTES
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    return _Request(parts[0], parts[1], accept)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, *,
                   content_type: str = "text/plain; charset=utf-8", head: bool = False, allow: str = "") -> None:
    headers = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Type: {content_type}",
               f"Content-Length: {len(body)}", "Connection: close"]
    if allow:
        headers.append(f"Allow: {allow}")
    writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if head else body))
    await writer.drain()
