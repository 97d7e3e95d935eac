"""A synchronous facade over :class:`jobwire.Client`, for scripts and code without an event loop.

It runs the asynchronous client on a private event loop in a background thread; every method
blocks until the server answers. Watches return plain iterators. Example::

    with jobwire.sync.Client("127.0.0.1:50051") as client:
        handle = client.enqueue("noop", payload={"x": 1})
        for event in handle.watch():
            print(event.type)
        print(handle.result(timeout=30))
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Generator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from jobwire import client as _async
from jobwire.client import DEFAULT_TARGET, RetryPolicy, TLSConfig
from jobwire.models import (
    BulkResult,
    EnqueueSpec,
    EventType,
    Job,
    JobEvent,
    JobState,
    Payload,
    PruneResult,
    Queue,
    QueueStats,
    Schedule,
    ScheduleSpec,
    TriggerResult,
    WebhookDelivery,
)

__all__ = ["Client", "JobHandle"]

_T = TypeVar("_T")
_DONE = object()
_UNWIND_TIMEOUT = 5.0


class _LoopThread:
    """An event loop running forever in a daemon thread; ``run`` executes one coroutine on it."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="jobwire-sync", daemon=True)
        self._thread.start()
        self.closed = False

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the loop and wait for it; an interrupt (Ctrl-C) cancels it there too."""
        if self.closed:
            coro.close()
            raise RuntimeError("the jobwire sync client is closed")
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        tasks: list[asyncio.Task[_T]] = []

        def start() -> None:
            task = self._loop.create_task(coro)
            tasks.append(task)
            task.add_done_callback(lambda t: _settle(t, future))

        def cancel() -> None:
            # Runs on the loop after start() (callbacks run in order), so the task exists.
            tasks[0].cancel()

        self._loop.call_soon_threadsafe(start)
        try:
            return future.result()
        except BaseException:
            if not future.done():
                # Let the coroutine unwind (close its stream) before the caller goes on.
                self._loop.call_soon_threadsafe(cancel)
                with contextlib.suppress(concurrent.futures.CancelledError, TimeoutError):
                    future.exception(timeout=_UNWIND_TIMEOUT)
            raise

    def iterate(self, items: AsyncIterator[_T]) -> Generator[_T, None, None]:
        """A blocking iterator over an async iterator; closing it closes the async one."""
        try:
            while True:
                item = self.run(_next_or_done(items))
                if item is _DONE:
                    return
                yield cast(_T, item)
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None and not self.closed:
                # Cleanup must not replace the exception (often KeyboardInterrupt) that got us here.
                with contextlib.suppress(RuntimeError):
                    self.run(aclose())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _settle(task: asyncio.Task[_T], future: concurrent.futures.Future[_T]) -> None:
    if task.cancelled():
        future.cancel()
    elif (error := task.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(task.result())


async def _next_or_done(items: AsyncIterator[_T]) -> _T | object:
    try:
        return await anext(items)
    except StopAsyncIteration:
        return _DONE


class Client:
    """A blocking jobwire client; same arguments and method names as :class:`jobwire.Client`.

    Use it as a context manager or call :meth:`close`, which also stops its background thread.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: TLSConfig | None = None,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._runner = _LoopThread()
        self._client = _async.Client(
            target, token=token, tls=tls, timeout=timeout, retry=retry, channel_options=channel_options
        )
        self.target = target

    def __repr__(self) -> str:
        return f"jobwire.sync.Client(target={self.target!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the background event loop. Calling it twice is harmless."""
        if not self._runner.closed:
            self._runner.run(self._client.close())
            self._runner.close()

    def enqueue(
        self,
        kind: str,
        payload: Payload = None,
        *,
        queue: str = "",
        priority: int = 0,
        delay: timedelta | float | None = None,
        run_at: datetime | None = None,
        max_attempts: int = 0,
        timeout: timedelta | float | None = None,
        dedupe_key: str = "",
        request_id: str = "",
        labels: Mapping[str, str] | None = None,
        webhook_url: str = "",
        webhook_events: Iterable[EventType | str] = (),
        concurrency_key: str = "",
    ) -> JobHandle:
        """Create a job; see :meth:`jobwire.Client.enqueue`."""
        handle = self._runner.run(
            self._client.enqueue(
                kind,
                payload,
                queue=queue,
                priority=priority,
                delay=delay,
                run_at=run_at,
                max_attempts=max_attempts,
                timeout=timeout,
                dedupe_key=dedupe_key,
                request_id=request_id,
                labels=labels,
                webhook_url=webhook_url,
                webhook_events=tuple(webhook_events),
                concurrency_key=concurrency_key,
            )
        )
        return JobHandle(self._runner, handle)

    def enqueue_many(self, specs: Iterable[EnqueueSpec]) -> list[JobHandle]:
        """Create 1 to 1,000 jobs in one transaction; see :meth:`jobwire.Client.enqueue_many`."""
        handles = self._runner.run(self._client.enqueue_many(list(specs)))
        return [JobHandle(self._runner, h) for h in handles]

    def handle(self, job_id: str) -> JobHandle:
        """A handle for an existing job, without calling the server."""
        return JobHandle(self._runner, self._client.handle(job_id))

    def get_job(self, job_id: str) -> Job:
        """The job as it is now."""
        return self._runner.run(self._client.get_job(job_id))

    def list_jobs_page(
        self,
        *,
        queue: str = "",
        kind: str = "",
        states: Iterable[JobState | str] = (),
        labels: Mapping[str, str] | None = None,
        label_keys: Iterable[str] = (),
        label_in: Mapping[str, Iterable[str]] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        finished_after: datetime | None = None,
        finished_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[Job], str]:
        """One page of jobs and the next page's token; see :meth:`jobwire.Client.list_jobs_page`."""
        return self._runner.run(
            self._client.list_jobs_page(
                queue=queue,
                kind=kind,
                states=tuple(states),
                labels=labels,
                label_keys=tuple(label_keys),
                label_in=label_in,
                created_after=created_after,
                created_before=created_before,
                finished_after=finished_after,
                finished_before=finished_before,
                page_size=page_size,
                page_token=page_token,
            )
        )

    def list_jobs(
        self,
        *,
        queue: str = "",
        kind: str = "",
        states: Iterable[JobState | str] = (),
        labels: Mapping[str, str] | None = None,
        label_keys: Iterable[str] = (),
        label_in: Mapping[str, Iterable[str]] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        finished_after: datetime | None = None,
        finished_before: datetime | None = None,
        page_size: int = 0,
    ) -> Generator[Job, None, None]:
        """Every matching job, newest first, across pages."""
        return self._runner.iterate(
            self._client.list_jobs(
                queue=queue,
                kind=kind,
                states=tuple(states),
                labels=labels,
                label_keys=tuple(label_keys),
                label_in=label_in,
                created_after=created_after,
                created_before=created_before,
                finished_after=finished_after,
                finished_before=finished_before,
                page_size=page_size,
            )
        )

    def cancel_jobs(
        self,
        *,
        queue: str = "",
        kind: str = "",
        states: Iterable[JobState | str] = (),
        labels: Mapping[str, str] | None = None,
        label_keys: Iterable[str] = (),
        label_in: Mapping[str, Iterable[str]] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        finished_after: datetime | None = None,
        finished_before: datetime | None = None,
        all_jobs: bool = False,
        dry_run: bool = False,
        reason: str = "",
    ) -> BulkResult:
        """Cancel every matching job; see :meth:`jobwire.Client.cancel_jobs`."""
        return self._runner.run(
            self._client.cancel_jobs(
                queue=queue,
                kind=kind,
                states=tuple(states),
                labels=labels,
                label_keys=tuple(label_keys),
                label_in=label_in,
                created_after=created_after,
                created_before=created_before,
                finished_after=finished_after,
                finished_before=finished_before,
                all_jobs=all_jobs,
                dry_run=dry_run,
                reason=reason,
            )
        )

    def retry_jobs(
        self,
        *,
        queue: str = "",
        kind: str = "",
        states: Iterable[JobState | str] = (),
        labels: Mapping[str, str] | None = None,
        label_keys: Iterable[str] = (),
        label_in: Mapping[str, Iterable[str]] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        finished_after: datetime | None = None,
        finished_before: datetime | None = None,
        all_jobs: bool = False,
        dry_run: bool = False,
        from_start: bool = False,
    ) -> BulkResult:
        """Queue again every matching finished job; see :meth:`jobwire.Client.retry_jobs`."""
        return self._runner.run(
            self._client.retry_jobs(
                queue=queue,
                kind=kind,
                states=tuple(states),
                labels=labels,
                label_keys=tuple(label_keys),
                label_in=label_in,
                created_after=created_after,
                created_before=created_before,
                finished_after=finished_after,
                finished_before=finished_before,
                all_jobs=all_jobs,
                dry_run=dry_run,
                from_start=from_start,
            )
        )

    def watch_events(
        self, *, queues: Iterable[str] = (), kinds: Iterable[str] = (), types: Iterable[EventType | str] = ()
    ) -> Generator[JobEvent, None, None]:
        """Live events of matching jobs until the iterator is closed (or Ctrl-C)."""
        return self._runner.iterate(
            self._client.watch_events(queues=tuple(queues), kinds=tuple(kinds), types=tuple(types))
        )

    def queue_stats(self, queue: str = "") -> list[QueueStats]:
        """Job counts per state for one queue or every queue."""
        return self._runner.run(self._client.queue_stats(queue))

    def webhook_deliveries(self, job_id: str) -> list[WebhookDelivery]:
        """A job's webhook deliveries with their attempt log."""
        return self._runner.run(self._client.webhook_deliveries(job_id))

    def prune(self, dry_run: bool = False) -> PruneResult:
        """Run retention now, or with ``dry_run`` count what it would do."""
        return self._runner.run(self._client.prune(dry_run))

    # --- schedules (see jobwire.Client) -----------------------------------------------------------

    def create_schedule(self, schedule_id: str, spec: ScheduleSpec, *, paused: bool = False) -> Schedule:
        """Store a schedule; see :meth:`jobwire.Client.create_schedule`."""
        return self._runner.run(self._client.create_schedule(schedule_id, spec, paused=paused))

    def get_schedule(self, schedule_id: str) -> Schedule:
        """The schedule with its next firing times."""
        return self._runner.run(self._client.get_schedule(schedule_id))

    def list_schedules_page(self, *, page_size: int = 0, page_token: str = "") -> tuple[list[Schedule], str]:
        """One page of schedules by id and the next page's token."""
        return self._runner.run(self._client.list_schedules_page(page_size=page_size, page_token=page_token))

    def list_schedules(self, *, page_size: int = 0) -> Generator[Schedule, None, None]:
        """Every schedule by id, across pages."""
        return self._runner.iterate(self._client.list_schedules(page_size=page_size))

    def update_schedule(self, schedule_id: str, spec: ScheduleSpec) -> Schedule:
        """Replace the schedule's spec."""
        return self._runner.run(self._client.update_schedule(schedule_id, spec))

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete the schedule (its jobs are left alone)."""
        self._runner.run(self._client.delete_schedule(schedule_id))

    def pause_schedule(self, schedule_id: str) -> Schedule:
        return self._runner.run(self._client.pause_schedule(schedule_id))

    def resume_schedule(self, schedule_id: str) -> Schedule:
        return self._runner.run(self._client.resume_schedule(schedule_id))

    def trigger_schedule(self, schedule_id: str, *, request_id: str = "") -> TriggerResult:
        """Fire the schedule once now; see :meth:`jobwire.Client.trigger_schedule`."""
        return self._runner.run(self._client.trigger_schedule(schedule_id, request_id=request_id))

    # --- queues (see jobwire.Client) --------------------------------------------------------------

    def pause_queue(self, name: str) -> Queue:
        """Start nothing more from the queue until it is resumed."""
        return self._runner.run(self._client.pause_queue(name))

    def resume_queue(self, name: str) -> Queue:
        """Let a paused queue start jobs again."""
        return self._runner.run(self._client.resume_queue(name))

    def get_queue(self, name: str) -> Queue:
        """The queue's settings and counts."""
        return self._runner.run(self._client.get_queue(name))

    def list_queues_page(self, *, page_size: int = 0, page_token: str = "") -> tuple[list[Queue], str]:
        """One page of queues by name and the next page's token."""
        return self._runner.run(self._client.list_queues_page(page_size=page_size, page_token=page_token))

    def list_queues(self, *, page_size: int = 0) -> Generator[Queue, None, None]:
        """Every queue with settings or jobs, by name, across pages."""
        return self._runner.iterate(self._client.list_queues(page_size=page_size))

    def update_queue(self, name: str, *, concurrency_limit: int | None = None, rate_limit: float | None = None,
                     rate_burst: int | None = None, key_limit: int | None = None,
                     default_priority: int | None = None, default_max_attempts: int | None = None) -> Queue:
        """Change the settings given; see :meth:`jobwire.Client.update_queue`."""
        return self._runner.run(self._client.update_queue(
            name, concurrency_limit=concurrency_limit, rate_limit=rate_limit, rate_burst=rate_burst,
            key_limit=key_limit, default_priority=default_priority, default_max_attempts=default_max_attempts))


class JobHandle:
    """Blocking counterpart of :class:`jobwire.JobHandle`."""

    def __init__(self, runner: _LoopThread, handle: _async.JobHandle) -> None:
        self._runner = runner
        self._handle = handle

    def __repr__(self) -> str:
        return f"jobwire.sync.JobHandle(id={self.id!r}, deduplicated={self.deduplicated})"

    @property
    def id(self) -> str:
        return self._handle.id

    @property
    def job(self) -> Job | None:
        """The job as returned by the call that made this handle, if any."""
        return self._handle.job

    @property
    def deduplicated(self) -> bool:
        return self._handle.deduplicated

    def get(self) -> Job:
        return self._runner.run(self._handle.get())

    def cancel(self, reason: str = "") -> Job:
        return self._runner.run(self._handle.cancel(reason))

    def retry(self, from_start: bool = False) -> Job:
        return self._runner.run(self._handle.retry(from_start))

    def watch(self, after_sequence: int = 0) -> Generator[JobEvent, None, None]:
        """The job's events, resumed transparently after a dropped stream; ends when the job does."""
        return self._runner.iterate(self._handle.watch(after_sequence))

    def result(self, timeout: float | None = None) -> bytes:
        """Wait for the job and return its result; raises JobFailed / JobCancelled / TimeoutError."""
        return self._runner.run(self._handle.result(timeout))
