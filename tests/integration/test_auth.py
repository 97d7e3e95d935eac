"""Access control on the real server: bearer tokens with scopes, TLS and mutual TLS.

Certificates are made here with `cryptography`: a CA, a server certificate for 127.0.0.1/localhost
and client certificates, one signed by the CA and one by a stranger CA.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from jobwire.v1 import jobwire_pb2, jobwire_pb2_grpc
from jobwire_server.api.auth import hash_token

from tests.conftest import REPO, START_TIMEOUT, ServerProcess, StartServer, free_port
from tests.testkit import running

READER, WRITER, ADMIN = "reader-secret-1", "writer-secret-2", "admin-secret-3"
SCHEDULER = "scheduler-secret-4"
SERVING = health_pb2.HealthCheckResponse.SERVING
TIMEOUT = 10.0

TOKENS_TOML = f"""
[[token]]
name = "reader"
sha256 = "{hash_token(READER)}"
scopes = ["jobs:read"]

[[token]]
name = "writer"
sha256 = "{hash_token(WRITER)}"
scopes = ["jobs:write"]

[[token]]
name = "root"
sha256 = "{hash_token(ADMIN).upper()}"
scopes = ["admin"]

[[token]]
name = "scheduler"
sha256 = "{hash_token(SCHEDULER)}"
scopes = ["schedules:write"]
"""


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries google.rpc.Status details"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    raise AssertionError("no ErrorInfo in the status details")


def _refused(call: Callable[[], object], code: grpc.StatusCode) -> str:
    """Run `call`, assert it fails with `code`, return the ErrorInfo reason."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() is code, caught.value.details()
    return _reason(caught.value)


# ----------------------------------------------------------------------------- tokens


@pytest.fixture
def token_server(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS_TOML)
    return start_server(tokens_file=tokens)


@pytest.fixture
def stub(token_server: ServerProcess) -> Iterator[jobwire_pb2_grpc.JobServiceStub]:
    with grpc.insecure_channel(token_server.target) as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


def _enqueue(stub: jobwire_pb2_grpc.JobServiceStub, token: str) -> jobwire_pb2.EnqueueResponse:
    reply: jobwire_pb2.EnqueueResponse = stub.Enqueue(jobwire_pb2.EnqueueRequest(kind="noop"), timeout=TIMEOUT,
                                                      metadata=_bearer(token))
    return reply


def test_no_token_is_unauthenticated(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert _refused(lambda: stub.Enqueue(jobwire_pb2.EnqueueRequest(kind="noop"), timeout=TIMEOUT),
                    unauthenticated) == "UNAUTHENTICATED"
    assert _refused(lambda: stub.GetQueueStats(jobwire_pb2.GetQueueStatsRequest(), timeout=TIMEOUT),
                    unauthenticated) == "UNAUTHENTICATED"
    # a server-streaming method is refused with the same status, before its first message
    assert _refused(lambda: list(stub.WatchEvents(jobwire_pb2.WatchEventsRequest(), timeout=TIMEOUT)),
                    unauthenticated) == "UNAUTHENTICATED"


@pytest.mark.parametrize("header", [
    f"Bearer {READER}x",  # wrong token
    f"Basic {READER}",  # wrong scheme
    "Bearer ",  # empty token
    hash_token(ADMIN),  # the stored digest is not the token
    f"Bearer {hash_token(ADMIN)}",
])
def test_wrong_token_is_unauthenticated(stub: jobwire_pb2_grpc.JobServiceStub, header: str) -> None:
    def call() -> object:
        return stub.GetQueueStats(jobwire_pb2.GetQueueStatsRequest(), timeout=TIMEOUT,
                                  metadata=(("authorization", header),))

    assert _refused(call, grpc.StatusCode.UNAUTHENTICATED) == "UNAUTHENTICATED"


def test_read_token_reads_but_cannot_write(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    job = _enqueue(stub, ADMIN).job
    got = stub.GetJob(jobwire_pb2.GetJobRequest(id=job.id), timeout=TIMEOUT, metadata=_bearer(READER))
    assert got.id == job.id
    stub.ListJobs(jobwire_pb2.ListJobsRequest(), timeout=TIMEOUT, metadata=_bearer(READER))
    events = stub.WatchJob(jobwire_pb2.WatchJobRequest(id=job.id), timeout=TIMEOUT, metadata=_bearer(READER))
    assert next(iter(events)).type == jobwire_pb2.EVENT_TYPE_SNAPSHOT
    events.cancel()

    denied = grpc.StatusCode.PERMISSION_DENIED
    assert _refused(lambda: _enqueue(stub, READER), denied) == "PERMISSION_DENIED"
    assert _refused(lambda: stub.CancelJob(jobwire_pb2.CancelJobRequest(id=job.id), timeout=TIMEOUT,
                                           metadata=_bearer(READER)), denied) == "PERMISSION_DENIED"


def test_write_token_enqueues_but_cannot_read(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    reply = _enqueue(stub, WRITER)
    assert reply.job.id and reply.job.kind == "noop"
    assert _refused(lambda: stub.GetJob(jobwire_pb2.GetJobRequest(id=reply.job.id), timeout=TIMEOUT,
                                        metadata=_bearer(WRITER)),
                    grpc.StatusCode.PERMISSION_DENIED) == "PERMISSION_DENIED"


def test_admin_token_reads_and_writes(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    job = _enqueue(stub, ADMIN).job
    got = stub.GetJob(jobwire_pb2.GetJobRequest(id=job.id), timeout=TIMEOUT, metadata=_bearer(ADMIN))
    assert got.id == job.id


def _details(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR))
    return info


def test_bulk_actions_on_more_than_one_job_need_admin(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    def enqueue(label: str) -> str:
        reply = stub.Enqueue(jobwire_pb2.EnqueueRequest(kind="noop", delay={"seconds": 3600}, labels={"set": label}),
                             timeout=TIMEOUT, metadata=_bearer(WRITER))
        return str(reply.job.id)

    pair = [enqueue("pair"), enqueue("pair")]
    single = enqueue("single")

    def cancel(label: str, token: str, *, dry_run: bool = False) -> jobwire_pb2.CancelJobsResponse:
        request = jobwire_pb2.CancelJobsRequest(filter=jobwire_pb2.JobFilter(labels={"set": label}), dry_run=dry_run)
        reply: jobwire_pb2.CancelJobsResponse = stub.CancelJobs(request, timeout=TIMEOUT, metadata=_bearer(token))
        return reply

    with pytest.raises(grpc.RpcError) as caught:
        cancel("pair", WRITER)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    info = _details(caught.value)
    assert (info.reason, info.domain, dict(info.metadata)) == ("PERMISSION_DENIED", "jobwire", {"scope": "admin"})
    assert caught.value.details() == "token 'writer' lacks scope 'admin' needed for CancelJobs on more than one job"
    states = {stub.GetJob(jobwire_pb2.GetJobRequest(id=i), timeout=TIMEOUT, metadata=_bearer(ADMIN)).state
              for i in pair}
    assert states == {jobwire_pb2.JOB_STATE_SCHEDULED}, "nothing was cancelled"
    assert cancel("pair", WRITER, dry_run=True).matched == 2, "a dry run needs jobs:write only"
    reply = cancel("single", WRITER)
    assert (reply.matched, reply.changed) == (1, 1), "one job: jobs:write is enough"
    assert stub.GetJob(jobwire_pb2.GetJobRequest(id=single), timeout=TIMEOUT,
                       metadata=_bearer(ADMIN)).state == jobwire_pb2.JOB_STATE_CANCELLED
    retry = jobwire_pb2.RetryJobsRequest(filter=jobwire_pb2.JobFilter(states=[jobwire_pb2.JOB_STATE_SCHEDULED]))
    with pytest.raises(grpc.RpcError) as caught:
        stub.RetryJobs(retry, timeout=TIMEOUT, metadata=_bearer(WRITER))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "RetryJobs on more than one job" in (caught.value.details() or "")
    assert cancel("pair", ADMIN).changed == 2
    assert _refused(lambda: cancel("pair", READER, dry_run=True), grpc.StatusCode.PERMISSION_DENIED) == (
        "PERMISSION_DENIED")


@pytest.fixture(scope="module")
def shared_stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[jobwire_pb2_grpc.JobServiceStub]:
    """One token server for the header-syntax cases (each case is one call)."""
    directory = tmp_path_factory.mktemp("bearer")
    tokens = directory / "tokens.toml"
    tokens.write_text(TOKENS_TOML)
    with running(directory, tokens_file=tokens) as server, grpc.insecure_channel(server.target) as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_scheme_is_case_insensitive(shared_stub: jobwire_pb2_grpc.JobServiceStub, scheme: str) -> None:
    stub = shared_stub
    reply = stub.GetQueueStats(jobwire_pb2.GetQueueStatsRequest(), timeout=TIMEOUT,
                               metadata=(("authorization", f"{scheme} {READER}"),))
    assert reply is not None


@pytest.mark.parametrize("header", [
    f"Bearer  {READER}",  # two spaces
    f"Bearer {READER} ",  # trailing space
    f" Bearer {READER}",  # leading space
    f"Bearer {READER} x",  # a second word
    f"Bearer{READER}",  # no space
    f"Bearer: {READER}",
    f"Bearer {READER}=x",  # '=' only as trailing padding
    f"Bearer {READER}?",  # outside the b64token alphabet
    "Bearer =",
])
def test_credentials_outside_rfc_6750_are_refused(shared_stub: jobwire_pb2_grpc.JobServiceStub,
                                                  header: str) -> None:
    stub = shared_stub

    def call() -> object:
        return stub.GetQueueStats(jobwire_pb2.GetQueueStatsRequest(), timeout=TIMEOUT,
                                  metadata=(("authorization", header),))

    assert _refused(call, grpc.StatusCode.UNAUTHENTICATED) == "UNAUTHENTICATED"


def test_two_authorization_entries_are_refused(shared_stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    stub = shared_stub

    def call() -> object:
        return stub.GetQueueStats(jobwire_pb2.GetQueueStatsRequest(), timeout=TIMEOUT,
                                  metadata=(*_bearer(READER), *_bearer(READER)))

    assert _refused(call, grpc.StatusCode.UNAUTHENTICATED) == "UNAUTHENTICATED"


def test_undecodable_bytes_without_a_token_are_unauthenticated(token_server: ServerProcess) -> None:
    with grpc.insecure_channel(token_server.target) as channel:
        call = channel.unary_unary("/jobwire.v1.JobService/GetJob")
        assert _refused(lambda: call(b"\x0a\x05ab", timeout=TIMEOUT),
                        grpc.StatusCode.UNAUTHENTICATED) == "UNAUTHENTICATED"
        assert _refused(lambda: call(b"\x0a\x05ab", timeout=TIMEOUT, metadata=_bearer(READER)),
                        grpc.StatusCode.INVALID_ARGUMENT) == "MALFORMED_REQUEST"


def test_prune_needs_admin_and_deliveries_need_read(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    job = _enqueue(stub, ADMIN).job
    deliveries = stub.ListWebhookDeliveries(jobwire_pb2.ListWebhookDeliveriesRequest(job_id=job.id),
                                            timeout=TIMEOUT, metadata=_bearer(READER))
    assert list(deliveries.deliveries) == []
    denied = grpc.StatusCode.PERMISSION_DENIED
    for token in (READER, WRITER):
        assert _refused(lambda token=token: stub.PruneJobs(jobwire_pb2.PruneJobsRequest(dry_run=True),
                                                           timeout=TIMEOUT, metadata=_bearer(token)),
                        denied) == "PERMISSION_DENIED"
    reply = stub.PruneJobs(jobwire_pb2.PruneJobsRequest(dry_run=True), timeout=TIMEOUT, metadata=_bearer(ADMIN))
    assert reply.dry_run


def test_schedules_are_written_with_schedules_write_and_read_with_jobs_read(
        stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    spec = jobwire_pb2.ScheduleSpec(template=jobwire_pb2.EnqueueRequest(kind="noop"), cron="@daily")
    denied = grpc.StatusCode.PERMISSION_DENIED
    for token in (READER, WRITER):
        assert _refused(lambda token=token: stub.CreateSchedule(jobwire_pb2.CreateScheduleRequest(id="s", spec=spec),
                                                                timeout=TIMEOUT, metadata=_bearer(token)),
                        denied) == "PERMISSION_DENIED"
    writes = [lambda md: stub.CreateSchedule(jobwire_pb2.CreateScheduleRequest(id="s", spec=spec), timeout=TIMEOUT,
                                             metadata=md),
              lambda md: stub.UpdateSchedule(jobwire_pb2.UpdateScheduleRequest(id="s", spec=spec), timeout=TIMEOUT,
                                             metadata=md),
              lambda md: stub.PauseSchedule(jobwire_pb2.PauseScheduleRequest(id="s"), timeout=TIMEOUT, metadata=md),
              lambda md: stub.ResumeSchedule(jobwire_pb2.ResumeScheduleRequest(id="s"), timeout=TIMEOUT, metadata=md),
              lambda md: stub.TriggerSchedule(jobwire_pb2.TriggerScheduleRequest(id="s"), timeout=TIMEOUT,
                                              metadata=md)]
    for write in writes:
        write(_bearer(SCHEDULER))
        assert _refused(lambda write=write: write(_bearer(WRITER)), denied) == "PERMISSION_DENIED"
    assert _refused(lambda: stub.GetSchedule(jobwire_pb2.GetScheduleRequest(id="s"), timeout=TIMEOUT,
                                             metadata=_bearer(SCHEDULER)), denied) == "PERMISSION_DENIED"
    assert stub.GetSchedule(jobwire_pb2.GetScheduleRequest(id="s"), timeout=TIMEOUT, metadata=_bearer(READER)).id == "s"
    listed = stub.ListSchedules(jobwire_pb2.ListSchedulesRequest(), timeout=TIMEOUT, metadata=_bearer(READER))
    assert [s.id for s in listed.schedules] == ["s"]
    assert _refused(lambda: stub.DeleteSchedule(jobwire_pb2.DeleteScheduleRequest(id="s"), timeout=TIMEOUT,
                                                metadata=_bearer(READER)), denied) == "PERMISSION_DENIED"
    stub.DeleteSchedule(jobwire_pb2.DeleteScheduleRequest(id="s"), timeout=TIMEOUT, metadata=_bearer(ADMIN))


def test_domain_errors_still_come_through_once_authorized(stub: jobwire_pb2_grpc.JobServiceStub) -> None:
    missing = "01890000-0000-7000-8000-000000000000"
    assert _refused(lambda: stub.GetJob(jobwire_pb2.GetJobRequest(id=missing), timeout=TIMEOUT,
                                        metadata=_bearer(READER)), grpc.StatusCode.NOT_FOUND) == "JOB_NOT_FOUND"


def test_health_and_reflection_need_no_token(token_server: ServerProcess) -> None:
    with grpc.insecure_channel(token_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="jobwire.v1.JobService"),
                            timeout=TIMEOUT).status == SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))
        assert "jobwire.v1.JobService" in {s.name for s in reply.list_services_response.service}


def test_unknown_method_needs_a_token(token_server: ServerProcess) -> None:
    with grpc.insecure_channel(token_server.target) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/jobwire.v1.JobService/Nope")
        assert _refused(lambda: call(b"", timeout=TIMEOUT), grpc.StatusCode.UNAUTHENTICATED) == "UNAUTHENTICATED"
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=TIMEOUT, metadata=_bearer(ADMIN))
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobwire_server", "serve", "--listen", f"127.0.0.1:{free_port()}",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read tokens file"),
    ("[[token]\nname=", "not valid TOML"),
    ('[[token]]\nname = "a"\nsha256 = "abc"\nscopes = ["admin"]\n', "sha256 must be 64 hex digits"),
    (f'[[token]]\nname = "a"\nsha256 = "{hash_token("x")}"\nscopes = ["jobs:delete"]\n', "unknown scope"),
    (f'[[token]]\nname = "a"\nsecret = "x"\nsha256 = "{hash_token("x")}"\nscopes = ["admin"]\n', "plain secret"),
    ("", "defines no [[token]]"),
    (f'[[token]]\nname = "a"\nsha256 = "{hash_token("x")}"\nscopes = ["jobs:read"]\nqueues = ["media"]\n',
     "queues limits the 'jobs:work' scope"),
    (f'[[token]]\nname = "a"\nsha256 = "{hash_token("x")}"\nscopes = ["jobs:work"]\nqueues = "media"\n',
     "queues must be a list"),
])
def test_bad_tokens_file_is_a_one_line_start_up_error(tmp_path: Path, content: str | None, message: str) -> None:
    tokens = tmp_path / "tokens.toml"
    if content is not None:
        tokens.write_text(content)
    result = _serve("--db", str(tmp_path / "x.db"), "--tokens-file", str(tokens))
    assert result.returncode == 1
    assert message in result.stderr and str(tokens) in result.stderr
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, issuer: tuple[Pem, ec.EllipticCurvePrivateKey] | None, *, ca: bool = False,
           server: bool = False) -> tuple[Pem, ec.EllipticCurvePrivateKey]:
    """A certificate for `subject` signed by `issuer` (self-signed when None), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_name = x509.load_pem_x509_certificate(issuer[0].cert).subject if issuer else _name(subject)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    elif server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                                        critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                                        critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    pem = Pem(cert.public_bytes(serialization.Encoding.PEM),
              key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    return pem, key


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    stranger_client: Pem  # signed by a CA the server does not trust
    files: dict[str, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = _issue("jobwire test CA", None, ca=True)
    stranger_ca = _issue("stranger CA", None, ca=True)
    server, _ = _issue("localhost", ca, server=True)
    client, _ = _issue("client", ca)
    stranger, _ = _issue("stranger", stranger_ca)
    folder = tmp_path_factory.mktemp("pki")
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca[0].cert)
    files["cert"].write_bytes(server.cert)
    files["key"].write_bytes(server.key)
    return Pki(ca[0], server, client, stranger, files)


TlsServer = Callable[..., ServerProcess]


@pytest.fixture
def start_tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    """Like `start_server`, but waits for SERVING over the given channel credentials."""
    started: list[ServerProcess] = []

    def start(credentials: grpc.ChannelCredentials, **flags: object) -> ServerProcess:
        port = free_port()
        db_path = tmp_path / f"tls-{len(started)}.db"
        args = [sys.executable, "-m", "jobwire_server", "serve", "--listen", f"127.0.0.1:{port}", "--db", str(db_path)]
        for name, value in flags.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        log_path = tmp_path / f"tls-server-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        server = ServerProcess(process, f"127.0.0.1:{port}", db_path, log_path)
        started.append(server)
        try:
            _wait_serving(server, credentials)
        except Exception:
            server.stop(signal.SIGKILL)
            raise RuntimeError(f"TLS server failed to start:\n{server.log()}") from None
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop(timeout=30)


def _wait_serving(server: ServerProcess, credentials: grpc.ChannelCredentials) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with grpc.secure_channel(server.target, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited with {server.process.returncode} before serving")
            with contextlib.suppress(grpc.RpcError):
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0, wait_for_ready=True).status == SERVING:
                    return
    raise TimeoutError(f"server at {server.target} did not serve within {START_TIMEOUT}s")


def _health(target: str, credentials: grpc.ChannelCredentials | None, timeout: float = TIMEOUT) -> int | None:
    """The health status over a fresh channel, or None when the call fails."""
    with (grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return None
        return int(reply.status)


def _tls(pki: Pki, client: Pem | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)
    return grpc.ssl_channel_credentials(root_certificates=pki.ca.cert, private_key=client.key,
                                        certificate_chain=client.cert)


def test_tls_server_serves_tls_clients_only(start_tls_server: TlsServer, pki: Pki) -> None:
    server = start_tls_server(_tls(pki), tls_cert=pki.files["cert"], tls_key=pki.files["key"])
    with grpc.secure_channel(server.target, _tls(pki)) as channel:
        reply = jobwire_pb2_grpc.JobServiceStub(channel).Enqueue(jobwire_pb2.EnqueueRequest(kind="noop"),
                                                                 timeout=TIMEOUT)
        assert reply.job.id
    assert _health(server.target, None, timeout=2.0) is None, "a plaintext client cannot talk to a TLS server"
    # a client that trusts another CA refuses the server's certificate
    assert _health(server.target, grpc.ssl_channel_credentials(root_certificates=_issue("other", None, ca=True)[0]
                                                               .cert), timeout=2.0) is None
    # the certificate names localhost too
    localhost = server.target.replace("127.0.0.1", "localhost")
    assert _health(localhost, _tls(pki)) == SERVING


def test_tls_with_tokens(start_tls_server: TlsServer, pki: Pki, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS_TOML)
    server = start_tls_server(_tls(pki), tls_cert=pki.files["cert"], tls_key=pki.files["key"], tokens_file=tokens)
    with grpc.secure_channel(server.target, _tls(pki)) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        assert _refused(lambda: _enqueue(stub, READER), grpc.StatusCode.PERMISSION_DENIED) == "PERMISSION_DENIED"
        assert _enqueue(stub, WRITER).job.id


def test_mutual_tls_needs_a_client_certificate_from_the_ca(start_tls_server: TlsServer, pki: Pki) -> None:
    server = start_tls_server(_tls(pki, pki.client), tls_cert=pki.files["cert"], tls_key=pki.files["key"],
                              tls_client_ca=pki.files["ca"])
    with grpc.secure_channel(server.target, _tls(pki, pki.client)) as channel:
        reply = jobwire_pb2_grpc.JobServiceStub(channel).Enqueue(jobwire_pb2.EnqueueRequest(kind="noop"),
                                                                 timeout=TIMEOUT)
        assert reply.job.id
    assert _health(server.target, _tls(pki), timeout=2.0) is None, "no client certificate"
    assert _health(server.target, _tls(pki, pki.stranger_client), timeout=2.0) is None, "certificate of another CA"
    assert _health(server.target, None, timeout=2.0) is None, "plaintext"


@pytest.mark.parametrize(("flags", "message"), [
    ({"tls_cert": "missing.pem", "tls_key": "key"}, "cannot read TLS"),
    ({"tls_cert": "cert", "tls_key": "cert"}, "TLS key"),  # a certificate given as the key
    ({"tls_cert": "cert", "tls_key": "key", "tls_client_ca": "missing-ca.pem"}, "cannot read TLS client CA"),
])
def test_bad_certificate_files_are_a_one_line_start_up_error(tmp_path: Path, pki: Pki, flags: dict[str, str],
                                                             message: str) -> None:
    paths = {"cert": str(pki.files["cert"]), "key": str(pki.files["key"])}
    args = ["--db", str(tmp_path / "x.db")]
    for name, value in flags.items():
        args += ["--" + name.replace("_", "-"), paths.get(value, str(tmp_path / value))]
    result = _serve(*args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
