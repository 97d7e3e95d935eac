"""Judging a job against its stored events and the ledger of what its handlers really ran."""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tests.replicas.cluster import StoredEvent

WEBHOOK_EVENTS = {"WEBHOOK_DELIVERED", "WEBHOOK_FAILED"}
_LOST = re.compile(r"worker lost during attempt (\d+) \(lease expired\)")


@dataclass
class Attempt:
    number: int
    started: list[str] = field(default_factory=list)  # phases, in PHASE_STARTED order
    succeeded: list[str] = field(default_factory=list)
    #: The INTERRUPTED event that ended it (the lease ran out), if it was.
    interrupted: StoredEvent | None = None


def attempts_of(job_id: str, events: list[StoredEvent], phases: tuple[str, ...]) -> list[Attempt]:
    """Parse a job's stored history: ENQUEUED, then attempts (each STARTED, its phases in order,
    ended by an INTERRUPTED record or, for the last, SUCCEEDED), then only webhook outcomes.
    Raises AssertionError on anything else: a gap, a second terminal event, an event of an
    attempt after it was interrupted (a late report that got in), a phase that succeeded twice."""
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1)), f"job {job_id}: sequences not gapless: {seqs}"
    types = [e.type for e in events]
    assert types[0] == "ENQUEUED", f"job {job_id}: {types}"
    attempts: list[Attempt] = []
    done: list[str] = []  # phases succeeded so far, over all attempts
    current: Attempt | None = None
    running = ""  # the phase running in the current attempt
    finished = False
    for event in events[1:]:
        where = f"job {job_id} event {event.seq} {event.type} {event.phase!r} after {types[:event.seq - 1]}"
        if finished:
            assert event.type in WEBHOOK_EVENTS, f"{where}: only webhook outcomes may follow SUCCEEDED"
            continue
        if current is None:
            assert event.type == "STARTED", f"{where}: expected a new attempt"
            current = Attempt(len(attempts) + 1)
            attempts.append(current)
            continue
        if event.type == "PHASE_STARTED":
            assert not running, f"{where}: {running} still running"
            expected = phases[len(done)]
            assert event.phase == expected, f"{where}: expected phase {expected} (first unfinished)"
            current.started.append(event.phase)
            running = event.phase
        elif event.type == "PHASE_SUCCEEDED":
            assert event.phase == running, f"{where}: {running!r} was running"
            current.succeeded.append(event.phase)
            done.append(event.phase)
            running = ""
        elif event.type == "INTERRUPTED":
            match = _LOST.fullmatch(event.detail)
            assert match and int(match.group(1)) == current.number, f"{where}: {event.detail!r}"
            assert event.phase == running, f"{where}: interrupted in {event.phase!r}, {running!r} was running"
            current.interrupted = event
            current, running = None, ""
        elif event.type == "SUCCEEDED":
            assert not running and done == list(phases), f"{where}: phases done {done}"
            finished = True
        else:
            raise AssertionError(f"{where}: unexpected")
    assert finished, f"job {job_id} did not succeed: {types}"
    assert done == list(phases), f"job {job_id}: each phase succeeded once, in order: {done}"
    return attempts


@dataclass
class Verdict:
    """What the ledger says about one job, checked against its attempts."""

    reruns: int = 0  # phase runs after the first run of that phase
    late_ends: list[dict[str, Any]] = field(default_factory=list)  # runs that ended after their attempt was interrupted
    runners: dict[int, str] = field(default_factory=dict)  # attempt → replica identity
    interrupted: set[int] = field(default_factory=set)  # attempts ended by an INTERRUPTED record


def judge(job_id: str, attempts: list[Attempt], lines: list[dict[str, Any]]) -> Verdict:
    """Check the ledger lines of one job against its parsed attempts:
    - each (attempt, phase) started at most once, all of an attempt's runs on one replica, and only
      phases the attempt's history shows started;
    - every phase success stored was really run (a start and an end in the ledger, in that attempt);
    - a phase ran again only after an INTERRUPTED record of the attempt that ran it before,
      and the new run started after that record was written."""
    verdict = Verdict(interrupted={a.number for a in attempts if a.interrupted is not None})
    starts: dict[tuple[int, str], dict[str, Any]] = {}
    ends: dict[tuple[int, str], dict[str, Any]] = {}
    by_attempt = {a.number: a for a in attempts}
    for line in lines:
        key = (line["attempt"], line["phase"])
        attempt = by_attempt.get(line["attempt"])
        assert attempt is not None, f"job {job_id}: the ledger shows attempt {key} the history does not have"
        runner = verdict.runners.setdefault(attempt.number, line["replica"])
        assert runner == line["replica"], f"job {job_id} attempt {attempt.number} ran on {runner} and {line['replica']}"
        if line["event"] == "start":
            assert key not in starts, f"job {job_id}: phase run twice in one attempt {key}"
            assert line["phase"] in attempt.started, f"job {job_id}: ran {key}, which the history never started"
            starts[key] = line
        elif line["event"] == "end":
            assert key in starts, f"job {job_id}: an end without a start {key}"
            ends[key] = line
    for attempt in attempts:
        for phase in attempt.succeeded:
            assert (attempt.number, phase) in ends, f"job {job_id}: {phase} succeeded in attempt {attempt.number} " \
                                                    "without the ledger showing it ran to its end"
    runs: dict[str, list[int]] = defaultdict(list)
    for attempt_number, phase in sorted(starts):
        runs[phase].append(attempt_number)
    for phase, numbers in runs.items():
        for before, after in itertools.pairwise(numbers):
            record = by_attempt[before].interrupted
            assert record is not None and record.phase == phase, (
                f"job {job_id}: {phase} ran in attempt {before} and again in {after} without an INTERRUPTED record")
            assert starts[(after, phase)]["time"] >= record.time, (
                f"job {job_id}: {phase} started again in attempt {after} before attempt {before} was interrupted")
            verdict.reruns += 1
    for (number, _phase), line in ends.items():
        record = by_attempt[number].interrupted
        if record is not None and line["time"] > record.time:
            verdict.late_ends.append(line)
    return verdict
