"""Job ids: UUIDv7 strings, so ids sort by creation time (RFC 9562 §5.7)."""

from __future__ import annotations

import os
import threading
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_job_id(now: float) -> str:
    """A UUIDv7 for time `now`; ids made in one process are strictly increasing."""
    global _last_ms, _counter
    ms = int(now * 1000)
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # 12-bit counter exhausted: borrow the next millisecond
                ms += 1
                _counter = 0
        else:
            _counter = int.from_bytes(os.urandom(2)) & 0x3FF  # random start leaves room to count up
        _last_ms = ms
        counter = _counter
    rand = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


def is_job_id(text: str) -> bool:
    """True for a canonical lower-case UUID string."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def first_id_at(time: float) -> str:
    """The smallest job id `new_job_id` can make at `time` or later: ids never go back in time (they
    take the larger of the clock and the last id's millisecond), so every job created at or after
    `time` has an id at least this one."""
    ms = max(0, int(time * 1000)) & ((1 << 48) - 1)
    return str(uuid.UUID(int=ms << 80 | 0x7 << 76 | 0b10 << 62))
