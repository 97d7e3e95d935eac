"""The schedule methods of :class:`jobwire.Client` (mixed into it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from jobwire import _convert
from jobwire.models import Schedule, ScheduleSpec, TriggerResult


class ScheduleCalls:
    """Create, read, change and fire schedules. Writes need the ``schedules:write`` scope, reads
    ``jobs:read``."""

    if TYPE_CHECKING:  # provided by Client

        def _service(self) -> Any: ...

        async def _unary(self, method: Any, request: Any) -> Any: ...

    async def create_schedule(self, schedule_id: str, spec: ScheduleSpec, *, paused: bool = False) -> Schedule:
        """Store a schedule; it fires from its first time after now (unless ``paused``).

        Raises :class:`~jobwire.AlreadyExists` (SCHEDULE_EXISTS) when the id is taken and
        :class:`~jobwire.InvalidArgument` naming each bad field (``spec.cron``, ``spec.time_zone``…).
        """
        request = _convert.create_schedule_request(schedule_id, spec, paused)
        return _convert.schedule_from_proto(await self._unary(self._service().CreateSchedule, request))

    async def get_schedule(self, schedule_id: str) -> Schedule:
        """The schedule with its next firing times; :class:`~jobwire.ScheduleNotFound` when there is none."""
        request = _convert.schedule_id_request("GetSchedule", schedule_id)
        return _convert.schedule_from_proto(await self._unary(self._service().GetSchedule, request))

    async def list_schedules_page(self, *, page_size: int = 0, page_token: str = "") -> tuple[list[Schedule], str]:
        """One page of schedules by id, and the token of the next page ("" on the last page)."""
        request = _convert.list_schedules_request(page_size, page_token)
        response = await self._unary(self._service().ListSchedules, request)
        return [_convert.schedule_from_proto(s) for s in response.schedules], str(response.next_page_token)

    async def list_schedules(self, *, page_size: int = 0) -> AsyncIterator[Schedule]:
        """Every schedule by id, fetching pages as iteration goes."""
        token = ""
        while True:
            schedules, token = await self.list_schedules_page(page_size=page_size, page_token=token)
            for schedule in schedules:
                yield schedule
            if not token:
                return

    async def update_schedule(self, schedule_id: str, spec: ScheduleSpec) -> Schedule:
        """Replace the schedule's spec (its paused state and last firing are kept)."""
        request = _convert.update_schedule_request(schedule_id, spec)
        return _convert.schedule_from_proto(await self._unary(self._service().UpdateSchedule, request))

    async def delete_schedule(self, schedule_id: str) -> None:
        """Delete the schedule; the jobs it enqueued are left alone."""
        await self._unary(self._service().DeleteSchedule, _convert.schedule_id_request("DeleteSchedule", schedule_id))

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        """Stop the schedule's firings until it is resumed."""
        request = _convert.schedule_id_request("PauseSchedule", schedule_id)
        return _convert.schedule_from_proto(await self._unary(self._service().PauseSchedule, request))

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        """Fire again from the first time after now (what fell while paused is not made up)."""
        request = _convert.schedule_id_request("ResumeSchedule", schedule_id)
        return _convert.schedule_from_proto(await self._unary(self._service().ResumeSchedule, request))

    async def trigger_schedule(self, schedule_id: str, *, request_id: str = "") -> TriggerResult:
        """Fire the schedule once now, paused or not: one job under its overlap policy. ``request_id`` is
        generated when not given, so the automatic retries of this call never fire it twice."""
        request = _convert.trigger_schedule_request(schedule_id, request_id)
        return _convert.trigger_from_proto(await self._unary(self._service().TriggerSchedule, request))
