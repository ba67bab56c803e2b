"""The GPU deployment (compose + Dockerfile) checked without Docker: structure, versions, paths."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.pipeline import MODEL_REPOSITORY
from export.spec import SPEC_FILE, ServingSpec
from export.tensorrt import BUILD_SCRIPT, PLAN_FILE
from export.variants import VARIANT_FILES
from gateway.audit import from_settings
from gateway.audit.store import PostgresStore
from gateway.metrics import Metrics
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SPEC = ServingSpec.read(MODEL_REPOSITORY / SPEC_FILE)


def test_triton_service_has_gpu_ports_health_and_repository():
    triton = COMPOSE["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert triton["ports"] == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert "./model_repository:/models:ro" in triton["volumes"]
    command = triton["command"]
    assert "--model-repository=/models" in command
    assert f"--cache-config=local,size={SPEC.response_cache_bytes}" in command
    assert triton["shm_size"]
    assert (ROOT / triton["build"]["dockerfile"]).is_file()


def test_tensorrt_build_service_runs_the_generated_script():
    build = COMPOSE["services"]["trt-build"]
    assert build["profiles"] == ["tensorrt"]
    assert build["command"] == ["bash", f"/models/classifier/{BUILD_SCRIPT}"]
    assert "./model_repository:/models" in build["volumes"]
    assert COMPOSE["services"]["triton"]["depends_on"]["trt-build"] == {
        "condition": "service_completed_successfully",
        "required": False,
    }


def test_container_versions_match_the_embedded_server_and_pins():
    dockerfile = (ROOT / "docker" / "triton.Dockerfile").read_text()
    assert (
        "nvcr.io/nvidia/tritonserver:24.10-py3" in dockerfile
    )  # = tritonserver 2.51, like nvidia-pytriton 0.7.0
    assert COMPOSE["services"]["trt-build"]["image"].endswith(":24.10-py3")  # same TensorRT as the server
    assert '"numpy<2"' in dockerfile
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    tokenizers_pin = next(p for p in pins if p.startswith("tokenizers=="))
    assert tokenizers_pin in dockerfile


def test_every_file_a_gpu_config_names_is_produced_by_export():
    produced = set(VARIANT_FILES.values()) | {PLAN_FILE}
    for rel in ("classifier/config.pbtxt", "classifier/configs/tensorrt.pbtxt"):
        cfg = text_format.Parse((MODEL_REPOSITORY / rel).read_text(), model_config_pb2.ModelConfig())
        assert cfg.default_model_filename in produced, rel
    embedded = (MODEL_REPOSITORY / "classifier" / "configs" / "embedded.pbtxt").read_text()
    model_file = re.search(r'key: "model_file"\s+value: \{ string_value: "([^"]+)" \}', embedded)
    assert model_file and model_file.group(1) in produced


def test_gateway_and_redis_services():
    gateway = COMPOSE["services"]["gateway"]
    env = gateway["environment"]
    assert env["GATEWAY_TRITON_URL"] == "triton:8001"
    assert env["GATEWAY_CACHE_BACKEND"] == "redis" and env["GATEWAY_REDIS_URL"].startswith("redis://redis:")
    assert gateway["depends_on"] == {
        "triton": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    assert gateway["ports"] == ["8080:8080"]
    assert any(
        v.endswith(":/models/labels.json:ro") and v.startswith(f"./model_repository/{SPEC.labels_file}")
        for v in gateway["volumes"]
    )
    assert "redis-cli" in COMPOSE["services"]["redis"]["healthcheck"]["test"]


def test_gateway_image_pins_match_pyproject_and_run_as_non_root():
    dockerfile = (ROOT / "docker" / "gateway.Dockerfile").read_text()
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in (
        "fastapi",
        "pydantic-settings",
        "cachetools",
        "prometheus-client",
        "redis",
        "grpcio",
        "numpy",
        "psycopg",
    ):
        pin = next(p for p in pins if p.split("==")[0].split("[")[0] == name)
        assert f'"{pin}"' in dockerfile, pin
    assert "USER gateway" in dockerfile
    # the non-root user can write the SQLite audit trail (the default path under the app is read-only)
    assert "chown gateway /data" in dockerfile and "GATEWAY_AUDIT_SQLITE_PATH=/data/" in dockerfile
    for copied in re.findall(r"^COPY (.+) \S+/$", dockerfile, re.M):
        for path in copied.split():
            assert (ROOT / path).exists(), path


def test_triton_model_control_apis_need_the_admin_key():
    command = COMPOSE["services"]["triton"]["command"]
    for flag in ("--http-restricted-api=", "--grpc-restricted-protocol="):
        value = next(c for c in command if c.startswith(flag)).removeprefix(flag)
        apis, _, key = value.partition(":")
        assert {"model-repository", "model-config", "shared-memory"} <= set(apis.split(","))
        assert "inference" not in apis and "health" not in apis  # the gateway still infers and checks health
        assert key.startswith("admin-key=${TRITON_ADMIN_KEY:?")  # no default key: compose refuses to start


def _interpolate(value: str, required: str = "set-by-the-operator-0123456789") -> str:
    """Compose's ${VAR:-default} with its default and ${VAR:?message} with a stand-in value."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", required, value)


def test_postgres_service_for_the_audit_trail():
    postgres = COMPOSE["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "ports" not in postgres  # only the compose network reaches it
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg-data" in COMPOSE["volumes"]
    env = postgres["environment"]
    assert env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:-")  # overridable, a default for dev


def test_gateway_audits_to_the_postgres_service_with_a_required_hash_key():
    env = COMPOSE["services"]["gateway"]["environment"]
    pg = COMPOSE["services"]["postgres"]["environment"]
    assert env["GATEWAY_AUDIT_BACKEND"] == "postgres"
    assert env["GATEWAY_AUDIT_HASH_KEY"].startswith("${GATEWAY_AUDIT_HASH_KEY:?")  # no default key
    dsn = urlsplit(_interpolate(env["GATEWAY_AUDIT_DSN"]))
    assert (dsn.scheme, dsn.hostname, dsn.port) == ("postgresql", "postgres", 5432)
    assert dsn.path == f"/{pg['POSTGRES_DB']}"
    assert dsn.username == pg["POSTGRES_USER"] and dsn.password == _interpolate(pg["POSTGRES_PASSWORD"])
    # every GATEWAY_ variable is a setting, and together they make a valid audit trail
    fields = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    values = {k.removeprefix("GATEWAY_").lower(): _interpolate(v) for k, v in env.items()}
    settings = Settings(_env_file=None, **values)
    trail = from_settings(settings, Metrics())
    assert trail is not None and isinstance(trail.store, PostgresStore) and not trail.store_text
