"""The `jobwire serve` process: health, reflection, graceful stop, clear start-up errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import REPO, ServerProcess, StartServer, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _serve(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobwire_server", "serve", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_health_serving_for_server_and_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "jobwire.v1.JobService"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == SERVING


def test_reflection_lists_job_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
    assert "jobwire.v1.JobService" in names
    assert "grpc.health.v1.Health" in names


def test_reflection_v1_lists_and_describes_services(server: ServerProcess) -> None:
    """grpc.reflection.v1 (current grpcurl, Postman): the same messages as v1alpha under the v1 name."""
    with grpc.insecure_channel(server.target) as channel:
        info = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="jobwire.v1.JobService"),
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="grpc.reflection.v1.ServerReflection")]
        listed, job_file, v1_file = list(info(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {"jobwire.v1.JobService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in job_file.file_descriptor_response.file_descriptor_proto]
    assert "jobwire/v1/jobwire.proto" in {f.name for f in files}
    (v1,) = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in v1_file.file_descriptor_response.file_descriptor_proto]
    assert v1.package == "grpc.reflection.v1"
    assert v1.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"


def test_sigterm_goes_not_serving_first_then_exits_zero(start_server: StartServer) -> None:
    server = start_server(shutdown_grace=3)
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="jobwire.v1.JobService"), timeout=15)
        assert next(watch).status == SERVING
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        assert server.process.wait(10) == 0
        assert time.monotonic() - started < 3 + 2  # within the grace period (plus process exit)
    assert "stopped" in server.log()


def test_port_in_use_is_a_one_line_error(server: ServerProcess) -> None:
    result = _serve("--listen", server.target, "--db", str(server.db_path.with_name("other.db")))
    assert result.returncode == 1
    # Only jobwire's line: no traceback, and no error line of gRPC core's own before it.
    assert result.stderr.strip().splitlines() == [
        f"jobwire: error: cannot listen on {server.target}: Address already in use (is the port in use?)"]


def test_database_that_cannot_be_opened_is_a_one_line_error(tmp_path: Path) -> None:
    result = _serve("--listen", f"127.0.0.1:{free_port()}", "--db", str(tmp_path / "missing-dir" / "x.db"))
    assert result.returncode != 0
    assert "cannot open database" in result.stderr
    assert "Traceback" not in result.stderr


def test_database_that_is_not_sqlite_is_a_one_line_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not a database" * 100)
    result = _serve("--listen", f"127.0.0.1:{free_port()}", "--db", str(bogus))
    assert result.returncode != 0
    assert "cannot open database" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_names_the_setting_and_its_source(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "jobwire_server", "serve", "--db", str(tmp_path / "x.db")],
                            cwd=REPO, capture_output=True, text=True, timeout=20, check=False,
                            env={"JOBWIRE_CONCURRENCY": "lots", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "concurrency" in result.stderr and "JOBWIRE_CONCURRENCY" in result.stderr


def test_non_loopback_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    result = _serve("--listen", f"0.0.0.0:{free_port()}", "--db", str(tmp_path / "x.db"))
    assert result.returncode == 2
    assert "--allow-unauthenticated" in result.stderr


def test_help_lists_settings_with_env_names() -> None:
    result = _serve("--help")
    assert result.returncode == 0
    for text in ("--listen", "JOBWIRE_LISTEN", "--db", "--concurrency", "--shutdown-grace", "--handlers"):
        assert text in result.stdout
