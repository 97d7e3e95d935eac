"""Wires the service together and runs its two-phase start and stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from jobwire.v1 import jobwire_pb2, jobwire_pb2_grpc, worker_pb2, worker_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from jobwire_server.api.auth import AuthConfigError, TokenAuthInterceptor, load_tokens, server_credentials
from jobwire_server.api.decoding import DecodeGuardInterceptor
from jobwire_server.api.gateway import Gateway, tls_context
from jobwire_server.api.ports import port_in_use
from jobwire_server.api.reflection import enable_reflection
from jobwire_server.api.rpc_metrics import RpcMetricsInterceptor
from jobwire_server.api.schedule_validation import declared_specs
from jobwire_server.api.servicer import JobServicer
from jobwire_server.api.tracing import TracingInterceptor
from jobwire_server.api.validation import Limits
from jobwire_server.api.workers import WorkerServicer
from jobwire_server.config import ServerConfig, is_postgres_url
from jobwire_server.domain.clock import Clock, SystemClock
from jobwire_server.domain.errors import InvalidArgument, ScheduleExists, StorageCorrupt, StorageError
from jobwire_server.domain.models import Event
from jobwire_server.domain.states import JobState
from jobwire_server.engine.dispatcher import Dispatcher
from jobwire_server.engine.execution import Execution
from jobwire_server.engine.executor import Executor
from jobwire_server.engine.hub import WatchHub
from jobwire_server.engine.leases import LeaseKeeper
from jobwire_server.engine.queues import QueueService
from jobwire_server.engine.remote.executor import RemoteExecutor
from jobwire_server.engine.remote.kinds import RemoteKinds
from jobwire_server.engine.replicas import Leadership, ReplicaLink
from jobwire_server.engine.retention import Retention, RetentionPolicy
from jobwire_server.engine.schedules import Scheduler, ScheduleService
from jobwire_server.engine.service import JobService
from jobwire_server.engine.webhooks.guard import AddressGuard
from jobwire_server.engine.webhooks.http import WebhookClient
from jobwire_server.engine.webhooks.sender import SenderSettings, WebhookSender, webhook_wanted
from jobwire_server.engine.webhooks.signing import Signer
from jobwire_server.engine.writer import Writer
from jobwire_server.handlers.registry import Registry, build_registry
from jobwire_server.metrics import Metrics, MetricsServer
from jobwire_server.store.postgres import PostgresJobStore
from jobwire_server.store.postgres.store import display_url
from jobwire_server.store.sqlite import SqliteJobStore
from jobwire_server.telemetry import Tracing, TracingConfigError

log = logging.getLogger("jobwire")

SERVICE_NAME = jobwire_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
WORKER_SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name
#: Seconds a remote worker has to start an assignment before it is requeued (attempt not spent).
ASSIGN_TIMEOUT = 5.0
#: The gRPC server's own grace after the drain: in-flight unary calls finish, streams end.
SERVER_STOP_GRACE = 1.0
#: Seconds webhook attempts in flight get at shutdown; the rest are sent after the next start.
WEBHOOK_STOP_GRACE = 2.0
#: Bytes of a webhook receiver's answer read before the rest is discarded.
WEBHOOK_READ_CAP = 64 * 1024


#: Allocations between young-generation collections. The hot path allocates many short-lived
#: records and few cycles; the default (700) collected so often it cost 12-15 % of the loop.
GC_YOUNG_THRESHOLD = 50_000


def _tune_gc() -> None:
    """Collect the young generation less often (process-wide: `jobwire serve` also freezes what
    start-up built, out of the collector's way)."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(GC_YOUNG_THRESHOLD, young), middle, old)


def pending_call_limit(config: ServerConfig) -> int:
    """Calls gRPC may hold before the server takes them: every watch stream allowed plus one
    connection's worth of unary calls (at least gRPC's own hard limit of 3,000)."""
    return max(3000, config.max_watch_streams + config.max_concurrent_streams)


def _always() -> bool:
    return True


def open_store(config: ServerConfig, *, replica: str = "") -> SqliteJobStore | PostgresJobStore:
    """The store `config.db` names: a PostgreSQL URL, or a SQLite file."""
    if is_postgres_url(config.db):
        return PostgresJobStore(config.db, pool_size=config.db_pool_size, replica=replica)
    return SqliteJobStore(config.db, synchronous=config.synchronous, integrity_check=config.integrity_check)


class StartupError(Exception):
    """The service cannot start (bad database, port in use…); the message is one line."""


class App:
    """One jobwire process. `start()` and `stop()` are idempotent.

    Tracing is set up from the ``OTEL_*`` environment unless `tracer_provider` is given (tests pass
    one with an in-memory exporter); a given provider is used as is and not shut down by `stop()`.
    Metrics are kept when ``metrics_listen`` is set (and served there), or when `metrics` is given.
    """

    def __init__(self, config: ServerConfig, *, clock: Clock | None = None, registry: Registry | None = None,
                 tracer_provider: TracerProvider | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.registry = registry or build_registry(config.handlers, builtins=config.builtin_kinds)
        self.owner = f"jobwire-{secrets.token_hex(6)}"
        try:
            self.tracing = (Tracing(tracer_provider, owned=False) if tracer_provider is not None
                            else Tracing.from_env(os.environ))
        except TracingConfigError as exc:
            raise StartupError(str(exc)) from None
        self.store = open_store(config, replica=self.owner)
        self.shared: PostgresJobStore | None = self.store if isinstance(self.store, PostgresJobStore) else None
        if metrics is None and config.metrics_listen:
            metrics = Metrics()
        self.metrics = metrics
        self.hub = WatchHub(config.watch_buffer, tap=metrics.observe if metrics is not None else None,
                            shared=self.shared is not None)
        if metrics is not None:
            metrics.bind(watch_streams=lambda: self.hub.subscriber_count,
                         queue_stats=lambda: self.store.queue_stats("", self.clock.now()))
        self.metrics_server: MetricsServer | None = None
        self.writer = Writer(self.store, self.hub, on_storage=self._storage_changed)
        self.store.on_corrupt = self._storage_changed
        self._health_task: asyncio.Task[None] | None = None
        self.executor = Executor(self.registry, self.writer, self.clock, concurrency=config.concurrency,
                                 queue_limits=dict(config.queue_concurrency), cancel_grace=config.cancel_grace,
                                 on_slot_free=self._slot_freed, tracer=self.tracing.tracer)
        self._wire_remote_workers(config)
        self.dispatcher = Dispatcher(
            self.writer, self.executor, self.clock, owner=self.owner, lease_ttl=config.lease_ttl,
            global_limits=dict(config.queue_concurrency) if config.queue_concurrency_global else None,
            remote=self.remote)
        self.leases = LeaseKeeper(self.store, self.writer, self.clock, owner=self.owner, lease_ttl=config.lease_ttl,
                                  running_ids=self.execution.running_ids, on_rescued=self.dispatcher.wake,
                                  on_cancel_requested=self.execution.request_cancel)
        self.service = JobService(self.store, self.hub, self.writer, self.execution, self.clock,
                                  request_ttl=config.request_id_ttl, bulk_batch=config.bulk_batch)
        self.webhook_guard = AddressGuard(config.webhook_allow)
        self.webhooks = WebhookSender(
            self.store, self.writer,
            WebhookClient(self.webhook_guard, timeout=config.webhook_timeout, read_cap=WEBHOOK_READ_CAP,
                          connections=config.webhook_concurrency, per_host=config.webhook_host_concurrency),
            Signer(config.webhook_secret), self.clock,
            SenderSettings(schedule=config.webhook_retry_schedule, timeout=config.webhook_timeout,
                           concurrency=config.webhook_concurrency, per_destination=config.webhook_host_concurrency),
            tracer=self.tracing.tracer, metrics=self.metrics)
        self.hub.add_listener(self._published)
        self.replicas: ReplicaLink | None = None
        self.retention_lease: Leadership | None = None
        self.schedule_lease: Leadership | None = None
        if self.shared is not None:
            self.replicas = ReplicaLink(self.shared, self.hub, wake_claims=self._work_elsewhere,
                                        wake_webhooks=self.webhooks.kick, cancel=self._cancel_requested_elsewhere)
            self.retention_lease = Leadership(self.shared, "retention", self.owner)
            self.schedule_lease = Leadership(self.shared, "schedules", self.owner)
        self.retention = Retention(self.store, self.writer, self.clock, RetentionPolicy(
            stale_after=config.stale_after, delete_after=config.delete_after,
            stale_after_state={JobState(k): v for k, v in config.stale_after_state.items()},
            delivery_log_keep=config.delivery_log_keep, interval=config.retention_interval,
            batch=config.retention_batch),
            may_run=self.retention_lease.is_held if self.retention_lease is not None else _always)
        self.scheduler = Scheduler(self.store, self.writer, self.clock, arm=self.dispatcher.note_wakeup,
                                   request_ttl=config.request_id_ttl, on_cancel=self.execution.request_cancel,
                                   may_run=self.schedule_lease.is_held if self.schedule_lease is not None else _always,
                                   on_firing=self.metrics.schedule_firing if self.metrics is not None else None)
        self.dispatcher.on_timer.append(self.scheduler.tick)
        self.queues, self.schedules = self._rpc_services(config)
        try:
            self.declared_schedules = declared_specs(config.schedules, self.registry)
        except InvalidArgument as exc:
            raise StartupError(f"config file schedules: {exc}") from None
        self._init_doors()
        self._state = "new"
        self._corrupt = False
        self._stopped = asyncio.Event()

    def _init_doors(self) -> None:
        """The gRPC server and the HTTP gateway, made at start."""
        self.health = health.aio.HealthServicer()
        self.server: aio.Server | None = None
        self.port = 0
        #: The HTTP gateway and console (`http_listen`), serving the gRPC server's servicer.
        self.gateway: Gateway | None = None
        self._api: tuple[JobServicer, TokenAuthInterceptor | None] | None = None  # set with the gRPC server

    def _wire_remote_workers(self, config: ServerConfig) -> None:
        """Remote kinds share the registry; their jobs run through the remote executor."""
        self.remote_kinds = RemoteKinds(self.registry, self.writer, self.store, self.clock)
        self.remote = RemoteExecutor(self.remote_kinds, self.writer, self.store, self.clock, owner=self.owner,
                                     lease_ttl=config.lease_ttl, cancel_grace=config.cancel_grace,
                                     assign_timeout=ASSIGN_TIMEOUT, max_result_bytes=config.max_payload_bytes,
                                     on_room=self._remote_room, tracer=self.tracing.tracer)
        self.execution = Execution(self.executor, self.remote)
        self.workers: WorkerServicer | None = None

    def _rpc_services(self, config: ServerConfig) -> tuple[QueueService, ScheduleService]:
        """The queue and schedule RPCs' services, on the store, writer and scheduler made above."""
        queues = QueueService(self.store, self.writer, self.clock, check_open=self.service.check_open,
                              process_limits=config.queue_concurrency, limits_global=config.queue_concurrency_global)
        schedules = ScheduleService(self.store, self.writer, self.scheduler, self.clock,
                                    request_ttl=config.request_id_ttl, check_open=self.service.check_open)
        return queues, schedules

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        if self._state != "new":
            return
        self._state = "starting"
        # Synchronous handlers run in threads: give every job slot one, not the default min(32, CPUs+4).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="jobwire-handler"))
        _tune_gc()
        await self.store.open()
        try:
            await self.remote_kinds.load()
            await self._start_metrics()
            await self._start_server()
            await self._start_gateway()
        except BaseException:
            if self.server is not None:
                await self.server.stop(None)
            await self._stop_metrics()
            await self.store.close()
            raise
        self.writer.start()
        self.leases.start()
        self.dispatcher.start()
        if self.replicas is not None and self.retention_lease is not None:
            await self.replicas.start()
            self.retention_lease.start()
        if self.schedule_lease is not None:
            self.schedule_lease.start()
        try:
            await self.webhooks.start()  # the first write: storage that cannot write fails the start
        except StorageError as exc:
            await self.stop()
            raise StartupError(str(exc)) from None
        await self._start_schedules()
        self.retention.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._state = "serving"
        log.info("jobwire serving on %s:%d (db %s, concurrency %d, kinds: %s)", self.config.host, self.port,
                 display_url(self.config.db), self.config.concurrency, ", ".join(sorted(k.name for k in self.registry)))

    async def _start_metrics(self) -> None:
        address = self.config.metrics_listen
        if not address or self.metrics is None:
            return
        host, _, port = address.rpartition(":")
        server = MetricsServer(self.metrics)
        try:
            await server.start(host.strip("[]"), int(port))
        except OSError as exc:
            raise StartupError(f"cannot listen on {address} for metrics: {exc.strerror or exc} "
                               "(is the port in use?)") from None
        self.metrics_server = server
        log.info("metrics on http://%s:%d/metrics", host, server.port)

    async def _stop_metrics(self) -> None:
        if self.metrics_server is not None:
            await self.metrics_server.stop()
            self.metrics_server = None

    async def _start_gateway(self) -> None:
        cfg = self.config
        if not cfg.http_listen or self._api is None:
            return
        servicer, auth = self._api
        try:
            tls = tls_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if cfg.tls_cert else None
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot load the TLS files for the HTTP gateway: {exc}") from None
        gateway = Gateway(servicer, auth=auth, metrics=self.metrics, heartbeat=cfg.http_heartbeat,
                          max_body=2 * cfg.max_message_bytes, tls=tls,  # JSON spells bytes in base64
                          tracer=self.tracing.tracer)
        host, _, port = cfg.http_listen.rpartition(":")
        try:
            await gateway.start(host.strip("[]"), int(port))
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.http_listen} for HTTP: {exc.strerror or exc} "
                               "(is the port in use? --http-listen off turns the gateway off)") from None
        self.gateway = gateway
        log.info("HTTP gateway and console on %s://%s:%d/", "https" if tls else "http", host, gateway.port)

    async def _start_server(self) -> None:
        cfg = self.config
        # Metrics and tracing before auth: a call that auth refuses is still counted and traced. Then
        # the decode guard, so undecodable bytes answer INVALID_ARGUMENT, but only to a caller that
        # auth lets through.
        interceptors: list[aio.ServerInterceptor] = []
        if self.metrics is not None:
            interceptors.append(RpcMetricsInterceptor(self.metrics))
        if self.tracing.tracer is not None:
            interceptors.append(TracingInterceptor(self.tracing.tracer))
        interceptors.append(DecodeGuardInterceptor())
        credentials: grpc.ServerCredentials | None = None
        auth: TokenAuthInterceptor | None = None
        try:
            if cfg.tokens_file:
                auth = TokenAuthInterceptor(load_tokens(cfg.tokens_file))
                interceptors.append(auth)
            if cfg.tls_cert:
                credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        except AuthConfigError as exc:
            raise StartupError(str(exc)) from None
        # gRPC keeps calls that arrived but that the server loop has not taken yet in a backlog; past
        # 1,000 of them (its default) it cancels new ones at random with RST_STREAM, which a client
        # sees as CANCELLED and does not retry. A burst of watch streams fills that backlog in an
        # instant, so it is sized to every stream the server would take; calls the server cannot
        # take then get a status a client retries (TOO_MANY_STREAMS, or UNAVAILABLE from HTTP/2).
        backlog = pending_call_limit(cfg)
        server = aio.server(interceptors=interceptors, options=[
            ("grpc.server.max_pending_requests", backlog),
            ("grpc.server.max_pending_requests_hard_limit", backlog),
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.max_concurrent_streams", cfg.max_concurrent_streams),
            ("grpc.keepalive_time_ms", int(cfg.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
        ])
        servicer = JobServicer(self.service, self.registry, self.clock,
                               Limits(max_payload_bytes=cfg.max_payload_bytes),
                               max_watch_streams=cfg.max_watch_streams, webhook_guard=self.webhook_guard,
                               retention=self.retention, schedules=self.schedules, auth=auth,
                               refresh_kinds=self.remote_kinds.load, queues=self.queues)
        jobwire_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)
        self._api = (servicer, auth)
        self.workers = WorkerServicer(self.remote, self.clock, auth=auth)
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(self.workers, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        enable_reflection((SERVICE_NAME, WORKER_SERVICE_NAME, health_name), server)
        # gRPC reports a certificate that does not match its key like a busy port: name both causes.
        hint = "is the port in use, and do tls_cert and tls_key match?" if credentials else "is the port in use?"
        busy = port_in_use(cfg.host, cfg.port)
        if busy:
            raise StartupError(f"cannot listen on {cfg.listen}: {busy} (is the port in use?)")
        try:
            if credentials is None:
                self.port = server.add_insecure_port(cfg.listen)
            else:
                self.port = server.add_secure_port(cfg.listen, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {cfg.listen}: {exc} ({hint})") from None
        if self.port == 0:
            raise StartupError(f"cannot listen on {cfg.listen} ({hint})")
        await server.start()
        self.server = server
        if cfg.tokens_file or credentials:
            log.info("access control: %s, %s", "bearer tokens" if cfg.tokens_file else "no tokens",
                     ("mutual TLS" if cfg.tls_client_ca else "TLS") if credentials else "plaintext")

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Health NOT_SERVING, stop claiming, drain, requeue the rest, stop gRPC, close the store."""
        if self._state in ("stopping", "stopped"):
            await self._stopped.wait()
            return
        if self._state == "new":
            self.tracing.shutdown()
            self._state = "stopped"
            self._stopped.set()
            return
        self._state = "stopping"
        try:
            await self.health.enter_graceful_shutdown()
            self.service.accepting = False
            self.writer.begin_shutdown()
            await self.dispatcher.stop_claiming()
            await self.scheduler.stop()
            cfg = self.config
            drain = max(0.0, cfg.shutdown_grace - min(cfg.cancel_grace, cfg.shutdown_grace / 2))
            if self.workers is not None:
                self.workers.accepting = False
            await asyncio.gather(self.executor.drain(drain), self.remote.drain(drain))
            self.hub.close_all()
            if self.server is not None:
                await self.server.stop(SERVER_STOP_GRACE)
            if self.gateway is not None:
                await self.gateway.stop()
            await self.leases.stop()
            await self.retention.stop()
            if self.schedule_lease is not None:
                await self.schedule_lease.stop()
            if self.replicas is not None and self.retention_lease is not None:
                await self.retention_lease.stop()
                await self.replicas.stop()
            # Every outbox row is committed by now (the drained runners waited for their commits);
            # what is not sent in time stays in the outbox. The writer records the attempts that end.
            await self.webhooks.stop(WEBHOOK_STOP_GRACE)
            await self.writer.stop()
        finally:
            if self.gateway is not None:
                await self.gateway.stop()
            await self._stop_metrics()
            await self.store.close()
            # Flushes spans still batched; after the store so no write waits behind an export.
            self.tracing.shutdown()
            self._state = "stopped"
            self._stopped.set()
            log.info("jobwire stopped")

    # ------------------------------------------------------------------ engine callbacks

    def _storage_changed(self, fault: StorageError | None) -> None:
        """Storage stopped (or started again) taking writes: Kubernetes should stop (or resume)
        routing here. A corrupt file stays NOT_SERVING until it is restored and the server restarted."""
        if self._state != "serving":
            return
        if fault is None and self._corrupt:
            return
        self._corrupt = self._corrupt or isinstance(fault, StorageCorrupt)
        status = health_pb2.HealthCheckResponse.SERVING if fault is None else health_pb2.HealthCheckResponse.NOT_SERVING
        previous = self._health_task
        self._health_task = asyncio.get_running_loop().create_task(self._set_health(status, previous))
        if fault is None:
            self.dispatcher.wake()

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType,
                          previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous  # in order: the last change wins
        if self._state == "serving":
            for name in ("", SERVICE_NAME):
                await self.health.set(name, status)

    def _cancel_requested_elsewhere(self, job_id: str) -> None:
        """Another replica recorded a cancel: stop the handler if it runs here (or on a worker of ours)."""
        if job_id in self.execution.running_ids():
            asyncio.get_running_loop().create_task(self._deliver_cancel(job_id))

    async def _deliver_cancel(self, job_id: str) -> None:
        try:
            job = await self.store.get_job(job_id)
        except Exception as exc:  # the next lease renewal delivers it
            log.debug("cancel of job %s not delivered yet: %s", job_id, exc)
            return
        if job.cancel_requested:
            self.execution.request_cancel(job_id, job.cancel_reason)

    async def _start_schedules(self) -> None:
        """Make the stored config schedules match the file, then fire from the dispatcher's timer."""
        try:
            synced = await self.schedules.sync(self.declared_schedules)
        except (ScheduleExists, StorageError) as exc:
            await self.stop()
            if isinstance(exc, ScheduleExists):
                raise StartupError(f"the config file declares schedule {exc.schedule_id!r}, which was created through "
                                   "the API: delete it (jobwire schedules delete) or give the declaration another "
                                   "id") from None
            raise StartupError(str(exc)) from None
        if synced.written or synced.deleted:
            log.info("config file schedules: %d created or changed, %d deleted", len(synced.written),
                     len(synced.deleted))
        self.scheduler.start()

    def _work_elsewhere(self) -> None:
        """Another replica made work ready or wrote schedules (or the slow look of our own)."""
        self.dispatcher.wake()
        self.scheduler.refresh()

    def _slot_freed(self) -> None:
        if self.service.accepting:
            self.dispatcher.wake()

    def _remote_room(self) -> None:
        if self.service.accepting:
            self.dispatcher.wake_remote()

    def _published(self, events: Sequence[Event]) -> None:
        if webhook_wanted(events):
            self.webhooks.kick()
