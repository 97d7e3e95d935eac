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


def test_worker_exports_are_pinned() -> None:
    import jobwire.worker  # noqa: PLC0415

    assert jobwire.worker.__all__ == ["Backoff", "JobContext", "Kind", "MalformedPayload", "PermanentError",
                                      "RetryPolicy", "RetryableError", "Worker", "WorkerRefused"]


def test_the_server_handler_api_is_the_worker_one() -> None:
    """Handler modules written against `jobwire_server.handlers` run on a remote worker unchanged."""
    import jobwire.worker  # noqa: PLC0415
    import jobwire_server.handlers  # noqa: PLC0415

    for name in jobwire_server.handlers.__all__:
        assert getattr(jobwire_server.handlers, name) is getattr(jobwire.worker, name), name


def test_sdk_never_imports_the_server() -> None:
    """Only the `jobwire` command mounts `serve` from the server package, when it is installed."""
    for path in SDK_DIR.rglob("*.py"):
        server_imports = {name for name in _imports(path) if name.startswith("jobwire_server")}
        top_cli = path == SDK_DIR / "cli.py"
        allowed = {"jobwire_server.cli", "jobwire_server.cli.add_server_commands"} if top_cli else set()
        assert server_imports == allowed, path.name


def test_only_convert_client_and_the_worker_runtime_import_protobuf_modules() -> None:
    for path in SDK_DIR.rglob("*.py"):
        if path.name in {"_convert.py", "client.py", "runtime.py", "protocol.py"} or path.parent.name == "v1":
            continue
        assert not any(name.endswith("_pb2") or "_pb2." in name for name in _imports(path)), path.name
