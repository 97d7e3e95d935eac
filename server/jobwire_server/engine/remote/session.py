"""One worker session and the jobs it runs. A session is what one `Connect` stream is: its
declared kinds and queues, its credit (slots the server may still fill) and an outbox of commands
the stream sends in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry.trace import Span

from jobwire_server.domain.models import Job
from jobwire_server.engine.remote.messages import Command, Hello


class Session:
    def __init__(self, session_id: str, hello: Hello, now: float) -> None:
        self.id = session_id
        self.worker_id = hello.worker_id
        self.kinds = frozenset(k.name for k in hello.kinds)
        self.queues = frozenset(hello.queues)
        self.slots = hello.slots
        #: Jobs the server may still assign: spent by each assignment, given back by each final ack.
        self.credit = 0
        self.runs: dict[str, Run] = {}
        #: Jobs taken from this worker (abandoned, not started in time, dropped at the welcome) whose
        #: handlers may still run there → their attempt: a slot each, until the worker reports them.
        self.ghosts: dict[str, int] = {}
        #: Commands to send, in order; None ends the stream's sender.
        self.outbox: asyncio.Queue[Command | None] = asyncio.Queue()
        #: When the session was last heard from (any message): the watchdog ends a silent one.
        self.last_heard = now
        self.closed = False
        self.draining = False

    def serves(self, job: Job) -> bool:
        return job.kind in self.kinds and (not self.queues or job.queue in self.queues)

    def may_assign(self) -> bool:
        return not self.closed and not self.draining and self.credit > 0

    def send(self, command: Command) -> None:
        if not self.closed:
            self.outbox.put_nowait(command)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)

    def add_credit(self, slots: int) -> None:
        """More room, never beyond the slots the hello declared (a worker that over-counts cannot
        be handed more than it said it can run)."""
        self.credit = max(0, min(self.credit + slots, self.slots - len(self.runs) - len(self.ghosts)))

    def __repr__(self) -> str:
        return f"Session({self.id}, worker {self.worker_id!r}, {len(self.runs)} running, credit {self.credit})"


@dataclass(eq=False)
class Run:
    """A job this process holds for a remote worker: claimed, assigned (or waiting for credit),
    running, or orphaned by a dropped stream until its lease runs out or the worker comes back."""

    job: Job
    session: Session | None = None
    started: bool = False
    cancel_requested: bool = False
    timed_out: bool = False
    shutdown: bool = False
    #: A report of the worker is being committed: if it finishes the job, its ack gives the slot back.
    answering: bool = False
    #: The one pending deadline: the hand-off (no `started` yet), the phase timeout, or a cancel's grace.
    timer: asyncio.TimerHandle | None = None
    #: Reports about one job are handled in order; reports about different jobs commit together.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The attempt's job span and its running phase's span (when tracing is on).
    span: Span | None = None
    phase_span: Span | None = None

    @property
    def live(self) -> bool:
        return self.session is not None and not self.session.closed

    @property
    def index(self) -> int:
        return self.job.next_phase

    @property
    def phase(self) -> str:
        index = self.index
        return self.job.phases[index].name if index < len(self.job.phases) else ""

    def arm(self, delay: float, callback: Callable[[Run], object]) -> None:
        self.disarm()
        self.timer = asyncio.get_running_loop().call_later(delay, callback, self)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
