"""The embedded Triton is locked down as the containers are: its model-repository (load/unload),
model-config, shared-memory, trace and logging APIs refuse requests without the admin key, over HTTP and
gRPC; inference, health and metadata stay open; it binds to loopback, also when the launcher's gateway
binds every address; and the key is never logged nor handed to the gateway."""

from __future__ import annotations

import ipaddress
import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from server.embedded import ADMIN_HEADER, ADMIN_KEY_ENV, EmbeddedTriton
from server.stack import Stack, launcher_ports
from tests.support.stack import E2E_LABELS, MODEL, grpc_infer, log_text, tritonserver_of

pytestmark = pytest.mark.e2e

# (method, path) of each restricted HTTP API that is safe to call with the key (it changes nothing).
RESTRICTED_READS = [
    ("POST", "/v2/repository/index"),  # model-repository
    ("GET", f"/v2/models/{MODEL}/config"),  # model-config
    ("GET", "/v2/systemsharedmemory/status"),  # shared-memory
    ("GET", "/v2/trace/setting"),  # trace
    ("GET", "/v2/logging"),  # logging
]
# Calls that would change the server: only ever sent without the key.
RESTRICTED_WRITES = [
    ("POST", f"/v2/repository/models/{MODEL}/unload"),
    ("POST", f"/v2/repository/models/{MODEL}/load"),
    ("POST", "/v2/logging"),
    ("POST", "/v2/trace/setting"),
    ("POST", "/v2/systemsharedmemory/unregister"),
]
OPEN = [
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2"),
    ("GET", f"/v2/models/{MODEL}"),
    ("GET", f"/v2/models/{MODEL}/ready"),
]


def status(url: str, method: str, headers: dict[str, str] | None = None) -> int:
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def listening(process: psutil.Process) -> set[str]:
    """The addresses a process listens on (TCP), an IPv4-mapped IPv6 address as its IPv4 one."""
    found = set()
    for c in process.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN:
            ip = ipaddress.ip_address(c.laddr.ip)
            found.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return found


@pytest.mark.parametrize(("method", "path"), RESTRICTED_READS + RESTRICTED_WRITES)
def test_restricted_http_apis_refuse_a_request_without_the_admin_key(triton: EmbeddedTriton, method, path):
    assert status(triton.http_url + path, method) == 403
    assert status(triton.http_url + path, method, {ADMIN_HEADER: "not-the-key"}) == 403


@pytest.mark.parametrize(("method", "path"), RESTRICTED_READS)
def test_restricted_http_apis_answer_with_the_admin_key(triton: EmbeddedTriton, method, path):
    assert status(triton.http_url + path, method, triton.admin_headers) == 200


@pytest.mark.parametrize(("method", "path"), OPEN)
def test_health_and_metadata_stay_open(triton: EmbeddedTriton, method, path):
    assert status(triton.http_url + path, method) == 200


def test_inference_stays_open_over_http_and_grpc(triton: EmbeddedTriton):
    body = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["I get it now!"]}]}
    request = urllib.request.Request(
        f"{triton.http_url}/v2/models/{MODEL}/infer",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    assert grpc_infer(triton, ["I get it now!"]).as_numpy("PROBABILITIES").shape == (1, len(E2E_LABELS))


def test_restricted_grpc_protocols_need_the_admin_key(triton: EmbeddedTriton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    calls = [
        client.get_model_repository_index,
        lambda **kw: client.get_model_config(MODEL, **kw),
        client.get_system_shared_memory_status,
        client.get_trace_settings,
        client.get_log_settings,
    ]
    for call in calls:
        with pytest.raises(InferenceServerException):
            call()
        call(headers=triton.grpc_admin_headers)  # the key under Triton's gRPC header name
    with pytest.raises(InferenceServerException):
        client.unload_model(MODEL)
    assert client.is_server_ready() and client.is_model_ready(MODEL)  # the refused unload did nothing


def test_triton_binds_loopback_and_the_key_is_in_no_log(triton: EmbeddedTriton):
    assert triton.process is not None
    assert listening(psutil.Process(triton.process.pid)) == {"127.0.0.1"}
    key = triton.admin_headers[ADMIN_HEADER]
    assert len(key) >= 32
    assert key not in triton.log_file.read_text(errors="replace")


def test_launcher_keeps_triton_on_loopback_when_the_gateway_binds_every_address(
    repository: Path, tmp_path: Path
):
    key = secrets.token_hex(16)
    ports = launcher_ports()
    with Stack(tmp_path) as stack:
        launcher = stack.start_launcher(
            repository, {ADMIN_KEY_ENV: key}, ports=ports, extra=["--host", "0.0.0.0"]
        )
        triton = tritonserver_of(launcher)
        gateway = next(p for p in psutil.Process(launcher.pid).children() if "gateway" in p.cmdline())
        assert listening(triton) == {"127.0.0.1"}
        assert listening(gateway) == {"0.0.0.0"}
        # The operator's key opens the restricted APIs; the gateway never gets it.
        url = f"http://127.0.0.1:{ports.http}/v2/logging"
        assert status(url, "GET") == 403
        assert status(url, "GET", {ADMIN_HEADER: key}) == 200
        assert ADMIN_KEY_ENV not in gateway.environ()
        logs = [log_text(launcher), (tmp_path / "triton.log").read_text(errors="replace")]
        logs.append((tmp_path / "gateway.log").read_text(errors="replace"))
        assert not [text for text in logs if key in text]
