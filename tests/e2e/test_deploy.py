"""The deployment files as an operator uses them: the Dockerfile passes hadolint; each Kubernetes variant
renders with kustomize (kubectl kustomize), validates against the Kubernetes schemas, and keeps the promises
docs/operations.md makes (probes on the health service, a grace period above the drain budget, selectors that
select the pods, secrets that exist, the settings jobwire reads); an overlay that replaces the placeholder
Secret gets its own tokens in the pods."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jobwire_server.config import ServerConfig, env_name, load_config

from tests.conftest import REPO, free_port

KUBECTL = REPO / ".tools" / "bin" / "kubectl"
HADOLINT = Path(sys.executable).parent / "hadolint"
DEPLOY = REPO / "deploy" / "kubernetes"
VARIANTS = ("sqlite", "postgres")
WORKLOAD_KIND = {"sqlite": "StatefulSet", "postgres": "Deployment"}
K8S_VERSIONS = ("1.30.0", "1.37.0")  # as `make deploy-check`
JOB_SERVICE = "jobwire.v1.JobService"
# The HTTP gateway's address setting (issue 15): set ahead in the image and the manifests; every other
# JOBWIRE_* variable they set must be a setting this jobwire reads.
HTTP_LISTEN = "JOBWIRE_HTTP_LISTEN"
TIMEOUT = 300.0
Resource = dict[str, Any]


@pytest.fixture(scope="module")
def kubectl() -> str:
    if not KUBECTL.exists():  # `make test` installs it first (make lint); a lone pytest run installs it here
        subprocess.run(["make", "-s", "kubectl"], cwd=REPO, check=True, timeout=TIMEOUT)
    return str(KUBECTL)


def render(kubectl: str, folder: Path) -> list[Resource]:
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=TIMEOUT,
                            check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[Resource]]:
    return {variant: render(kubectl, DEPLOY / variant) for variant in VARIANTS}


def one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    found = [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[r['metadata']['name'] for r in found]}"
    return found[0]


def workload(resources: list[Resource], variant: str) -> Resource:
    return one(resources, WORKLOAD_KIND[variant], "jobwire")


def container(resources: list[Resource], variant: str) -> Resource:
    containers = workload(resources, variant)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["jobwire"]
    return dict(containers[0])


def plain_env(spec: Resource) -> dict[str, str]:
    return {e["name"]: e["value"] for e in spec.get("env", []) if "value" in e}


# The Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([str(HADOLINT), "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install jobwire\n")
    result = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the `latest` tag
    assert "DL3013" in result.stdout  # an unpinned pip install


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_runs_jobwire_as_a_non_root_user_on_its_volume() -> None:
    steps = dockerfile_instructions()
    runtime = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    assert sum(op == "FROM" for op, _ in steps) == 2  # build and runtime stages
    assert ("USER", "10001:10001") in runtime
    assert ("VOLUME", '["/var/lib/jobwire"]') in runtime
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    assert ("ENTRYPOINT", '["jobwire"]') in runtime and ("CMD", '["serve"]') in runtime
    healthcheck = next(arg for op, arg in runtime if op == "HEALTHCHECK")
    assert healthcheck.endswith('CMD ["jobwire", "health"]')
    exposed = next(arg for op, arg in runtime if op == "EXPOSE").split()
    assert exposed == ["50051", "8080", "9464"]
    env = dict(re.findall(r"(JOBWIRE_\w+)=(\S+)", " ".join(arg for op, arg in runtime if op == "ENV")))
    assert env["JOBWIRE_DB"].startswith("/var/lib/jobwire/")
    assert env["JOBWIRE_LISTEN"] == "0.0.0.0:50051" and env[HTTP_LISTEN] == "0.0.0.0:8080"
    # The image sets no tokens file and does not allow unauthenticated access: the operator chooses.
    assert "JOBWIRE_TOKENS_FILE" not in env and "JOBWIRE_ALLOW_UNAUTHENTICATED" not in env
    unknown = set(env) - {env_name(setting) for setting in ServerConfig.__dataclass_fields__}
    assert not unknown


def test_the_image_refuses_to_serve_beyond_loopback_until_tokens_or_an_opt_out_are_given(tmp_path: Path) -> None:
    """What the image's settings do with nothing added: `jobwire serve` exits with status 2 and says why."""
    env = {"PATH": str(Path(sys.executable).parent), "JOBWIRE_LISTEN": "0.0.0.0:50051",
           "JOBWIRE_DB": str(tmp_path / "jobwire.db")}
    result = subprocess.run([sys.executable, "-m", "jobwire_server", "serve"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0:50051 without authentication" in result.stderr


# The Kubernetes manifests


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_variant_validates_against_the_kubernetes_schemas(rendered: dict[str, list[Resource]], variant: str,
                                                           version: str) -> None:
    kinds = sorted(r["kind"] for r in rendered[variant])
    expected = ["PodDisruptionBudget", "Secret", "Service", WORKLOAD_KIND[variant]]
    if variant == "sqlite":
        expected += ["Service"]  # the StatefulSet's headless Service
    else:
        expected += ["Secret"]  # the database URL
    assert kinds == sorted(expected)
    for resource in rendered[variant]:
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_schema_check_catches_a_misspelt_field(rendered: dict[str, list[Resource]]) -> None:
    broken = yaml.safe_load(yaml.safe_dump(workload(rendered["sqlite"], "sqlite")))
    probe = broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["failureTreshold"] = probe.pop("failureThreshold")
    with pytest.raises(kubernetes_validate.ValidationError, match="failureTreshold"):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_sqlite_variant_is_one_pod_on_a_read_write_once_claim(rendered: dict[str, list[Resource]]) -> None:
    resources = rendered["sqlite"]
    sts = workload(resources, "sqlite")
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["updateStrategy"]["type"] == "RollingUpdate"  # one ordinal: the old pod ends first
    headless = one(resources, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    claims = {t["metadata"]["name"]: t["spec"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert claims["data"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["name"]: m["mountPath"] for m in container(resources, "sqlite")["volumeMounts"]}
    db = plain_env(container(resources, "sqlite"))["JOBWIRE_DB"]
    assert Path(db).parent == Path(mounts["data"])
    assert sts["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 10001  # the claim is writable


def test_postgres_variant_rolls_replicas_one_at_a_time_with_the_url_from_a_secret(
        rendered: dict[str, list[Resource]]) -> None:
    resources = rendered["postgres"]
    deployment = workload(resources, "postgres")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    db = next(e for e in container(resources, "postgres")["env"] if e["name"] == "JOBWIRE_DB")
    ref = db["valueFrom"]["secretKeyRef"]
    secret = one(resources, "Secret", ref["name"])
    assert ref["key"] in secret["data"] and not ref.get("optional")
    assert "volumeClaimTemplates" not in deployment["spec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_ask_the_grpc_health_service(rendered: dict[str, list[Resource]], variant: str) -> None:
    spec = container(rendered[variant], variant)
    assert spec["readinessProbe"]["grpc"] == {"port": 50051, "service": JOB_SERVICE}
    assert spec["startupProbe"]["grpc"] == {"port": 50051, "service": JOB_SERVICE}
    assert spec["livenessProbe"]["grpc"] == {"port": 50051}  # the server as a whole
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports == {"grpc": 50051, "http": 8080, "metrics": 9464}
    env = plain_env(spec)
    assert env["JOBWIRE_LISTEN"] == "0.0.0.0:50051"
    assert env[HTTP_LISTEN] == "0.0.0.0:8080"
    assert env["JOBWIRE_METRICS_LISTEN"] == "0.0.0.0:9464"


def settings_of(spec: Resource, tmp_path: Path) -> Any:
    """The container's settings as jobwire reads them (paths moved into tmp_path, a real tokens file)."""
    env = plain_env(spec)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[[token]]\nname = "ci"\nsha256 = "' + "0" * 64 + '"\nscopes = ["admin"]\n')
    env["JOBWIRE_TOKENS_FILE"] = str(tokens)
    env["JOBWIRE_DB"] = str(tmp_path / "jobwire.db")
    unknown = set(env) - {env_name(setting) for setting in ServerConfig.__dataclass_fields__}
    assert not unknown
    return load_config({}, environ=env)


@pytest.mark.parametrize("variant", VARIANTS)
def test_grace_period_outlasts_prestop_and_the_drain(rendered: dict[str, list[Resource]], variant: str,
                                                     tmp_path: Path) -> None:
    pod = workload(rendered[variant], variant)["spec"]["template"]["spec"]
    spec = container(rendered[variant], variant)
    config = settings_of(spec, tmp_path)
    command = spec["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop >= 1
    # docs/operations.md: terminationGracePeriodSeconds ≥ shutdown_grace + cancel_grace + 10, plus preStop.
    budget = pre_stop + config.shutdown_grace + config.cancel_grace + 10
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= budget, (grace, budget)
    liveness = spec["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace  # NOT_SERVING while draining


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_run_as_the_images_user_with_a_read_only_root(rendered: dict[str, list[Resource]],
                                                          variant: str) -> None:
    pod = workload(rendered[variant], variant)["spec"]["template"]["spec"]
    spec = container(rendered[variant], variant)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # USER in the Dockerfile
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "/tmp" in {m["mountPath"] for m in spec["volumeMounts"]}
    assert set(spec["resources"]["requests"]) == {"cpu", "memory"}
    assert spec["image"] == "jobwire:0.1.0"


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_and_budget_select_the_pods(rendered: dict[str, list[Resource]], variant: str) -> None:
    resources = rendered[variant]
    pod_labels = workload(resources, variant)["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for p in container(resources, variant)["ports"]}
    service = one(resources, "Service", "jobwire")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "grpc": "grpc", "http": "http", "metrics": "metrics"}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    budget = one(resources, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_tokens_come_from_the_secret_at_the_path_jobwire_reads(rendered: dict[str, list[Resource]],
                                                               variant: str) -> None:
    resources = rendered[variant]
    pod = workload(resources, variant)["spec"]["template"]["spec"]
    spec = container(resources, variant)
    volume = next(v for v in pod["volumes"] if v["name"] == "secrets")
    secret = one(resources, "Secret", volume["secret"]["secretName"])
    assert secret["metadata"]["name"].startswith("jobwire-secrets-")  # the generator's hash suffix
    mount = next(m for m in spec["volumeMounts"] if m["name"] == "secrets")
    assert mount["readOnly"] is True
    paths = {item["key"]: f"{mount['mountPath']}/{item['path']}" for item in volume["secret"]["items"]}
    assert plain_env(spec)["JOBWIRE_TOKENS_FILE"] == paths["tokens.toml"]
    assert "tokens.toml" in secret["data"]
    webhook = next(e for e in spec["env"] if e["name"] == "JOBWIRE_WEBHOOK_SECRET")["valueFrom"]["secretKeyRef"]
    assert webhook == {"name": secret["metadata"]["name"], "key": "webhook-secret", "optional": True}


def test_the_placeholder_tokens_file_stops_the_server_from_starting(tmp_path: Path) -> None:
    placeholder = DEPLOY / "base" / "tokens.placeholder.toml"
    args = [sys.executable, "-m", "jobwire_server", "serve", "--listen", f"127.0.0.1:{free_port()}",
            "--db", str(tmp_path / "jobwire.db"), "--tokens-file", str(placeholder)]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 1
    assert "defines no [[token]] tables" in result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_overlay_replaces_the_placeholder_secret(kubectl: str, rendered: dict[str, list[Resource]],
                                                    variant: str, tmp_path: Path) -> None:
    """docs/operations.md's overlay: the pods get the operator's tokens and webhook secret, under a new name."""
    tokens = '[[token]]\nname = "ci"\nsha256 = "' + "a" * 64 + '"\nscopes = ["jobs:read", "jobs:write"]\n'
    (tmp_path / "tokens.toml").write_text(tokens)
    (tmp_path / "kustomization.yaml").write_text(
        "resources:\n"
        f"  - {os.path.relpath(DEPLOY / variant, tmp_path)}\n"
        "secretGenerator:\n"
        "  - name: jobwire-secrets\n"
        "    behavior: replace\n"
        "    files: [tokens.toml]\n"
        "    literals: [webhook-secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]\n"
        "images:\n"
        "  - {name: jobwire, newName: registry.internal/jobwire, newTag: 0.1.0}\n")
    resources = render(kubectl, tmp_path)
    pod = workload(resources, variant)["spec"]["template"]["spec"]
    name = next(v for v in pod["volumes"] if v["name"] == "secrets")["secret"]["secretName"]
    placeholder = next(v for v in workload(rendered[variant], variant)["spec"]["template"]["spec"]["volumes"]
                       if v["name"] == "secrets")["secret"]["secretName"]
    assert name != placeholder  # a new hash: the pods roll when the secret changes
    secret = one(resources, "Secret", name)
    assert base64.b64decode(secret["data"]["tokens.toml"]).decode() == tokens
    assert base64.b64decode(secret["data"]["webhook-secret"]).decode().startswith("whsec_")
    assert container(resources, variant)["image"] == "registry.internal/jobwire:0.1.0"
