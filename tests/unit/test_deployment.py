"""The GPU deployment (compose + Dockerfile) checked without Docker: structure, versions, paths."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from contract.spec import SPEC_FILE, ServingSpec
from export.packaging.tensorrt import BUILD_SCRIPT, PLAN_FILE
from export.packaging.variants import VARIANT_FILES
from export.pipeline import MODEL_REPOSITORY
from gateway.backends.audit.store import PostgresStore
from gateway.metrics import Metrics
from gateway.services import audit_trail_from
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SPEC = ServingSpec.read(MODEL_REPOSITORY / SPEC_FILE)
GATEWAY_DOCKERFILE = ROOT / "docker" / "gateway.Dockerfile"
# The files that deploy the stack. None wires in a model file: the manifest travels inside the repository.
DEPLOYMENT_FILES = [
    ROOT / "docker-compose.yml",
    *sorted((ROOT / "docker").glob("*Dockerfile")),
    *sorted((ROOT / "deploy" / "k8s").glob("*.yaml")),
]
# The labels file retired by the model manifest (contract/manifest.py), and its setting.
RETIRED = ("labels.json", "GATEWAY_LABELS_FILE", "labels_file")


def _copies(dockerfile: str) -> list[tuple[list[str], str]]:
    """Each COPY instruction's sources and destination (no flags, no JSON form in these files)."""
    copies = []
    for line in re.findall(r"^COPY\s+(.+?)\s*$", dockerfile, re.M):
        *sources, dest = line.split()
        assert sources and not any(s.startswith("--") for s in sources), line
        copies.append((sources, dest))
    return copies


def _imports(package: str) -> set[str]:
    """The top-level modules outside the standard library that `package` imports (any of its modules)."""
    found: set[str] = set()
    for module in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names)


def _first_party_imports(package: str) -> set[str]:
    """The repository's own top-level packages that `package` imports."""
    return _imports(package) & {p.parent.name for p in ROOT.glob("*/__init__.py")}


def test_triton_service_has_gpu_ports_health_and_repository():
    triton = COMPOSE["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert triton["ports"] == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    # The whole repository, not single files: every model reads the manifest.json copy in its own
    # version directory (tokenizer/1, classifier/1, postprocess/1), all inside this mount.
    assert triton["volumes"] == ["./model_repository:/models:ro"]
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
    embedded = text_format.Parse(
        (MODEL_REPOSITORY / "classifier" / "configs" / "embedded.pbtxt").read_text(),
        model_config_pb2.ModelConfig(),
    )
    assert VARIANT_FILES[embedded.parameters["variant"].string_value] in produced


def test_gateway_and_redis_services():
    gateway = COMPOSE["services"]["gateway"]
    env = gateway["environment"]
    assert env["GATEWAY_TRITON_URL"] == "triton:8001"
    assert env["GATEWAY_CACHE_BACKEND"] == "redis" and env["GATEWAY_REDIS_URL"].startswith("redis://redis:")
    assert gateway["depends_on"] == {
        "triton": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "redis-learners": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    assert gateway["ports"] == ["8080:8080"]
    # The gateway reads no model file: labels from contract/, the model version from Triton's answers.
    assert not any("model_repository" in v for v in gateway.get("volumes", []))
    assert "GATEWAY_LABELS_FILE" not in env
    assert "redis-cli" in COMPOSE["services"]["redis"]["healthcheck"]["test"]


def redis_flag(command: list[str], flag: str) -> str | None:
    """The value after ``flag`` in a redis-server command line (None when absent)."""
    return command[command.index(flag) + 1] if flag in command else None


def test_learner_histories_live_in_a_redis_that_never_evicts_and_persists():
    env = COMPOSE["services"]["gateway"]["environment"]
    learners = urlsplit(env["GATEWAY_LEARNER_REDIS_URL"])
    cache = urlsplit(env["GATEWAY_REDIS_URL"])
    assert env["GATEWAY_TRAJECTORY_BACKEND"] == "redis"
    assert learners.hostname != cache.hostname  # its own instance: eviction policies are per instance
    store = COMPOSE["services"][learners.hostname]["command"]
    assert redis_flag(store, "--maxmemory-policy") == "noeviction"
    assert redis_flag(store, "--appendonly") == "yes"
    assert any(v.endswith(":/data") for v in COMPOSE["services"][learners.hostname]["volumes"])
    # the cache's Redis stays a cache
    assert redis_flag(COMPOSE["services"][cache.hostname]["command"], "--maxmemory-policy") == "allkeys-lru"
    settings = Settings(
        _env_file=None,
        **{k.removeprefix("GATEWAY_").lower(): v for k, v in env.items() if "${" not in v},
        rate_limit=env["GATEWAY_RATE_LIMIT"].split(":-")[1].rstrip("}"),
    )
    assert settings.key_rate_limit() == "600/minute"


def test_gateway_image_pins_match_pyproject_and_run_as_non_root():
    dockerfile = GATEWAY_DOCKERFILE.read_text()
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
        "limits",
    ):
        pin = next(p for p in pins if p.split("==")[0].split("[")[0] == name)
        assert f'"{pin}"' in dockerfile, pin
    assert "USER gateway" in dockerfile
    # the non-root user can write the SQLite audit trail (the default path under the app is read-only)
    assert "chown gateway /data" in dockerfile and "GATEWAY_AUDIT_SQLITE_PATH=/data/" in dockerfile
    copies = _copies(dockerfile)
    assert copies
    for sources, _ in copies:
        for path in sources:
            assert (ROOT / path).exists(), path


def test_gateway_image_copies_contract_and_not_export():
    copies = _copies(GATEWAY_DOCKERFILE.read_text())
    copied = {source.split("/")[0] for sources, _ in copies for source in sources}
    assert ("contract/", "contract/") in [(s, d) for sources, d in copies for s in sources]
    assert "export" not in copied, "the gateway image must not contain export/"
    # Exactly the repository packages the gateway imports are in the image (export/ is not one of them).
    imported = _first_party_imports("gateway")
    assert "export" not in imported, "the gateway must not import export.*"
    assert copied == imported | {"gateway"}, (copied, imported)
    # contract/ is stdlib-only: the image's pip pins need nothing for it.
    assert _imports("contract") <= {"contract"}


def test_contract_is_a_packaged_package():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert "contract" in packages
    for name in _first_party_imports("gateway"):
        assert name in packages, f"the gateway imports {name}, which the wheel would not contain"


def test_the_wheel_lists_every_package_and_its_data_files():
    """setuptools builds the wheel from explicit lists: a new subpackage or a moved data folder must be
    named there, or an installed (non-editable) gateway would miss it."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in setup["packages"]
        if "." not in top
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert set(setup["packages"]) == on_disk
    for package, patterns in setup["package-data"].items():
        folder = ROOT.joinpath(*package.split("."))
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: {pattern} matches no file"


def test_no_labels_file_is_wired_into_any_deployment():
    assert len(DEPLOYMENT_FILES) > 3
    for path in DEPLOYMENT_FILES:
        text = path.read_text(encoding="utf-8")
        for retired in RETIRED:
            assert retired not in text, f"{path.relative_to(ROOT)} still mentions {retired}"


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
    trail = audit_trail_from(settings, Metrics())
    assert trail is not None and isinstance(trail.store, PostgresStore) and not trail.store_text
