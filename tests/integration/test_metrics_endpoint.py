"""The Prometheus endpoint of a real `jobwire serve`, scraped over HTTP and parsed."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from importlib import metadata

import pytest
from grpc import aio
from jobwire.v1 import jobwire_pb2, jobwire_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, ServerProcess, StartServer, free_port
from tests.testkit import FAIL_PERMANENTLY, Gate, finished

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def fetch(url: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one HTTP request."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def scrape(address: str) -> Samples:
    status, content_type, body = await asyncio.to_thread(fetch, f"http://{address}/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


@pytest.fixture
def metered(start_server: StartServer) -> tuple[ServerProcess, str]:
    address = f"127.0.0.1:{free_port()}"
    return start_server(handlers="tests.testkit", concurrency=1, metrics_listen=address), address


async def test_scrape_counts_jobs_queues_and_streams(metered: tuple[ServerProcess, str]) -> None:
    server, address = metered
    gate_job = {"queue": "default", "kind": "tk.gate"}
    async with Gate() as gate, aio.insecure_channel(server.target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        first = (await stub.Enqueue(jobwire_pb2.EnqueueRequest(kind="tk.gate", payload=gate.payload()))).job
        held = await gate.next()  # the first job runs and holds the only slot
        second = (await stub.Enqueue(jobwire_pb2.EnqueueRequest(kind="tk.gate", payload=gate.payload()))).job
        watch = stub.WatchJob(jobwire_pb2.WatchJobRequest(id=first.id))
        await watch.read()  # the snapshot comes after the server subscribed: one open stream

        got = await scrape(address)
        assert got[key("jobwire_jobs_enqueued_total", **gate_job)] == 2
        assert got[key("jobwire_queue_jobs", queue="default", state="running")] == 1
        assert got[key("jobwire_queue_jobs", queue="default", state="queued")] == 1
        assert got[key("jobwire_queue_jobs", queue="default", state="succeeded")] == 0
        assert got[key("jobwire_queue_oldest_queued_age_seconds", queue="default")] >= 0
        assert got[key("jobwire_watch_streams")] == 1
        assert key("jobwire_jobs_finished_total", **gate_job, outcome="succeeded") not in got

        held.release(FAIL_PERMANENTLY)
        assert (await finished(stub, first.id)).job.state == jobwire_pb2.JOB_STATE_FAILED
        (await gate.next()).release()
        assert (await finished(stub, second.id)).job.state == jobwire_pb2.JOB_STATE_SUCCEEDED
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch.read()

    got = await scrape(address)
    assert got[key("jobwire_jobs_finished_total", **gate_job, outcome="failed")] == 1
    assert got[key("jobwire_jobs_finished_total", **gate_job, outcome="succeeded")] == 1
    assert got[key("jobwire_job_duration_seconds_count", **gate_job, outcome="succeeded")] == 1
    assert got[key("jobwire_phase_duration_seconds_count", **gate_job, phase="run", outcome="failed")] == 1
    assert got[key("jobwire_phase_duration_seconds_count", **gate_job, phase="run", outcome="succeeded")] == 1
    assert got[key("jobwire_queue_jobs", queue="default", state="running")] == 0
    assert got[key("jobwire_queue_jobs", queue="default", state="failed")] == 1
    assert got[key("jobwire_queue_oldest_queued_age_seconds", queue="default")] == 0


async def test_rpc_process_and_build_metrics(metered: tuple[ServerProcess, str]) -> None:
    server, address = metered
    service = "jobwire.v1.JobService"
    async with aio.insecure_channel(server.target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        job = (await stub.Enqueue(jobwire_pb2.EnqueueRequest(kind="noop"))).job
        with pytest.raises(aio.AioRpcError):
            await stub.GetJob(jobwire_pb2.GetJobRequest(id="01a00000-0000-7000-8000-000000000000"))
        await finished(stub, job.id)  # one WatchJob stream, to its end

    got = await scrape(address)
    unary = {"grpc_type": "unary", "grpc_service": service}
    assert got[key("grpc_server_started_total", **unary, grpc_method="Enqueue")] == 1
    assert got[key("grpc_server_handled_total", **unary, grpc_method="Enqueue", grpc_code="OK")] == 1
    assert got[key("grpc_server_handled_total", **unary, grpc_method="GetJob", grpc_code="NOT_FOUND")] == 1
    assert got[key("grpc_server_handling_seconds_count", **unary, grpc_method="GetJob")] == 1
    stream = {"grpc_type": "server_stream", "grpc_service": service, "grpc_method": "WatchJob"}
    assert got[key("grpc_server_handled_total", **stream, grpc_code="OK")] == 1
    assert got[key("grpc_server_handling_seconds_count", **stream)] == 1
    assert got[key("process_resident_memory_bytes")] > 0
    assert key("process_cpu_seconds_total") in got and key("process_open_fds") in got
    (build,) = [labels for name, labels in got if name == "jobwire_build_info"]
    assert dict(build)["version"] == metadata.version("jobwire")
    assert got[("jobwire_build_info", build)] == 1


def test_other_paths_and_methods(metered: tuple[ServerProcess, str]) -> None:
    _, address = metered
    assert fetch(f"http://{address}/")[0] == 404
    assert fetch(f"http://{address}/metrics", method="POST")[0] == 405
    status, _, body = fetch(f"http://{address}/metrics", method="HEAD")
    assert (status, body) == (200, "")


def test_metrics_port_in_use_is_a_one_line_error(tmp_path: object) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "jobwire_server", "serve", "--listen", f"127.0.0.1:{free_port()}",
             "--db", str(tmp_path) + "/m.db", "--metrics-listen", taken],
            cwd=REPO, capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if "error" in line]
    assert line.startswith(f"jobwire: error: cannot listen on {taken} for metrics:") and "port in use" in line


def test_metrics_are_off_by_default(server: ServerProcess) -> None:
    assert "metrics on" not in server.log()
