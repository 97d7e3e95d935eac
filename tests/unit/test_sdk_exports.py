"""Pins the SDK's public surface, so it does not change by accident."""

from __future__ import annotations

import ast
from pathlib import Path

import jobwire
import jobwire.sync

EXPECTED = [
    "AlreadyExists",
    "BulkResult",
    "CatchupPolicy",
    "Client",
    "EnqueueSpec",
    "EventType",
    "InvalidArgument",
    "InvalidTransition",
    "Job",
    "JobCancelled",
    "JobError",
    "JobEvent",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobState",
    "JobwireError",
    "OverlapPolicy",
    "PermissionDenied",
    "Phase",
    "PhaseState",
    "Progress",
    "PruneResult",
    "Queue",
    "QueueNotFound",
    "QueueSettings",
    "QueueStats",
    "ResourceExhausted",
    "RetryPolicy",
    "Schedule",
    "ScheduleFromConfig",
    "ScheduleNotFound",
    "ScheduleSpec",
    "TLSConfig",
    "TriggerResult",
    "Unauthenticated",
    "Unavailable",
    "WaitingReason",
    "Webhook",
    "WebhookAttempt",
    "WebhookDelivery",
    "sync",
]

SDK_DIR = Path(jobwire.__file__).parent


def test_public_exports_are_pinned() -> None:
    assert jobwire.__all__ == EXPECTED
    for name in EXPECTED:
        assert hasattr(jobwire, name), name


def test_sync_exports_are_pinned() -> None:
    assert jobwire.sync.__all__ == ["Client", "JobHandle"]


def test_error_hierarchy() -> None:
    for name in EXPECTED:
        obj = getattr(jobwire, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, jobwire.JobwireError), name


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_sdk_never_imports_the_server() -> None:
    """Only the `jobwire` command mounts `serve` from the server package, when it is installed."""
    for path in SDK_DIR.glob("*.py"):
        server_imports = {name for name in _imports(path) if name.startswith("jobwire_server")}
        allowed = {"jobwire_server.cli", "jobwire_server.cli.add_server_commands"} if path.name == "cli.py" else set()
        assert server_imports == allowed, path.name


def test_only_convert_and_client_import_protobuf_modules() -> None:
    for path in SDK_DIR.glob("*.py"):
        if path.name in {"_convert.py", "client.py"}:
            continue
        assert not any(name.endswith("_pb2") or "_pb2." in name for name in _imports(path)), path.name
