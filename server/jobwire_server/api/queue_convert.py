"""Queue records → proto messages."""

from __future__ import annotations

from typing import Final

from jobwire.v1 import jobwire_pb2

from jobwire_server.api.convert import stats_to_proto, timestamp_to_proto
from jobwire_server.domain.queues import QueueSettings, WaitingReason
from jobwire_server.engine.queues import QueueView

WAITING_REASONS: Final = {
    WaitingReason.NONE: jobwire_pb2.WAITING_REASON_NONE,
    WaitingReason.QUEUE_PAUSED: jobwire_pb2.WAITING_REASON_QUEUE_PAUSED,
    WaitingReason.QUEUE_CONCURRENCY: jobwire_pb2.WAITING_REASON_QUEUE_CONCURRENCY,
    WaitingReason.CONCURRENCY_KEY: jobwire_pb2.WAITING_REASON_CONCURRENCY_KEY,
    WaitingReason.RATE_LIMIT: jobwire_pb2.WAITING_REASON_RATE_LIMIT,
}


def settings_to_proto(settings: QueueSettings | None) -> jobwire_pb2.QueueSettings:
    if settings is None:
        return jobwire_pb2.QueueSettings()
    return jobwire_pb2.QueueSettings(
        paused=settings.paused, concurrency_limit=settings.concurrency, rate_limit=settings.rate,
        rate_burst=settings.burst, key_limit=settings.key_limit, default_priority=settings.default_priority,
        default_max_attempts=settings.default_max_attempts)


def queue_stats_to_proto(stats: jobwire_pb2.QueueStats, settings: QueueSettings | None) -> jobwire_pb2.QueueStats:
    """GetQueueStats' entry with the queue's paused state and stored settings filled in."""
    if settings is not None:
        stats.paused = settings.paused
        stats.settings.CopyFrom(settings_to_proto(settings))
    return stats


def queue_to_proto(view: QueueView, process_limit: int, limits_global: bool) -> jobwire_pb2.Queue:
    message = jobwire_pb2.Queue(
        name=view.name, settings=settings_to_proto(view.settings),
        stats=queue_stats_to_proto(stats_to_proto(view.stats), view.settings),
        replica_concurrency_limit=process_limit, replica_limit_global=limits_global and process_limit > 0)
    if view.settings is not None:
        message.update_time.CopyFrom(timestamp_to_proto(view.settings.update_time))
    return message
