"""The Kubernetes manifests (deploy/k8s) checked without a cluster: schemas, kustomization, wiring.

Every document is validated against the Kubernetes 1.30 OpenAPI schemas bundled with
kubernetes-validate in strict mode (unknown fields are errors); the rest checks what a schema cannot:
that names, ports, selectors, settings and users agree with each other and with the code and images.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from kubernetes_validate.utils import all_versions
from tritonclient.grpc import model_config_pb2

from gateway.core.tenants import keyring_from
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"
KUSTOMIZATION = "kustomization.yaml"
SECRET_EXAMPLE = "secret.example.yaml"
NAMESPACE = "goemotions"

Doc = dict[str, Any]


def _load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# Every *.yaml here but the kustomization (a kustomize file, not a Kubernetes object).
MANIFEST_FILES = sorted(p for p in K8S.glob("*.yaml") if p.name != KUSTOMIZATION)
DOCS: dict[str, list[Doc]] = {p.name: _load(p) for p in MANIFEST_FILES}
KUSTOMIZE: Doc = yaml.safe_load((K8S / KUSTOMIZATION).read_text(encoding="utf-8"))
# What `kubectl apply -k` creates (the Secrets example is not part of it).
APPLIED: list[Doc] = [doc for name, docs in DOCS.items() if name != SECRET_EXAMPLE for doc in docs]


def _get(kind: str, name: str, docs: list[Doc] = APPLIED) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _container(deployment: Doc, name: str | None = None) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    name = name or deployment["metadata"]["name"]
    return next(c for c in containers if c["name"] == name)


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def _pod_labels(deployment: Doc) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    assert "matchExpressions" not in selector, "only matchLabels is understood by these checks"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _container_port(deployment: Doc, port: int | str) -> int:
    """A probe's or Service's port (name or number) resolved against the pod's container ports."""
    ports = [p for c in deployment["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
    for p in ports:
        if port in (p.get("name"), p["containerPort"]):
            return int(p["containerPort"])
    raise AssertionError(f"port {port!r} is not a container port of {deployment['metadata']['name']}")


def _volume(deployment: Doc, container: Doc, path: str) -> tuple[Doc, Doc]:
    """The volumeMount that holds file/dir `path` (deepest mount wins) and its volume."""
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert mounts, f"nothing is mounted at {path}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return mount, volumes[mount["name"]]


# --- schemas ---------------------------------------------------------------------------------------


def test_the_kubernetes_version_is_bundled():
    # validate() silently falls back to the newest bundled version not above the one asked for.
    assert K8S_VERSION in all_versions()


SCHEMA_CASES = [
    pytest.param(doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}")
    for name, docs in DOCS.items()
    for doc in docs
]


@pytest.mark.parametrize("doc", SCHEMA_CASES)
def test_every_document_validates_strictly(doc: Doc):
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == "1.30"


def test_strict_validation_rejects_an_unknown_field():
    # Guards the test above against a validator that accepts anything.
    bad = copy.deepcopy(_get("Deployment", "gateway"))
    bad["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {"httpGet": {"port": 8080}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_there_are_manifests_and_each_file_has_documents():
    assert {"namespace.yaml", "triton.yaml", "gateway.yaml", "redis.yaml", "networkpolicy.yaml"} <= set(DOCS)
    assert SECRET_EXAMPLE in DOCS
    for name, docs in DOCS.items():
        assert docs, f"{name} has no documents"


# --- kustomization ---------------------------------------------------------------------------------


def test_kustomization_lists_exactly_the_manifests_that_exist():
    assert KUSTOMIZE["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert KUSTOMIZE["kind"] == "Kustomization"
    resources = KUSTOMIZE["resources"]
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    assert set(resources) == set(DOCS) - {SECRET_EXAMPLE}


def test_kustomization_namespace_and_common_labels():
    assert KUSTOMIZE["namespace"] == NAMESPACE
    pairs = [entry["pairs"] for entry in KUSTOMIZE["labels"]]
    assert {"app.kubernetes.io/part-of": "goemotions"} in pairs
    # Selectors are immutable on Deployments: the common label must stay out of them.
    assert all(entry.get("includeSelectors") is not True for entry in KUSTOMIZE["labels"])
    namespace = _get("Namespace", NAMESPACE)
    assert "namespace" not in namespace["metadata"]


def test_kustomization_image_tags_match_the_manifests():
    # An unquoted tag such as 24.10 would be read as the number 24.1.
    images = {
        c["image"].rsplit(":", 1)[0]: c["image"].rsplit(":", 1)[1]
        for d in APPLIED
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    for entry in KUSTOMIZE.get("images", []):
        assert entry["name"] in images, f"kustomization rewrites an image no manifest uses: {entry['name']}"
        if "newTag" in entry:
            assert entry["newTag"] == images[entry["name"]]


def test_every_namespaced_object_names_the_namespace():
    for docs in DOCS.values():
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


def test_no_real_secret_is_applied():
    assert not [d["metadata"]["name"] for d in APPLIED if d["kind"] == "Secret"]
    for secret in DOCS[SECRET_EXAMPLE]:
        assert secret["kind"] == "Secret"
        assert all("REPLACE-ME" in v for v in secret["stringData"].values())


# --- Triton ----------------------------------------------------------------------------------------

TRITON = _get("Deployment", "triton")
TRITON_POD = TRITON["spec"]["template"]["spec"]
TRITON_C = _container(TRITON)
TRITON_ENV = _env(TRITON_C)


def test_triton_image_is_the_compose_image():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert TRITON_C["image"] == compose["services"]["triton"]["image"] == "goemotions-triton:24.10"


def test_triton_requests_a_gpu_on_the_gpu_pool():
    assert int(TRITON_C["resources"]["limits"]["nvidia.com/gpu"]) == 1
    tolerations = TRITON_POD["tolerations"]
    assert any(
        t["key"] == "nvidia.com/gpu"
        and t["effect"] == "NoSchedule"
        and (t.get("operator") == "Exists" or "value" in t)
        for t in tolerations
    )
    assert TRITON_POD["nodeSelector"], "no node selector for the GPU pool"


def test_triton_probes():
    ready, live, startup = (TRITON_C[k] for k in ("readinessProbe", "livenessProbe", "startupProbe"))
    assert ready["httpGet"]["path"] == "/v2/health/ready"
    assert _container_port(TRITON, ready["httpGet"]["port"]) == 8000
    assert live["httpGet"]["path"] == "/v2/health/live"
    assert _container_port(TRITON, live["httpGet"]["port"]) == 8000
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    # Model download and load: at least 5 minutes before liveness starts counting.
    assert startup["failureThreshold"] * startup.get("periodSeconds", 10) >= 300


def test_triton_command_matches_compose_and_reads_the_repository_from_object_storage():
    assert TRITON_C["command"] == ["tritonserver"]
    args = TRITON_C["args"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]["command"]
    for flag in compose:
        if flag.startswith(("--cache-config=", "--exit-timeout-secs=")):
            assert flag in args
    assert "--model-repository=$(MODEL_REPOSITORY)" in args
    ref = TRITON_ENV["MODEL_REPOSITORY"]["valueFrom"]["configMapKeyRef"]
    config = _get("ConfigMap", ref["name"])
    assert config["data"][ref["key"]].startswith("s3://")
    # --exit-timeout-secs must fit in the pod's grace period.
    exit_timeout = int(next(a for a in args if a.startswith("--exit-timeout-secs=")).split("=")[1])
    assert TRITON_POD["terminationGracePeriodSeconds"] > exit_timeout


@pytest.mark.parametrize("flag", ["--http-restricted-api", "--grpc-restricted-protocol"])
def test_triton_restricted_apis_need_the_admin_key_from_the_secret(flag: str):
    values = [a.split("=", 1)[1] for a in TRITON_C["args"] if a.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} missing or repeated"
    apis, restriction = values[0].rsplit(":", 1)  # <api1>,<api2>:<key>=<value>
    assert {"model-repository", "model-config"} <= set(apis.split(","))
    assert not {"inference", "health"} & set(apis.split(",")), "the gateway and the probes need these open"
    header, value = restriction.split("=", 1)
    assert header == "admin-key"
    match = re.fullmatch(r"\$\((\w+)\)", value)
    assert match, "the key must come from the environment, not be written into the manifest"
    ref = TRITON_ENV[match.group(1)]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "triton-admin"
    assert not ref.get("optional", False)
    example = _get("Secret", ref["name"], DOCS[SECRET_EXAMPLE])
    assert ref["key"] in example["stringData"]


def test_every_variable_reference_is_defined():
    # Kubernetes leaves an undefined $(NAME) in place literally, so a typo would pass unnoticed.
    for deployment in (d for d in APPLIED if d["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            defined = set(_env(container))
            texts = container.get("command", []) + container.get("args", [])
            texts += [e["value"] for e in container.get("env", []) if "value" in e]
            for text in texts:
                for name in re.findall(r"\$\((\w+)\)", text):
                    assert name in defined, f"{deployment['metadata']['name']}: $({name}) is not defined"


def test_triton_shared_memory_and_nothing_mounted_beside_the_downloaded_models():
    _, shm = _volume(TRITON, TRITON_C, "/dev/shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    # Triton downloads each model from S3 into $TRITON_AWS_MOUNT_DIRECTORY/folderXXXXXX, manifest.json
    # included (each model reads the copy in its own version directory): only the cache is mounted there.
    cache_dir = TRITON_ENV["TRITON_AWS_MOUNT_DIRECTORY"]["value"]
    mount, cache = _volume(TRITON, TRITON_C, f"{cache_dir}/folder0/postprocess/1/manifest.json")
    assert mount["mountPath"] == cache_dir and "subPath" not in mount
    assert "emptyDir" in cache
    assert not [m for m in TRITON_C["volumeMounts"] if m["mountPath"].startswith(cache_dir.rstrip("/") + "/")]


MODEL_CONFIGS = sorted((ROOT / "model_repository").glob("*/config*.pbtxt")) + sorted(
    (ROOT / "model_repository").glob("*/configs/*.pbtxt")
)


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "model_repository")))
def test_no_model_reads_a_file_outside_its_own_directory(path: Path):
    # From S3 every model lands in its own folderXXXXXX: a parameter such as "../labels.json" would
    # point at nothing there (the reason the labels ConfigMap once existed).
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    for key, value in config.parameters.items():
        assert ".." not in value.string_value.split("/"), f"{key}: {value.string_value}"
        assert not value.string_value.endswith("labels.json"), f"{key}: {value.string_value}"


def test_model_repository_upload_keeps_the_manifest_copies():
    # `aws s3 sync model_repository/ ...` must carry every model's manifest.json: no --exclude matches it.
    texts = [
        (K8S / "triton.yaml").read_text(encoding="utf-8"),
        (K8S / "README.md").read_text(encoding="utf-8"),
    ]
    syncs = [line for text in texts for line in text.splitlines() if "aws s3 sync model_repository/" in line]
    assert syncs
    for line in syncs:
        for pattern in re.findall(r"--exclude\s+'([^']+)'", line):
            for name in ("manifest.json", "postprocess/1/manifest.json", "tokenizer/1/manifest.json"):
                assert not fnmatch.fnmatchcase(name, pattern), f"{pattern} drops {name}"


def test_triton_runs_as_the_images_non_root_user():
    pod, ctx = TRITON_POD["securityContext"], TRITON_C["securityContext"]
    assert pod["runAsUser"] == 1000  # triton-server in the NGC image
    assert pod["runAsNonRoot"] is True
    assert ctx["allowPrivilegeEscalation"] is False


# --- gateway ---------------------------------------------------------------------------------------

GATEWAY = _get("Deployment", "gateway")
GATEWAY_POD = GATEWAY["spec"]["template"]["spec"]
GATEWAY_C = _container(GATEWAY)
GATEWAY_ENV = _env(GATEWAY_C)


def test_gateway_env_names_are_settings_fields():
    prefix = Settings.model_config.get("env_prefix")
    assert prefix == "GATEWAY_"
    names = [n for n in GATEWAY_ENV if n.startswith(prefix)]
    assert names
    for name in names:
        assert name.removeprefix(prefix).lower() in Settings.model_fields, f"{name} is not a gateway setting"
    assert set(GATEWAY_ENV) == set(names), "an env var without the GATEWAY_ prefix does nothing"


def test_gateway_env_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch):
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    for name, entry in GATEWAY_ENV.items():
        monkeypatch.setenv(name, entry["value"])
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.triton_url == "triton:8001"
    assert settings.cache_backend == "redis"
    assert settings.trajectory_backend == "redis"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.learner_redis_url == "redis://redis-learners:6379/0"
    assert settings.key_rate_limit() == "600/minute"
    assert settings.api_keys_file is not None
    assert settings.expected_model_version is None  # optional; a rollout may pin it


def test_gateway_reaches_triton_and_redis_through_their_services():
    host, port = GATEWAY_ENV["GATEWAY_TRITON_URL"]["value"].rsplit(":", 1)
    triton_svc = _get("Service", host)
    grpc = next(p for p in triton_svc["spec"]["ports"] if p["port"] == int(port))
    assert _container_port(TRITON, grpc["targetPort"]) == 8001
    match = re.fullmatch(r"redis://([\w.-]+):(\d+)/\d+", GATEWAY_ENV["GATEWAY_REDIS_URL"]["value"])
    assert match
    redis_svc = _get("Service", match.group(1))
    redis_port = next(p for p in redis_svc["spec"]["ports"] if p["port"] == int(match.group(2)))
    assert _container_port(_get("Deployment", "redis"), redis_port["targetPort"]) == 6379


def _redis_flag(container: Doc, flag: str) -> str | None:
    args = container["command"] + container["args"]
    return args[args.index(flag) + 1] if flag in args else None


def _learner_store() -> Doc:
    """The Deployment behind GATEWAY_LEARNER_REDIS_URL's Service."""
    match = re.fullmatch(r"redis://([\w.-]+):(\d+)/\d+", GATEWAY_ENV["GATEWAY_LEARNER_REDIS_URL"]["value"])
    assert match
    service = _get("Service", match.group(1))
    port = next(p for p in service["spec"]["ports"] if p["port"] == int(match.group(2)))
    [deployment] = [
        d
        for d in APPLIED
        if d["kind"] == "Deployment"
        and _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(d))
    ]
    assert _container_port(deployment, port["targetPort"]) == 6379
    return deployment


def test_learner_histories_live_in_their_own_redis_that_never_evicts_and_persists():
    store = _learner_store()
    assert store is not _get("Deployment", "redis")  # eviction policies are per instance
    container = _container(store)
    assert _redis_flag(container, "--maxmemory-policy") == "noeviction"
    assert _redis_flag(container, "--appendonly") == "yes"
    _, volume = _volume(store, container, "/data")
    claim = _get("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and store["spec"]["replicas"] == 1
    assert store["spec"]["strategy"]["type"] == "Recreate"  # never two writers on the volume
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis-learners"]
    assert (
        container["image"] == compose["image"]
        and container["command"] + container["args"] == compose["command"]
    )
    # the cache's Redis stays a cache
    assert _redis_flag(_container(_get("Deployment", "redis")), "--maxmemory-policy") == "allkeys-lru"


def test_network_policy_lets_only_the_gateway_reach_the_learner_store():
    policy = _policy_for(_learner_store())
    all_peers = [peer for rule in policy["spec"]["ingress"] for peer in rule.get("from") or [{}]]
    assert _only_gateway(all_peers) and _only_gateway(_peers_for_port(policy, 6379))


def test_the_gateway_rate_limit_is_counted_in_redis():
    assert GATEWAY_ENV["GATEWAY_RATE_LIMIT"]["value"] == "600/minute"
    assert "GATEWAY_RATE_LIMIT_BACKEND" not in GATEWAY_ENV  # auto: Redis, as GATEWAY_REDIS_URL is set


def test_gateway_mounts_no_model_file_and_its_api_keys_file():
    # Labels come from contract/ in the image and the model version from Triton's answers.
    assert "GATEWAY_LABELS_FILE" not in GATEWAY_ENV
    assert not [v for v in GATEWAY_POD["volumes"] if "configMap" in v]
    assert not [m for m in GATEWAY_C["volumeMounts"] if m["mountPath"].startswith("/models")]

    keys_file = GATEWAY_ENV["GATEWAY_API_KEYS_FILE"]["value"]
    mount, volume = _volume(GATEWAY, GATEWAY_C, keys_file)
    assert volume["secret"]["secretName"] == "gateway-api-keys"
    relative = keys_file.removeprefix(mount["mountPath"].rstrip("/") + "/")
    item = next(i for i in volume["secret"]["items"] if i["path"] == relative)
    assert item["key"] in _get("Secret", "gateway-api-keys", DOCS[SECRET_EXAMPLE])["stringData"]


def test_an_optional_key_secret_needs_a_gateway_that_tolerates_a_missing_file(tmp_path: Path):
    # An optional Secret volume that is absent leaves GATEWAY_API_KEYS_FILE pointing at nothing.
    volume = _volume(GATEWAY, GATEWAY_C, GATEWAY_ENV["GATEWAY_API_KEYS_FILE"]["value"])[1]
    settings = Settings(_env_file=None, api_keys_file=tmp_path / "missing")  # type: ignore[call-arg]
    try:
        keyring_from(settings)  # what the gateway reads at start
        tolerates_missing = True
    except OSError:
        tolerates_missing = False
    if volume["secret"].get("optional", False):
        assert tolerates_missing, "the gateway stops on a missing key file: the Secret must be required"


def test_gateway_runs_as_the_dockerfiles_user():
    dockerfile = (ROOT / "docker" / "gateway.Dockerfile").read_text()
    useradd = re.search(r"useradd\b[^\n]*--uid\s+(\d+)\s+(\S+)", dockerfile)
    user = re.search(r"^USER\s+(\S+)\s*$", dockerfile, re.MULTILINE)
    assert useradd and user
    assert user.group(1) == useradd.group(2)
    uid = int(useradd.group(1))
    assert uid == 10001
    pod, ctx = GATEWAY_POD["securityContext"], GATEWAY_C["securityContext"]
    assert ctx.get("runAsUser", pod.get("runAsUser")) == uid
    assert ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is True
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]


def test_gateway_probes_port_and_resources():
    assert _container_port(GATEWAY, "http") == 8080
    assert GATEWAY_C["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert GATEWAY_C["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert _container_port(GATEWAY, GATEWAY_C[probe]["httpGet"]["port"]) == 8080
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(GATEWAY_C["resources"][kind])
    assert GATEWAY["spec"]["replicas"] == 2


def test_hpa_scales_the_gateway_on_cpu():
    hpa = _get("HorizontalPodAutoscaler", "gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert _get(target["kind"], target["name"]) is GATEWAY
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    # Utilization is relative to the request: every container must request CPU.
    for container in GATEWAY_POD["containers"]:
        assert container["resources"]["requests"]["cpu"]
    assert GATEWAY["spec"]["replicas"] >= hpa["spec"]["minReplicas"]


def test_pdb_keeps_a_gateway_up():
    pdb = _get("PodDisruptionBudget", "gateway")
    assert pdb["spec"]["minAvailable"] == 1
    assert _selects(pdb["spec"]["selector"], _pod_labels(GATEWAY))


# --- all workloads ---------------------------------------------------------------------------------

DEPLOYMENTS = [d for d in APPLIED if d["kind"] == "Deployment"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["metadata"]["name"])
def test_deployment_selector_matches_its_pods(deployment: Doc):
    assert _selects(deployment["spec"]["selector"], _pod_labels(deployment))


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["metadata"]["name"])
def test_pods_meet_the_restricted_pod_security_profile(deployment: Doc):
    pod = deployment["spec"]["template"]["spec"]
    pod_ctx = pod.get("securityContext", {})
    for container in pod["containers"]:
        ctx = container.get("securityContext", {})
        assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True
        assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 1)) != 0
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert not ctx.get("capabilities", {}).get("add")
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault"


def test_redis_matches_compose_and_runs_as_its_user():
    redis = _get("Deployment", "redis")
    container = _container(redis)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]
    assert container["image"] == compose["image"] == "redis:7.4-alpine"
    assert container["command"] + container["args"] == compose["command"]
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert redis["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 999


@pytest.mark.parametrize(
    "service", [d for d in APPLIED if d["kind"] == "Service"], ids=lambda d: d["metadata"]["name"]
)
def test_service_selects_one_deployment_and_targets_its_container_ports(service: Doc):
    selected = [
        d for d in DEPLOYMENTS if _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(d))
    ]
    assert len(selected) == 1, f"service {service['metadata']['name']} selects {len(selected)} deployments"
    for port in service["spec"]["ports"]:
        _container_port(selected[0], port.get("targetPort", port["port"]))


def test_service_ports():
    triton = {p["name"]: p["port"] for p in _get("Service", "triton")["spec"]["ports"]}
    assert triton == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert _get("Service", "triton")["spec"].get("type", "ClusterIP") == "ClusterIP"
    [gateway] = _get("Service", "gateway")["spec"]["ports"]
    assert gateway["port"] == 80 and _container_port(GATEWAY, gateway["targetPort"]) == 8080
    [redis] = _get("Service", "redis")["spec"]["ports"]
    assert redis["port"] == 6379


@pytest.mark.parametrize(("deployment", "port"), [(TRITON, 8002), (GATEWAY, 8080)], ids=["triton", "gateway"])
def test_prometheus_scrape_annotations(deployment: Doc, port: int):
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert _container_port(deployment, port) == port


def _configmap_refs(deployment: Doc) -> set[str]:
    pod = deployment["spec"]["template"]["spec"]
    names = {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
    for container in pod["containers"]:
        for entry in container.get("env", []):
            ref = entry.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                names.add(ref["name"])
        names |= {e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e}
    return names


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["metadata"]["name"])
def test_every_configmap_a_pod_uses_is_applied(deployment: Doc):
    # No ConfigMap is made by hand any more (the labels one is gone): `kubectl apply -k` creates them all.
    for name in _configmap_refs(deployment):
        _get("ConfigMap", name)


def test_the_labels_file_and_its_configmap_are_gone():
    for path in [*MANIFEST_FILES, K8S / KUSTOMIZATION, K8S / "README.md"]:
        text = path.read_text(encoding="utf-8")
        for retired in ("labels.json", "goemotions-labels", "GATEWAY_LABELS_FILE"):
            assert retired not in text, f"{path.name} still mentions {retired}"


# --- network policies ------------------------------------------------------------------------------

POLICIES = [d for d in APPLIED if d["kind"] == "NetworkPolicy"]


def _policy_for(deployment: Doc) -> Doc:
    found = [p for p in POLICIES if _selects(p["spec"]["podSelector"], _pod_labels(deployment))]
    assert len(found) == 1, f"{len(found)} policies select {deployment['metadata']['name']}"
    assert "Ingress" in found[0]["spec"]["policyTypes"]
    return found[0]


def _peers_for_port(policy: Doc, port: int) -> list[Doc]:
    """Every peer allowed on `port`; an empty peer ({}) means "from anywhere"."""
    peers: list[Doc] = []
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports is None or any(p.get("port") in (None, port) for p in ports):
            peers += rule.get("from") or [{}]
    return peers


def _only_gateway(peers: list[Doc]) -> bool:
    gateway = _pod_labels(GATEWAY)
    return bool(peers) and all(
        set(peer) == {"podSelector"}  # same namespace only, no ipBlock, no namespaceSelector
        and peer["podSelector"].get("matchLabels")
        and _selects(peer["podSelector"], gateway)
        for peer in peers
    )


def test_network_policy_lets_only_the_gateway_call_triton():
    policy = _policy_for(TRITON)
    assert not _selects(policy["spec"]["podSelector"], _pod_labels(GATEWAY))
    assert _only_gateway(_peers_for_port(policy, 8001))
    assert _only_gateway(_peers_for_port(policy, 8000))


def test_network_policy_lets_prometheus_scrape_triton():
    peers = _peers_for_port(_policy_for(TRITON), 8002)
    assert {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    } in peers
    for peer in peers:
        assert peer.get("podSelector", {}).get("matchLabels"), "metrics must not be open to every pod"


def test_network_policy_lets_only_the_gateway_reach_redis():
    policy = _policy_for(_get("Deployment", "redis"))
    assert _only_gateway(_peers_for_port(policy, 6379))
    all_peers = [peer for rule in policy["spec"]["ingress"] for peer in rule.get("from") or [{}]]
    assert _only_gateway(all_peers)
