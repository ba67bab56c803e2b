"""Property-based fuzzing of the goemotions ensemble's native gRPC and HTTP APIs on the real embedded
tritonserver (the session fixture ``triton``, shared with the other e2e tests).

The property, for any request of TEXT rows (empty, whitespace, up to 20k characters, not UTF-8, NUL
bytes, emoji/RTL, good and bad rows mixed, 0 or more than max_batch_size rows): either it succeeds with
PROBABILITIES of shape (rows, labels) in [0, 1] (and LABELS from the label set), or it fails with
INVALID_ARGUMENT (gRPC) / HTTP 400 and a reason naming the first bad row. The server stays live and
keeps answering good requests: checked every few examples and after each test. Cases are counted into
build/fuzz_counts.json next to the gateway fuzzing's.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from contract.manifest import Manifest
from server.embedded import EmbeddedTriton
from tests.support.fuzz import EMOJI, RTL, case_name, chars, fuzz, mixed_text, write_counts

pytestmark = pytest.mark.e2e

MODEL = "goemotions"
MAX_BATCH = 32  # max_batch_size of the ensemble (model_repository/goemotions/config.pbtxt)
ALIVE_EVERY = 25  # examples between liveness checks
TIMEOUT_S = 60.0
GOOD_TEXT = "I finally understand recursion, thank you so much!"

CASES: Counter[str] = Counter()
SECONDS: dict[str, float] = {}
OUTCOMES: dict[str, Counter[str]] = {}


@pytest.fixture(scope="module", autouse=True)
def _fuzz_counts() -> Iterator[None]:
    yield
    write_counts(CASES, Counter(), SECONDS, OUTCOMES)


@pytest.fixture(scope="module")
def label_set(repository: Path) -> set[str]:
    return set(Manifest.read(repository / "manifest.json").labels)


# --------------------------------------------------------------------------------------------------
# Rows and the oracle

spaces = st.sampled_from(
    [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u00a0", "\u2028", "\u3000"]
)
good_rows = st.one_of(
    mixed_text(20_000, with_surrogates=False).filter(lambda t: t.strip()).map(lambda t: t.encode()),
    st.sampled_from([GOOD_TEXT, *EMOJI, *RTL, "ok", "[NAME] wins again??", "e\u0301"]).map(str.encode),
)
bad_utf8 = [b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x80"]
rows_of_any_kind = st.one_of(
    good_rows,
    good_rows,
    st.just(b""),
    st.text(spaces, min_size=1, max_size=20).map(str.encode),  # blank
    st.tuples(st.text(chars, max_size=20), st.sampled_from(bad_utf8), st.text(chars, max_size=20)).map(
        lambda t: t[0].encode() + t[1] + t[2].encode()  # not UTF-8
    ),
    st.binary(min_size=1, max_size=200),
    st.sampled_from([b"\x00", b"a\x00b", b"\x00" * 7, b"\x00 \x00", b"ok\x00"]),  # NUL bytes
)
requests_rows = st.one_of(
    st.lists(rows_of_any_kind, min_size=1, max_size=8),
    st.lists(good_rows, min_size=1, max_size=4),
    st.lists(good_rows, min_size=MAX_BATCH - 1, max_size=MAX_BATCH + 4, unique=False),
    st.just([]),
)


def first_problem(rows: list[bytes]) -> str | None:
    """The reason the model repository's tokenizer gives for the first bad row, or None if all are good."""
    for i, raw in enumerate(rows):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return f"TEXT row {i} is not valid UTF-8"
        if not text.strip():
            return f"TEXT row {i} is empty"
    return None


def expected(rows: list[bytes]) -> tuple[bool, str | None]:
    """(succeeds, reason the failure must name). Row counts outside 1..max_batch_size fail for any reason."""
    if not 1 <= len(rows) <= MAX_BATCH:
        return False, None
    problem = first_problem(rows)
    return problem is None, problem


def check_success(probs: Any, labels: Any, rows: list[bytes], label_set: set[str]) -> None:
    assert probs is not None and labels is not None
    assert probs.shape == (len(rows), len(label_set)) and probs.dtype == np.float32
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    assert labels.shape[0] == len(rows)
    for row in labels:
        names = [x.decode() if isinstance(x, bytes) else str(x) for x in row]
        assert set(filter(None, names)) <= label_set
    first_of: dict[bytes, int] = {}
    for i, raw in enumerate(rows):  # the same text in one request gets the same answer
        j = first_of.setdefault(raw, i)
        np.testing.assert_allclose(probs[i], probs[j], atol=1e-5)


def check_failure(message: str, reason: str | None) -> None:
    assert message.strip(), "an error without a reason"
    if reason is not None:
        assert reason in message, f"expected {reason!r} in {message!r}"


def tensor(module: Any, rows: list[bytes]) -> Any:
    data = np.empty((len(rows), 1), dtype=object)  # object: bytes as-is (NULs kept, no fixed width)
    data[:, 0] = rows
    inp = module.InferInput("TEXT", [len(rows), 1], "BYTES")
    inp.set_data_from_numpy(data)
    return inp


def assert_alive(triton: EmbeddedTriton, label_set: set[str]) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    result = client.infer(MODEL, [tensor(grpcclient, [GOOD_TEXT.encode()])], client_timeout=TIMEOUT_S)
    check_success(
        result.as_numpy("PROBABILITIES"), result.as_numpy("LABELS"), [GOOD_TEXT.encode()], label_set
    )
    http = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    assert http.is_server_live()


class Fuzzing:
    """Counts a test's cases and outcomes; checks the server is alive every ALIVE_EVERY cases."""

    def __init__(self, request: pytest.FixtureRequest, triton: EmbeddedTriton, label_set: set[str]) -> None:
        self.name = case_name(request)
        self.triton, self.label_set = triton, label_set
        self.outcomes = OUTCOMES.setdefault(self.name, Counter())
        self.started = time.perf_counter()

    def case(self, outcome: str) -> None:
        CASES[self.name] += 1
        self.outcomes[outcome] += 1
        if CASES[self.name] % ALIVE_EVERY == 0:
            assert_alive(self.triton, self.label_set)

    def done(self) -> None:
        SECONDS[self.name] = time.perf_counter() - self.started
        assert_alive(self.triton, self.label_set)


# --------------------------------------------------------------------------------------------------
# Properties


@pytest.mark.parametrize(
    ("protocol", "examples", "bad_status"),
    [("grpc", 100, "StatusCode.INVALID_ARGUMENT"), ("http", 50, "400")],
)
def test_any_rows(request, triton, label_set, protocol, examples, bad_status):
    """Any rows -> (rows, labels) probabilities in [0, 1], or INVALID_ARGUMENT (gRPC) / 400 (HTTP, binary
    tensor data, so any bytes) naming the first bad row."""
    fuzzing = Fuzzing(request, triton, label_set)
    if protocol == "grpc":
        module: Any = grpcclient
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        options: dict[str, Any] = {"client_timeout": TIMEOUT_S}
    else:
        module = httpclient
        client = httpclient.InferenceServerClient(
            triton.http_url.removeprefix("http://"), connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S
        )
        options = {}

    @fuzz(examples)
    @given(rows=requests_rows)
    def prop(rows):
        ok, reason = expected(rows)
        try:
            result = client.infer(MODEL, [tensor(module, rows)], **options)
        except InferenceServerException as exc:
            fuzzing.case(f"error {exc.status()}")
            assert not ok, f"good rows failed: {exc.status()} {exc.message()}"
            assert exc.status() == bad_status, f"{exc.status()}: {exc.message()}"
            check_failure(str(exc.message()), reason)
            return
        fuzzing.case("ok")
        assert ok, f"bad rows ({reason or f'{len(rows)} rows'}) were accepted"
        check_success(result.as_numpy("PROBABILITIES"), result.as_numpy("LABELS"), rows, label_set)

    prop()
    fuzzing.done()


json_rows = st.lists(
    st.one_of(
        mixed_text(20_000),  # lone surrogates included: "\ud800" escapes
        st.sampled_from(["", " ", "\x00", "a\x00b", "\u3000", GOOD_TEXT, *EMOJI, *RTL]),
    ),
    min_size=1,
    max_size=6,
)


def lone_surrogates(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def test_http_json_rows(request, triton, label_set):
    """HTTP with the rows as JSON strings (what curl sends), escapes and lone surrogates included:
    200 with (rows, labels) probabilities, or a 400 whose JSON body has an error reason naming the first bad
    row. Exception, upstream: JSON Triton cannot parse (a lone surrogate escape) is a 500 (see below)."""
    fuzzing = Fuzzing(request, triton, label_set)
    url = f"{triton.http_url}/v2/models/{MODEL}/infer"

    @fuzz(40)
    @given(texts=json_rows, ascii_only=st.booleans())
    def prop(texts, ascii_only):
        payload = {"inputs": [{"name": "TEXT", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}
        body = json.dumps(payload, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
        # What the model receives: escapes decoded as JSON decodes them (a valid pair is one character);
        # raw bytes as they are (Triton does not validate UTF-8 in JSON strings; the tokenizer does).
        received = [json.loads(json.dumps(t)) if ascii_only else t for t in texts]
        unparsable = ascii_only and any(lone_surrogates(t) for t in received)
        rows = [t.encode("utf-8", "surrogatepass") for t in received]
        ok, reason = expected(rows)
        req = urllib.request.Request(
            url, data=body, method="POST", headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            error = json.loads(exc.read())
            if unparsable and exc.code == 500:  # upstream behaviour, pinned by the xfail test below
                fuzzing.case("error 500 (unparsable JSON, upstream)")
                assert "failed to parse the request JSON buffer" in error["error"]
                return
            fuzzing.case(f"error {exc.code}")
            assert exc.code == 400, f"{exc.code}: {error}"
            assert not ok or unparsable, f"good rows failed: {error}"
            check_failure(error["error"], None if unparsable else reason)
            return
        fuzzing.case("ok")
        assert ok and not unparsable, f"bad rows ({reason or 'unparsable JSON'}) were accepted"
        outputs = {o["name"]: o for o in answer["outputs"]}
        probs = np.array(outputs["PROBABILITIES"]["data"], dtype=np.float32)
        labels = np.array(outputs["LABELS"]["data"], dtype=object)
        check_success(
            probs.reshape(outputs["PROBABILITIES"]["shape"]),
            labels.reshape(outputs["LABELS"]["shape"]),
            rows,
            label_set,
        )

    prop()
    fuzzing.done()


# --------------------------------------------------------------------------------------------------
# Found by the fuzzing, upstream (tritonserver 2.51 in the nvidia-pytriton wheel, not this project's
# code): a request body its HTTP frontend cannot parse as JSON is reported as an INTERNAL error, HTTP 500,
# where a 400 is due (triton-inference-server/server#8762, fix proposed in #8773). The gateway is not
# affected (it calls Triton over gRPC). Strict xfail: a Triton with the fix makes this pass.


@pytest.mark.xfail(
    strict=True,
    reason="UPSTREAM: Triton's HTTP frontend answers 500 (not 400) for a body it cannot parse as JSON "
    "(triton-inference-server/server#8762)",
)
@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs":[{"name":"TEXT","shape":[1,1],"datatype":"BYTES","data":["\\ud800"]}]}',
        b'{"inputs":[',
    ],
    ids=["lone-surrogate-escape", "truncated"],
)
def test_unparsable_json_is_a_400(triton, body):
    req = urllib.request.Request(f"{triton.http_url}/v2/models/{MODEL}/infer", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=TIMEOUT_S)
    assert exc.value.code == 400, exc.value.read().decode()
