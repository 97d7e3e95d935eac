"""The remote executor: runs the phases of remote kinds on connected workers, with the in-process
executor's semantics.

The dispatcher claims jobs of remote kinds only up to the connected workers' credit (`claim_room`)
and hands each claimed job to `start`, which assigns it to a session that serves its kind and
queue. From there the server drives the phases: a worker's phase done goes through `decide()` and
the writer (PHASE_SUCCEEDED and the next PHASE_STARTED committed) before the ack names the next
phase; a cancel at a phase boundary, partial retry and the event stream behave as in-process.

Every write is fenced twice: by the attempt (the store's guard) and by the session (a report counts
only from the session the job is assigned to). A dropped stream leaves its jobs leased (they stop
being renewed) so the worker can reconnect and keep them; when it does not, the lease runs out and
the rescuer records INTERRUPTED. Reports resent after a reconnect are answered again from the job
as stored (or the final ack remembered), so they are idempotent on (job, attempt, phase).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from opentelemetry.trace import Tracer

from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import JobNotFound
from jobwire_server.domain.ids import is_job_id
from jobwire_server.domain.models import Job, JobError, evolve
from jobwire_server.domain.outcomes import Cancelled, Outcome, decide
from jobwire_server.domain.retry import RetryPolicy
from jobwire_server.domain.states import JobState
from jobwire_server.domain.transitions import JobChange, hand_back, interrupt_by_shutdown, report_progress
from jobwire_server.engine.remote.answers import ack_of, earlier_phase_ack, recorded_outcome
from jobwire_server.engine.remote.kinds import RemoteKinds
from jobwire_server.engine.remote.messages import (
    Ack,
    AckReason,
    AckStatus,
    Assign,
    CancelCommand,
    DrainCommand,
    Hello,
    PhaseDone,
    ProgressReport,
    Released,
    Report,
    Started,
    Welcome,
)
from jobwire_server.engine.remote.session import Run, Session
from jobwire_server.engine.remote.spans import RunSpans
from jobwire_server.engine.writer import Writer
from jobwire_server.store.base import JobStore, RemoteRoom, RenewLeases

log = logging.getLogger("jobwire.workers")

DEFAULT_POLICY = RetryPolicy()
#: Final acks remembered, so a report resent after a reconnect gets the same answer.
RECENT_ACKS = 10_000


class RemoteExecutor:
    def __init__(self, kinds: RemoteKinds, writer: Writer, store: JobStore, clock: Clock, *, owner: str,
                 lease_ttl: float, cancel_grace: float, assign_timeout: float, max_result_bytes: int,
                 on_room: Callable[[], None], tracer: Tracer | None = None) -> None:
        self.kinds = kinds
        self._spans = RunSpans(tracer)
        self._writer = writer
        self._store = store
        self._clock = clock
        self._owner = owner
        self.lease_ttl = lease_ttl
        #: Pings every this many seconds; a session silent for three is ended (its jobs stay leased).
        self.ping_interval = max(0.05, min(5.0, lease_ttl / 4))
        self._cancel_grace = cancel_grace
        self._assign_timeout = assign_timeout
        self.max_result_bytes = max_result_bytes
        self._on_room = on_room
        self._sessions: dict[str, Session] = {}
        self._runs: dict[str, Run] = {}
        #: Claimed jobs no session could take yet (a worker left between the claim and now).
        self._backlog: deque[Run] = deque()
        self._recent: OrderedDict[tuple[str, int], Ack] = OrderedDict()
        self.accepting = True
        #: Set whenever no job runs on a live session (the drain waits on it).
        self._quiet = asyncio.Event()
        self._quiet.set()

    # ------------------------------------------------------------------ what the dispatcher asks

    def claim_room(self, finishing: Collection[str] = ()) -> tuple[RemoteRoom, ...]:
        """Room on the connected workers, grouped by what they serve: a claim takes at most this.
        `finishing`: jobs the same transaction finishes; the final ack of each gives its slot back,
        so the commit that finishes a job can claim its successor, as in-process."""
        if not self.accepting or self._backlog:
            return ()  # assign what is claimed already first
        freed: dict[str, int] = {}
        for job_id in finishing:
            run = self._runs.get(job_id)
            if run is not None and run.answering and run.live and run.session is not None:
                freed[run.session.id] = freed.get(run.session.id, 0) + 1
        groups: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
        for session in self._sessions.values():
            room = session.credit + freed.get(session.id, 0)
            if room > 0 and not session.closed and not session.draining:
                key = (tuple(sorted(session.kinds)), tuple(sorted(session.queues)))
                groups[key] = groups.get(key, 0) + room
        return tuple(RemoteRoom(kinds, queues, room) for (kinds, queues), room in groups.items())

    def holds(self, job_id: str) -> bool:
        return job_id in self._runs

    def running_ids(self) -> list[str]:
        """Jobs whose leases this process renews: those on live sessions (or waiting for one).
        An orphaned job is not renewed: its lease runs out unless its worker comes back."""
        return [job_id for job_id, run in self._runs.items() if run.live or run.session is None]

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------------ sessions

    async def open_session(self, hello: Hello) -> Session:
        """Declare the hello's kinds (KindInProcess, KindMismatch), decide which held jobs the
        worker keeps, and open the session; its outbox starts with the welcome."""
        await self.kinds.declare(hello.kinds)
        now = self._clock.now()
        session = Session(secrets.token_hex(8), hello, now)
        keep, drop = await self._adopt(session, hello)
        self._sessions[session.id] = session
        session.send(Welcome(session.id, self.lease_ttl, self.ping_interval, keep, drop, self.max_result_bytes))
        # Dropped jobs still hold the worker's slots until it reports them (the answer gives each back).
        session.ghosts.update((h.job_id, h.attempt) for h in hello.held if h.job_id in drop)
        session.add_credit(hello.slots)
        for run in session.runs.values():
            if run.cancel_requested:
                self._send_cancel(run, run.job.cancel_reason)
        log.info("worker %r connected (session %s, %s, kinds %s, %d slots, %d jobs kept)", hello.worker_id,
                 session.id, hello.sdk, ", ".join(sorted(session.kinds)), hello.slots, len(keep))
        self._assign_backlog()
        self._on_room()
        return session

    async def _adopt(self, session: Session, hello: Hello) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Held jobs this server still holds for that attempt (orphaned, or on the same worker's
        older session) are kept: their leases are renewed, then checked against the store."""
        wanted = [h for h in hello.held if self._adoptable(h.job_id, h.attempt, hello.worker_id)]
        kept: list[str] = []
        if wanted:
            ids = [h.job_id for h in wanted]
            await self._writer.write(RenewLeases(self._owner, ids, self._clock.now() + self.lease_ttl))
            for held in wanted:
                run = self._runs.get(held.job_id)
                if run is None or not await self._still_running(held.job_id, held.attempt):
                    continue
                if run.session is not None:
                    run.session.runs.pop(held.job_id, None)
                run.session, run.started = session, True
                session.runs[held.job_id] = run
                kept.append(held.job_id)
        drop = tuple(h.job_id for h in hello.held if h.job_id not in kept)
        return tuple(kept), drop

    def _adoptable(self, job_id: str, attempt: int, worker_id: str) -> bool:
        run = self._runs.get(job_id)
        if run is None or run.job.attempt != attempt:
            return False
        return run.session is None or run.session.closed or run.session.worker_id == worker_id

    async def _still_running(self, job_id: str, attempt: int) -> bool:
        try:
            job = await self._store.get_job(job_id)
        except JobNotFound:
            return False
        return job.state is JobState.RUNNING and job.attempt == attempt

    def close_session(self, session: Session) -> None:
        """The stream ended: its jobs stay leased, unrenewed, until the worker comes back or the
        lease runs out (then the rescuer requeues them as INTERRUPTED)."""
        if self._sessions.pop(session.id, None) is None:
            return
        session.close()
        for run in session.runs.values():
            run.disarm()
            asyncio.get_running_loop().call_later(self.lease_ttl * 2, self._forget, run)
        if session.runs:
            log.warning("worker %r (session %s) left with %d jobs; they stay leased for %.1fs", session.worker_id,
                        session.id, len(session.runs), self.lease_ttl)
        else:
            log.info("worker %r (session %s) left", session.worker_id, session.id)
        self._update_quiet()

    def _forget(self, run: Run) -> None:
        """An orphan nobody came back for: the rescuer has requeued it by now."""
        if not run.live and self._runs.get(run.job.id) is run:
            del self._runs[run.job.id]
            self._spans.ended(run)

    def worker_draining(self, session: Session) -> None:
        """The worker is shutting down: nothing more is assigned to it."""
        if not session.draining:
            session.draining = True
            log.info("worker %r (session %s) is draining", session.worker_id, session.id)

    def credit(self, session: Session, slots: int) -> None:
        """Slots the worker says are free beyond those the server counts (rare: each final ack
        already gives its job's slot back)."""
        session.add_credit(slots)
        self._assign_backlog()
        if session.credit > 0:
            self._on_room()

    # ------------------------------------------------------------------ assignment

    def start(self, job: Job) -> None:
        """Run a job the dispatcher just claimed for a remote worker."""
        orphan = self._runs.get(job.id)
        if orphan is not None:  # an earlier attempt that was rescued while its worker was away
            self._spans.ended(orphan)
        run = Run(job, cancel_requested=job.cancel_requested)
        self._runs[job.id] = run
        self._spans.started(run)
        if run.cancel_requested:  # asked to stop before this claim: don't run it
            self._spawn(self._end_without_worker(run, Cancelled()))
        elif not self._assign(run):
            self._backlog.append(run)

    def _assign(self, run: Run) -> bool:
        candidates = [s for s in self._sessions.values() if s.may_assign() and s.serves(run.job)]
        if not candidates:
            return False
        session = max(candidates, key=lambda s: s.credit)
        session.credit -= 1
        run.session = session
        session.runs[run.job.id] = run
        self._quiet.clear()
        session.send(Assign(run.job, run.index))
        run.arm(self._assign_timeout, self._not_started)
        return True

    def _assign_backlog(self) -> None:
        for _ in range(len(self._backlog)):
            run = self._backlog.popleft()
            if self._runs.get(run.job.id) is not run:
                continue
            if not self._assign(run):
                self._backlog.append(run)

    def _not_started(self, run: Run) -> None:
        """No `started` within the hand-off time: take the job back without spending an attempt."""
        if run.started or self._runs.get(run.job.id) is not run:
            return
        log.warning("job %s: worker %r did not start it within %.1fs; requeued", run.job.id,
                    run.session.worker_id if run.session else "?", self._assign_timeout)
        if run.session is not None:
            run.session.send(CancelCommand(run.job.id, run.job.attempt, "assignment not started in time", 0.0))
        error = JobError("worker did not start the assignment in time", "NOT_STARTED", True, run.phase,
                         run.job.attempt, True, self._clock.now())
        self._spawn(self._finish_with(run, hand_back(run.job, error, self._clock.now())))

    # ------------------------------------------------------------------ reports

    async def report(self, session: Session, report: Report) -> None:
        """Handle one report; its ack (if any) goes to the session's outbox."""
        if not is_job_id(report.job_id):
            session.send(ack_of(report, AckStatus.REJECTED, AckReason.INVALID_REPORT, detail="job_id is not a job id"))
            return
        run = self._runs.get(report.job_id)
        if run is None or run.session is not session or run.job.attempt != report.attempt:
            if session.ghosts.get(report.job_id) == report.attempt and isinstance(report, PhaseDone | Released):
                self._close_ghost(session, report)
            else:
                session.send(await self._not_held(report, run))
            return
        async with run.lock:
            if self._runs.get(report.job_id) is not run:  # finished while this report waited
                session.send(await self._not_held(report, None))
            elif isinstance(report, Started):
                self._started(run, report)
            elif isinstance(report, ProgressReport):
                await self._progress(run, report)
            elif isinstance(report, PhaseDone):
                await self._phase_done(run, report)
            else:
                await self._released(run, report)

    def _close_ghost(self, session: Session, report: PhaseDone | Released) -> None:
        """The closing report of a job taken from this worker: fenced (or the answer it had before a
        reconnect), and the job's slot is free again."""
        del session.ghosts[report.job_id]
        fenced = ack_of(report, AckStatus.FENCED, AckReason.NOT_HELD, detail="the attempt was taken back")
        session.send(self._recent.get((report.job_id, report.attempt)) or fenced)
        self._give_slot(session)

    async def _not_held(self, report: Report, run: Run | None) -> Ack:
        """The answer to a report about an attempt this session does not hold: the same final ack
        again when it was answered before, FENCED when the job exists, else UNKNOWN_JOB."""
        remembered = self._recent.get((report.job_id, report.attempt))
        if remembered is not None:
            return remembered
        if run is not None:
            reason = AckReason.WRONG_ATTEMPT if run.job.attempt != report.attempt else AckReason.NOT_HELD
            return ack_of(report, AckStatus.FENCED, reason)
        try:
            job = await self._store.get_job(report.job_id)
        except JobNotFound:
            return ack_of(report, AckStatus.REJECTED, AckReason.UNKNOWN_JOB, detail="no such job")
        reason = AckReason.WRONG_ATTEMPT if job.attempt != report.attempt else AckReason.NOT_HELD
        return ack_of(report, AckStatus.FENCED, reason, detail=f"the job is {job.state.value} at attempt {job.attempt}")

    def _started(self, run: Run, report: Started) -> None:
        if report.phase != run.phase:
            assert run.session is not None  # the report came from it
            run.session.send(ack_of(report, AckStatus.REJECTED, AckReason.WRONG_PHASE,
                                    detail=f"the assignment's phase is {run.phase!r}"))
            return
        self._mark_started(run)

    def _mark_started(self, run: Run) -> None:
        """The hand-off is acknowledged: by `started`, or by a first progress or phase done (a phase
        that ends quickly need not send `started` at all)."""
        if run.started:
            return
        run.started = True
        if run.cancel_requested:
            return  # the armed timer is the cancel's grace: a late `started` must not stop it
        run.disarm()
        self._arm_phase_timeout(run)

    async def _progress(self, run: Run, report: ProgressReport) -> None:
        session = run.session
        assert session is not None
        if report.phase != run.phase or not 0 <= report.percent <= 100:
            session.send(ack_of(report, AckStatus.REJECTED, AckReason.WRONG_PHASE if report.phase != run.phase
                              else AckReason.INVALID_REPORT, detail="percent must be within 0-100"))
            return
        self._mark_started(run)
        change = report_progress(run.job, run.index, report.percent, report.message[:1024], self._clock.now())
        if not await self._commit(run, change):
            self._drop(run, ack_of(report, AckStatus.FENCED, AckReason.NOT_HELD, detail="the job changed"),
                       answered=False)

    async def _phase_done(self, run: Run, report: PhaseDone) -> None:
        session = run.session
        assert session is not None
        if report.phase != run.phase:
            session.send(earlier_phase_ack(run, report))
            return
        if report.size > self.max_result_bytes:
            session.send(ack_of(report, AckStatus.REJECTED, AckReason.RESULT_TOO_LARGE,
                              detail=f"results are limited to {self.max_result_bytes} bytes, got {report.size}"))
            return
        run.started = True
        run.disarm()
        run.answering = True  # a commit that finishes the job here gives its slot back with the ack
        outcome = recorded_outcome(run, report.outcome)
        index = run.index
        if not await self._commit(run, self._change(run, index, outcome)):
            self._drop(run, ack_of(report, AckStatus.FENCED, AckReason.NOT_HELD, detail="the job changed"))
            return
        self._spans.phase_ended(run, outcome)
        if run.job.state is JobState.RUNNING and (run.cancel_requested or run.shutdown):
            # A cancel (or shutdown) arrived while the phase boundary was being written.
            stop: Outcome | None = Cancelled() if run.cancel_requested else None
            if not await self._commit(run, self._change(run, run.index, stop)):
                self._drop(run, ack_of(report, AckStatus.FENCED, AckReason.NOT_HELD, detail="the job changed"))
                return
        if run.job.state is JobState.RUNNING:
            run.answering = False
            self._arm_phase_timeout(run)
            session.send(ack_of(report, AckStatus.OK, next_phase=run.phase))
            return
        status = AckStatus.CANCELLED if run.job.state is JobState.CANCELLED else AckStatus.OK
        self._drop(run, ack_of(report, status))

    async def _released(self, run: Run, report: Released) -> None:
        run.answering = True
        now = self._clock.now()
        if run.cancel_requested:
            change = self._change(run, run.index, Cancelled())
        else:
            error = JobError(f"released by the worker: {report.reason[:200]}", "RELEASED", True, run.phase,
                             run.job.attempt, True, now)
            change = hand_back(run.job, error, now)
        committed = await self._commit(run, change)
        self._drop(run, ack_of(report, AckStatus.OK if committed else AckStatus.FENCED))

    def _change(self, run: Run, index: int, outcome: Outcome | None) -> JobChange:
        now = self._clock.now()
        job = run.job
        if outcome is None:
            phase = job.phases[index].name if index < len(job.phases) else ""
            error = JobError("interrupted by server shutdown", "SHUTDOWN", True, phase, job.attempt, True, now)
            return interrupt_by_shutdown(job, error, now)
        kind = self.kinds.get(job.kind)
        return decide(job, index, outcome, now, kind.retry if kind is not None else DEFAULT_POLICY)

    async def _commit(self, run: Run, change: JobChange) -> bool:
        committed = await self._writer.submit(change)
        if committed is None:
            return False
        run.job = committed.job if not run.cancel_requested else evolve(
            committed.job, cancel_requested=True, cancel_reason=run.job.cancel_reason)
        return True

    def _drop(self, run: Run, ack: Ack | None, *, answered: bool = True) -> None:
        """The attempt is over for this worker. `answered`: `ack` answers the worker's closing report
        (phase done or released), so it is final and gives the job's slot back. Otherwise the job was
        taken from the worker (abandoned, not started in time, changed under it): the worker keeps
        the slot until its handler returns and it reports, and that report's answer gives it back."""
        run.disarm()
        self._spans.ended(run)
        if self._runs.get(run.job.id) is run:
            del self._runs[run.job.id]
        session = run.session
        if session is not None:
            session.runs.pop(run.job.id, None)
            if ack is not None:
                session.send(ack)
            if answered:
                self._give_slot(session)
            else:
                session.ghosts[run.job.id] = run.job.attempt
        if answered and ack is not None:
            self._recent[(ack.job_id, ack.attempt)] = ack
            while len(self._recent) > RECENT_ACKS:
                self._recent.popitem(last=False)
        self._update_quiet()

    def _give_slot(self, session: Session) -> None:
        if session.closed:
            return
        session.add_credit(1)
        self._assign_backlog()
        if session.credit > 0:
            self._on_room()

    async def _finish_with(self, run: Run, change: JobChange) -> None:
        """Write `change` for a job its worker is not (or no longer) running; the worker's later
        reports about it are fenced."""
        async with run.lock:
            if self._runs.get(run.job.id) is not run:
                return
            run.answering = False
            await self._commit(run, change)
            self._drop(run, None, answered=False)

    async def _end_without_worker(self, run: Run, outcome: Outcome | None) -> None:
        await self._finish_with(run, self._change(run, run.index, outcome))

    # ------------------------------------------------------------------ cancel, timeout, drain

    def request_cancel(self, job_id: str, reason: str) -> bool:
        """Deliver a cancel request (already recorded in the store) to the job's worker at once."""
        run = self._runs.get(job_id)
        if run is None:
            return False
        if run.cancel_requested:
            return True
        run.cancel_requested = True
        run.job = evolve(run.job, cancel_requested=True, cancel_reason=reason)
        if run.session is None:  # waiting for credit: nothing runs it
            self._spawn(self._end_without_worker(run, Cancelled()))
        elif run.live:
            self._send_cancel(run, reason)
        # An orphan keeps the request: the worker gets it if it comes back, the rescuer honours it.
        return True

    def _send_cancel(self, run: Run, reason: str) -> None:
        assert run.session is not None
        run.session.send(CancelCommand(run.job.id, run.job.attempt, reason, self._cancel_grace))
        run.arm(self._cancel_grace, self._abandon)

    def _arm_phase_timeout(self, run: Run) -> None:
        if run.job.timeout > 0:
            run.arm(run.job.timeout, self._phase_timed_out)

    def _phase_timed_out(self, run: Run) -> None:
        if self._runs.get(run.job.id) is not run or not run.live:
            return
        run.timed_out = True
        self._send_cancel(run, f"phase {run.phase!r} exceeded its timeout of {run.job.timeout:g}s")

    def _abandon(self, run: Run) -> None:
        """The worker did not stop within the grace period: finish without it; its late reports are fenced."""
        if self._runs.get(run.job.id) is not run:
            return
        log.warning("job %s: worker %r did not stop phase %s within %.1fs; abandoned", run.job.id,
                    run.session.worker_id if run.session else "?", run.phase, self._cancel_grace)
        self._spawn(self._end_without_worker(run, recorded_outcome(run, Cancelled())))

    async def drain(self, budget: float) -> None:
        """Shutdown: assign nothing more, let running jobs finish for `budget` seconds, then stop the
        rest (reason shutdown) and requeue them without spending their attempt."""
        self.accepting = False
        for session in self._sessions.values():
            session.draining = True
            session.send(DrainCommand(budget))
        for run in list(self._backlog):
            self._spawn(self._end_without_worker(run, None))
        self._backlog.clear()
        if not self._quiet.is_set():
            await asyncio.wait({asyncio.ensure_future(self._quiet.wait())}, timeout=budget)
        rest = [run for run in self._runs.values() if run.live]
        for run in rest:
            run.shutdown = True
            self._send_cancel(run, "shutdown")
        if rest:
            await asyncio.wait({asyncio.ensure_future(self._quiet.wait())}, timeout=self._cancel_grace + 1.0)

    def _update_quiet(self) -> None:
        if not any(run.live for run in self._runs.values()):
            self._quiet.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        _background.add(task)
        task.add_done_callback(_done)


_background: set[asyncio.Future[None]] = set()


def _done(task: asyncio.Future[None]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("a remote job's write failed; its lease will expire and it will be retried",
                  exc_info=task.exception())
