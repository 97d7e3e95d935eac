"""The HTTP routes of `jobwire.v1.JobService`, in one table, in the style of ``google.api.http``.

Each unary RPC has one `Route`: an HTTP method and a path template whose ``{field}`` parts fill
fields of the request message. ``body="*"`` means the rest of the request comes as a JSON object in
the body; otherwise it comes from the query string. Each server-streaming RPC has one `StreamRoute`
served as Server-Sent Events. A test checks that every RPC of the service is in one of the two
tables, so adding an RPC to the proto means adding one line here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from google.protobuf.descriptor import MethodDescriptor
from jobwire.v1 import jobwire_pb2

SERVICE: Final = jobwire_pb2.DESCRIPTOR.services_by_name["JobService"]
_FIELD = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Route:
    """One unary RPC over HTTP."""

    rpc: str
    method: str
    path: str
    body: str = ""

    @property
    def path_fields(self) -> tuple[str, ...]:
        return tuple(_FIELD.findall(self.path))

    @property
    def descriptor(self) -> MethodDescriptor:
        return SERVICE.methods_by_name[self.rpc]

    @property
    def full_method(self) -> str:
        """The gRPC method name, as access control and metrics name it."""
        return f"/{SERVICE.full_name}/{self.rpc}"


@dataclass(frozen=True)
class StreamRoute(Route):
    """One server-streaming RPC as Server-Sent Events; `aliases` are extra query names
    (``?queue=a`` for ``queues``) and `resume` the field the ``Last-Event-ID`` header fills."""

    aliases: dict[str, str] = field(default_factory=dict)
    resume: str = ""


ROUTES: Final[tuple[Route, ...]] = (
    Route("Enqueue", "POST", "/v1/jobs", body="*"),
    Route("EnqueueBatch", "POST", "/v1/jobs:batchEnqueue", body="*"),
    Route("GetJob", "GET", "/v1/jobs/{id}"),
    Route("ListJobs", "GET", "/v1/jobs"),
    Route("CancelJob", "POST", "/v1/jobs/{id}:cancel", body="*"),
    Route("RetryJob", "POST", "/v1/jobs/{id}:retry", body="*"),
    Route("CancelJobs", "POST", "/v1/jobs:cancel", body="*"),
    Route("RetryJobs", "POST", "/v1/jobs:retry", body="*"),
    Route("GetQueueStats", "GET", "/v1/queues/stats"),
    Route("ListWebhookDeliveries", "GET", "/v1/jobs/{job_id}/webhookDeliveries"),
    Route("PruneJobs", "POST", "/v1/jobs:prune", body="*"),
    Route("CreateSchedule", "POST", "/v1/schedules", body="*"),
    Route("GetSchedule", "GET", "/v1/schedules/{id}"),
    Route("ListSchedules", "GET", "/v1/schedules"),
    Route("UpdateSchedule", "PATCH", "/v1/schedules/{id}", body="*"),
    Route("DeleteSchedule", "DELETE", "/v1/schedules/{id}"),
    Route("PauseSchedule", "POST", "/v1/schedules/{id}:pause", body="*"),
    Route("ResumeSchedule", "POST", "/v1/schedules/{id}:resume", body="*"),
    Route("TriggerSchedule", "POST", "/v1/schedules/{id}:trigger", body="*"),
    Route("GetQueue", "GET", "/v1/queues/{name}"),
    Route("ListQueues", "GET", "/v1/queues"),
    Route("UpdateQueue", "PATCH", "/v1/queues/{name}", body="*"),
    Route("PauseQueue", "POST", "/v1/queues/{name}:pause", body="*"),
    Route("ResumeQueue", "POST", "/v1/queues/{name}:resume", body="*"),
)

STREAM_ROUTES: Final[tuple[StreamRoute, ...]] = (
    StreamRoute("WatchJob", "GET", "/v1/jobs/{id}/events", resume="after_sequence"),
    StreamRoute("WatchEvents", "GET", "/v1/events", aliases={"queue": "queues", "kind": "kinds", "type": "types"}),
)


def aiohttp_path(template: str) -> str:
    """The aiohttp form of a path template: a field matches one segment, up to a ``:verb``."""
    return _FIELD.sub(lambda m: "{" + m.group(1) + ":[^/:]+}", template)
