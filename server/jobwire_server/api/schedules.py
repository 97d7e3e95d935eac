"""The schedule RPCs of `JobServicer`: validate, call the schedule service, convert."""

from __future__ import annotations

from typing import Any

from jobwire.v1 import jobwire_pb2

from jobwire_server.api.convert import job_to_proto
from jobwire_server.api.errors import unary
from jobwire_server.api.schedule_convert import schedule_to_proto
from jobwire_server.api.schedule_validation import (
    PAGE_TOKEN_KIND,
    page_from_proto,
    schedule_id_problem,
    spec_from_proto,
    validate_request_id,
    validate_schedule_id,
)
from jobwire_server.api.validation import Limits, encode_page_token
from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import FieldViolation, InvalidArgument, ShuttingDown
from jobwire_server.domain.schedules import ScheduleSpec
from jobwire_server.engine.schedules import ScheduleService
from jobwire_server.engine.webhooks.guard import AddressGuard, AddressRefused
from jobwire_server.handlers.registry import Registry

Context = Any


class ScheduleMethods:
    """Mixed into `JobServicer`, which sets these attributes."""

    _schedules: ScheduleService | None
    _registry: Registry
    _clock: Clock
    _limits: Limits
    _secret: bytes
    _guard: AddressGuard

    @unary
    async def CreateSchedule(self, request: jobwire_pb2.CreateScheduleRequest,
                             context: Context) -> jobwire_pb2.Schedule:
        problem = schedule_id_problem(request.id)
        spec = await self._spec(request, [] if problem is None else [FieldViolation("id", problem)])
        return schedule_to_proto(await self._schedule_service().create(request.id, spec, paused=request.paused))

    @unary
    async def GetSchedule(self, request: jobwire_pb2.GetScheduleRequest, context: Context) -> jobwire_pb2.Schedule:
        return schedule_to_proto(await self._schedule_service().get(validate_schedule_id(request.id)))

    @unary
    async def ListSchedules(self, request: jobwire_pb2.ListSchedulesRequest,
                            context: Context) -> jobwire_pb2.ListSchedulesResponse:
        after, size = page_from_proto(request, self._secret)
        found, last = await self._schedule_service().list(after, size)
        token = encode_page_token(last, PAGE_TOKEN_KIND, self._secret) if last else ""
        return jobwire_pb2.ListSchedulesResponse(schedules=[schedule_to_proto(s) for s in found],
                                                 next_page_token=token)

    @unary
    async def UpdateSchedule(self, request: jobwire_pb2.UpdateScheduleRequest,
                             context: Context) -> jobwire_pb2.Schedule:
        problem = schedule_id_problem(request.id)
        spec = await self._spec(request, [] if problem is None else [FieldViolation("id", problem)])
        return schedule_to_proto(await self._schedule_service().update(request.id, spec))

    @unary
    async def DeleteSchedule(self, request: jobwire_pb2.DeleteScheduleRequest,
                             context: Context) -> jobwire_pb2.DeleteScheduleResponse:
        await self._schedule_service().delete(validate_schedule_id(request.id))
        return jobwire_pb2.DeleteScheduleResponse()

    @unary
    async def PauseSchedule(self, request: jobwire_pb2.PauseScheduleRequest, context: Context) -> jobwire_pb2.Schedule:
        return schedule_to_proto(await self._schedule_service().pause(validate_schedule_id(request.id)))

    @unary
    async def ResumeSchedule(self, request: jobwire_pb2.ResumeScheduleRequest,
                             context: Context) -> jobwire_pb2.Schedule:
        return schedule_to_proto(await self._schedule_service().resume(validate_schedule_id(request.id)))

    @unary
    async def TriggerSchedule(self, request: jobwire_pb2.TriggerScheduleRequest,
                              context: Context) -> jobwire_pb2.TriggerScheduleResponse:
        schedule_id = validate_schedule_id(request.id)
        fired = await self._schedule_service().trigger(schedule_id, validate_request_id(request.request_id))
        job = fired.inserted.job if fired.inserted is not None else fired.previous
        response = jobwire_pb2.TriggerScheduleResponse(skipped=fired.skipped)
        if job is not None:
            response.job.CopyFrom(job_to_proto(job))
        return response

    # ------------------------------------------------------------------ helpers

    def _schedule_service(self) -> ScheduleService:
        if self._schedules is None:
            raise ShuttingDown
        return self._schedules

    async def _spec(self, request: jobwire_pb2.CreateScheduleRequest | jobwire_pb2.UpdateScheduleRequest,
                    violations: list[FieldViolation]) -> ScheduleSpec:
        if not request.HasField("spec"):
            raise InvalidArgument([*violations, FieldViolation("spec", "required")])
        spec = spec_from_proto(request.spec, self._registry, self._clock.now(), limits=self._limits, extra=violations)
        webhook = spec.template.webhook
        if webhook is not None:  # the SSRF guard, as at enqueue
            try:
                await self._guard.target(webhook.url)
            except AddressRefused as exc:
                raise InvalidArgument([FieldViolation("spec.template.webhook.url", str(exc))]) from None
        return spec
