"""Schedules in the config file: the ``[[schedules]]`` tables as `load_config` reads them (their shape;
what they say is validated at start, see tests/integration/test_schedules.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from jobwire_server.config import ConfigError, add_serve_arguments, load_config
from jobwire_server.schedule_file import DeclaredSchedule

NIGHTLY = """
[[schedules]]
id = "nightly"
kind = "report"
cron = "0 3 * * *"
time_zone = "Europe/Paris"
jitter = "5m"
overlap = "cancel-previous"
catchup = "run_once"
description = "the nightly report"
queue = "reports"
payload = { day = "yesterday", limit = 10 }
priority = 8
max_attempts = 2
timeout = "10m"
dedupe_key = "nightly"
labels = { team = "data" }
webhook = { url = "https://hooks.example.com/r", events = ["SUCCEEDED", "event_type_failed"] }

[[schedules]]
id = "sweep"
kind = "noop"
every = "15m"
payload = "plain text"
"""


def load(tmp_path: Path, text: str) -> tuple[DeclaredSchedule, ...]:
    path = tmp_path / "jobwire.toml"
    path.write_text(text, encoding="utf-8")
    return load_config({}, {}, str(path)).schedules


def test_every_key_is_read_typed(tmp_path: Path) -> None:
    nightly, sweep = load(tmp_path, NIGHTLY)
    assert nightly == DeclaredSchedule(
        id="nightly", kind="report", cron="0 3 * * *", time_zone="Europe/Paris", jitter=300.0,
        overlap="CANCEL_PREVIOUS", catchup="RUN_ONCE", description="the nightly report", queue="reports",
        payload=b'{"day":"yesterday","limit":10}', priority=8, max_attempts=2, timeout=600.0, dedupe_key="nightly",
        labels={"team": "data"}, webhook_url="https://hooks.example.com/r", webhook_events=("SUCCEEDED", "FAILED"))
    assert sweep == DeclaredSchedule(id="sweep", kind="noop", every=900.0, payload=b"plain text")


def test_schedules_sit_beside_a_server_table(tmp_path: Path) -> None:
    path = tmp_path / "jobwire.toml"
    path.write_text('[server]\nconcurrency = 7\n' + NIGHTLY, encoding="utf-8")
    config = load_config({}, {}, str(path))
    assert config.concurrency == 7 and [s.id for s in config.schedules] == ["nightly", "sweep"]


def test_no_schedules_is_none(tmp_path: Path) -> None:
    assert load(tmp_path, "concurrency = 3\n") == ()


@pytest.mark.parametrize(("text", "message"), [
    ('schedules = "x"', "must be an array of tables"),
    ('[[schedules]]\nkind = "noop"\n', r"schedules\[0\]: id is required"),
    ('[[schedules]]\nid = "a"\n', r"schedules\[0\]: kind is required"),
    ('[[schedules]]\nid = "a"\nkind = "noop"\ncorn = "* * * * *"\n', "unknown key 'corn'"),
    ('[[schedules]]\nid = 5\nkind = "noop"\n', r"schedules\[0\].id must be a string"),
    ('[[schedules]]\nid = "a"\nkind = "noop"\npriority = "high"\n', r"\('a'\).priority must be an integer"),
    ('[[schedules]]\nid = "a"\nkind = "noop"\nevery = "soon"\n', r"\('a'\).every must be a duration"),
    ('[[schedules]]\nid = "a"\nkind = "noop"\noverlap = "never"\n', "overlap must be one of allow, skip, "
                                                                  "cancel_previous"),
    ('[[schedules]]\nid = "a"\nkind = "noop"\npayload = 5\n', "payload must be a string, or a table"),
    ('[[schedules]]\nid = "a"\nkind = "noop"\nlabels = { a = 1 }\n', "labels must be a table of strings"),
    ('[[schedules]]\nid = "a"\nkind = "noop"\nwebhook = "https://x"\n', "webhook must be a table with url"),
    ('[[schedules]]\nid = "a"\nkind = "noop"\n[[schedules]]\nid = "a"\nkind = "noop"\n', "two schedules have the id"),
])
def test_malformed_tables_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text)


def test_schedules_have_no_flag_and_no_environment_variable() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert "--schedules" not in parser.format_help()
    assert load_config({"schedules": "x"}, {"JOBWIRE_SCHEDULES": "y"}, None).schedules == ()
