"""`jobwire queues ACTION` and `jobwire enqueue --concurrency-key`, run as a user would run them,
against the real server."""

from __future__ import annotations

import json
import uuid

from tests.conftest import ServerProcess
from tests.e2e.test_cli_client import run


def _name() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


def test_pause_update_get_list_resume(server: ServerProcess) -> None:
    name = _name()
    paused = run(server, "queues", "pause", name)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == f"paused {name}: paused"
    enqueued = run(server, "enqueue", "noop", "--queue", name, "--concurrency-key", "tenant-7", "--json")
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = json.loads(enqueued.stdout.splitlines()[0])["job"]["id"]
    shown = run(server, "get", job_id)
    assert "conc. key:  tenant-7" in shown.stdout and "waiting:    its queue is paused" in shown.stdout

    updated = run(server, "queues", "update", name, "--rate", "50", "--burst", "10", "--key-limit", "1")
    assert updated.returncode == 0, updated.stderr
    assert updated.stdout.strip() == f"updated {name}: paused; rate 50/s burst 10, key limit 1"
    got = run(server, "queues", "get", name)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert lines[:3] == [f"queue:             {name}", "state:             paused",
                         "rate limit:        50 jobs/s, burst 10"]
    assert "jobs:              1 queued, 0 running, 0 scheduled, 0 retrying" in lines
    as_json = json.loads(run(server, "queues", "get", name, "--json").stdout)
    assert as_json["settings"]["key_limit"] == 1 and as_json["settings"]["paused"] is True

    listed = run(server, "queues", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("QUEUE ")
    assert any(line.startswith(name) and "paused" in line for line in listed.stdout.splitlines())

    resumed = run(server, "queues", "resume", name)
    assert resumed.stdout.strip() == f"resumed {name}: running; rate 50/s burst 10, key limit 1"
    watched = run(server, "watch", job_id)
    assert watched.returncode == 0, watched.stderr


def test_bad_input_is_reported_with_the_field(server: ServerProcess) -> None:
    bad = run(server, "queues", "update", _name(), "--rate", "-5")
    assert bad.returncode == 1
    assert "rate_limit" in bad.stderr and "INVALID_ARGUMENT" in bad.stderr
    nothing = run(server, "queues", "update", _name())
    assert nothing.returncode == 2 and "at least one setting" in nothing.stderr
    missing = run(server, "queues", "get", _name())
    assert missing.returncode == 1 and "not found" in missing.stderr
