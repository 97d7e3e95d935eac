"""Job ids (UUIDv7, domain/ids.py) and the injectable clocks (domain/clock.py)."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest
from jobwire_server.domain import ids
from jobwire_server.domain.clock import Clock, FakeClock, SystemClock
from jobwire_server.domain.ids import is_job_id, new_job_id

NOW = 1_800_000_000.123


@pytest.fixture(autouse=True)
def fresh_id_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh process would; the module's state is restored afterwards."""
    monkeypatch.setattr(ids, "_last_ms", 0)
    monkeypatch.setattr(ids, "_counter", 0)


def timestamp_ms(job_id: str) -> int:
    return uuid.UUID(job_id).int >> 80


# ----------------------------------------------------------------------------- ids


def test_id_is_a_version_7_rfc_uuid() -> None:
    job_id = new_job_id(NOW)
    parsed = uuid.UUID(job_id)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == job_id  # canonical lower-case form
    assert job_id[14] == "7"
    assert job_id[19] in "89ab"


def test_id_carries_the_millisecond_timestamp() -> None:
    assert timestamp_ms(new_job_id(NOW)) == int(NOW * 1000)


def test_every_id_is_a_valid_v7_uuid() -> None:
    for n in range(500):
        parsed = uuid.UUID(new_job_id(NOW + n / 7))
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_ids_at_the_same_now_strictly_increase() -> None:
    # more than the 12-bit counter holds, so the counter overflows into the next millisecond
    made = [new_job_id(NOW) for _ in range(10_000)]
    assert all(a < b for a, b in itertools.pairwise(made))
    assert len(set(made)) == len(made)
    assert all(uuid.UUID(a).int < uuid.UUID(b).int for a, b in itertools.pairwise(made))
    # borrowing milliseconds keeps the timestamp close to now
    assert int(NOW * 1000) <= timestamp_ms(made[0]) <= timestamp_ms(made[-1]) <= int(NOW * 1000) + 10


def test_ids_strictly_increase_when_the_clock_goes_backwards() -> None:
    times = [NOW, NOW + 5, NOW - 60, NOW - 3600, NOW + 5, NOW + 4.999, NOW + 6]
    made = [new_job_id(t) for t in times for _ in range(300)]
    assert all(a < b for a, b in itertools.pairwise(made))
    assert len(set(made)) == len(made)
    assert all(uuid.UUID(x).version == 7 for x in made)


def test_ids_follow_time_order() -> None:
    early, late = new_job_id(NOW), new_job_id(NOW + 1)
    assert early < late
    assert timestamp_ms(late) - timestamp_ms(early) == 1000


def test_ids_differ_in_their_random_part() -> None:
    made = [new_job_id(NOW + n) for n in range(50)]
    randoms = {uuid.UUID(x).int & ((1 << 62) - 1) for x in made}
    assert len(randoms) == 50


def test_is_job_id_accepts_generated_ids() -> None:
    for n in range(100):
        assert is_job_id(new_job_id(NOW + n))


def test_is_job_id_accepts_any_canonical_lower_case_uuid() -> None:
    assert is_job_id(str(uuid.uuid4()))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "not-a-uuid",
        "0190A000-0000-7000-8000-00000000000A",  # upper case
        "0190a0000000700080000000000000aa",  # no dashes
        "{0190a000-0000-7000-8000-0000000000aa}",  # braces
        "urn:uuid:0190a000-0000-7000-8000-0000000000aa",
        " 0190a000-0000-7000-8000-0000000000aa",  # padded
        "0190a000-0000-7000-8000-0000000000aa\n",
        "0190a000-0000-7000-8000-0000000000a",  # too short
        "0190a000-0000-7000-8000-0000000000aaa",  # too long
        "0190a000-0000-7000-8000-0000000000ag",  # not hex
    ],
)
def test_is_job_id_rejects_junk(text: str) -> None:
    assert is_job_id(text) is False


def test_is_job_id_rejects_upper_case_of_a_real_id() -> None:
    job_id = new_job_id(NOW)
    assert is_job_id(job_id)
    assert not is_job_id(job_id.upper())
    assert not is_job_id(job_id.replace("-", ""))


# ----------------------------------------------------------------------------- clocks


def test_fake_clock_starts_where_told_and_stands_still() -> None:
    clock = FakeClock(start=1_000.0)
    assert clock.now() == 1_000.0
    assert clock.now() == 1_000.0
    assert FakeClock().now() == 1_800_000_000.0


def test_fake_clock_advance_moves_time() -> None:
    clock = FakeClock(start=100.0)
    clock.advance(2.5)
    assert clock.now() == 102.5
    clock.advance(0.5)
    assert clock.now() == 103.0


def test_fake_clock_advance_sets_changed_and_rearms() -> None:
    clock = FakeClock()
    before = clock.changed
    assert not before.is_set()
    clock.advance(1.0)
    assert before.is_set()
    assert clock.changed is not before
    assert not clock.changed.is_set()  # a fresh event for the next wait


async def test_fake_clock_advance_wakes_a_waiter() -> None:
    clock = FakeClock()
    waiter = asyncio.ensure_future(clock.changed.wait())
    assert not waiter.done()
    clock.advance(30.0)
    assert await asyncio.wait_for(waiter, timeout=1.0) is True


def test_clocks_satisfy_the_protocol() -> None:
    clocks: list[Clock] = [FakeClock(5.0), SystemClock()]
    assert clocks[0].now() == 5.0
    assert clocks[1].now() > 1_600_000_000.0
