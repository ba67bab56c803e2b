"""Hypothesis strategies and fuzz bookkeeping shared by the HTTP, stream and Triton fuzz tests.

Strategies make texts (emoji, RTL, controls, combining marks, lone surrogates, big texts), JSON values,
request-shaped objects and raw bodies; ``write_counts`` merges a module's example counts into
``build/fuzz_counts.json``.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[2]
COUNTS_FILE = REPO_ROOT / "build" / "fuzz_counts.json"
MAX_TEXTS = 32  # the gateway's defaults (Settings)
MAX_TEXT_CHARS = 5000

# --------------------------------------------------------------------------------------------------
# Case counts -> build/fuzz_counts.json


@dataclass
class FuzzTally:
    """One fuzz module's totals: cases run, cases that hit a known upstream bug, answers by status, and
    seconds per test; ``write`` merges them into the shared counts file."""

    cases: Counter[str] = field(default_factory=Counter)
    known_bug_cases: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def write(self, path: Path | None = None) -> None:
        write_counts(self.cases, self.known_bug_cases, self.seconds, self.statuses, path or COUNTS_FILE)


def write_counts(
    cases: Counter[str],
    known_bug_cases: Counter[str],
    seconds: dict[str, float],
    statuses: Mapping[str, Counter[Any]],
    path: Path = COUNTS_FILE,
) -> None:
    """Merge this module's totals into the shared counts file (other modules' keys are kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    by_status = {
        test: {str(s): n for s, n in sorted(c.items())} for test, c in statuses.items() if test in cases
    }
    sections: list[tuple[str, dict[str, Any]]] = [
        ("cases", dict(cases)),
        ("known_bug_cases", dict(known_bug_cases)),
        ("seconds", {k: round(v, 2) for k, v in seconds.items()}),
        ("statuses", by_status),
    ]
    for key, values in sections:
        merged: dict[str, Any] = data[key] if isinstance(data.get(key), dict) else {}
        merged.update(values)
        data[key] = dict(sorted(merged.items()))
    data["total_cases"] = sum(v for v in data["cases"].values() if isinstance(v, int))
    data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path.write_text(json.dumps(data, indent=2) + "\n")


def case_name(request: pytest.FixtureRequest) -> str:
    return f"{Path(request.node.path).relative_to(REPO_ROOT)}::{request.node.name}"


FUZZ = settings(
    deadline=None,
    database=None,  # no example database (.hypothesis/ still gets hypothesis' caches; it git-ignores itself)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max_examples)


def normalized(text: str) -> str:
    """What the README says the gateway sends Triton and caches under: NFC, outer whitespace stripped."""
    return unicodedata.normalize("NFC", text).strip()


FIELDS = ["text", "texts", "learner_id", "context"]
CONTEXT_FIELDS = ["time_on_task_seconds", "recent_error_rate", "consecutive_errors"]
EMOJI = ["😀", "👩‍💻", "🏳️‍🌈", "👍🏽", "🇫🇷", "❤️", "🤯", "\U0001f9d1\u200d\U0001f393", "😮"]
RTL = ["لا أفهم هذا السؤال", "אני לא מבין את זה", "\u202eevil\u202c", "مرحبا 👋 shalom שלום", "\u200fה"]
TRICKY = [
    "",
    " ",
    "\x00",
    "\x00\x00",
    "a\x00b",
    "\u0301",
    "e\u0301",  # NFC: é
    "\ufeff",
    "\u200b",
    "\u3000ok\u3000",
    "\u2028\u2029",
    "\x1c\x1d\x1e\x1f",  # whitespace for str.strip
    "\x85",
    "Z\u0351\u0352\u0353\u0354\u0355\u0356",
    "\U0010ffff",
    "\ud7ff\ue000",
    "[NAME]",
    "I finally get it, thank you!",
    *EMOJI,
    *RTL,
]
letters = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
controls = st.characters(min_codepoint=0x00, max_codepoint=0x1F) | st.sampled_from(
    "\x7f\x85\u200b\u200e\u200f\u202e\u2028\u2029\ufeff"
)
rtl = st.characters(min_codepoint=0x0590, max_codepoint=0x06FF)
combining = st.characters(min_codepoint=0x0300, max_codepoint=0x036F)
spaces = st.sampled_from(" \t\n\r\x0b\x0c\u00a0\u1680\u2003\u3000")
chars = st.one_of(letters, st.characters(codec="utf-8"), controls, rtl, combining, spaces)  # no surrogates
surrogates = st.integers(0xD800, 0xDFFF).map(chr)


@st.composite
def big_text(draw: st.DrawFn, max_chars: int = 20_000, alphabet: st.SearchStrategy[str] = chars) -> str:
    """Up to max_chars characters, cheaply: a drawn pattern repeated, with a mixed head and tail."""
    pattern = draw(st.text(alphabet, min_size=1, max_size=30))
    size = draw(st.integers(0, max_chars))
    head = draw(st.text(alphabet, max_size=20))
    tail = draw(st.sampled_from(["", *EMOJI, *RTL]))
    return (head + pattern * (size // len(pattern) + 1))[: max(0, size - len(tail))] + tail


def mixed_text(max_chars: int = 20_000, with_surrogates: bool = True) -> st.SearchStrategy[str]:
    parts = [
        st.text(chars, max_size=200),
        st.sampled_from(TRICKY),
        st.lists(st.sampled_from(TRICKY) | st.text(chars, max_size=10), max_size=8).map("".join),
        big_text(max_chars),
    ]
    if with_surrogates:  # lone surrogates: JSON can carry them as "\ud800" escapes
        parts.append(st.tuples(st.text(chars, max_size=10), surrogates).map("".join))
    return st.one_of(parts)


def valid_text(max_chars: int = 1000) -> st.SearchStrategy[str]:
    """Texts the gateway must accept: non-empty after normalization, within the limit, real unicode."""
    return (
        mixed_text(max_chars, with_surrogates=False)
        .map(lambda t: t if normalized(t) else t + " ok ")
        .filter(lambda t: len(normalized(t)) <= MAX_TEXT_CHARS)
    )


huge_ints = st.one_of(
    st.integers(),
    st.integers(2**63 - 3, 2**64 + 3),
    st.builds(lambda sign, digits: sign * 10**digits, st.sampled_from([1, -1]), st.integers(15, 400)),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    huge_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    mixed_text(300),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(FIELDS + CONTEXT_FIELDS) | st.text(max_size=8), children, max_size=5
        )
    ),
    max_leaves=15,
)
number_like = st.one_of(
    huge_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(0, 1),
    st.integers(0, 100),
    st.sampled_from(["1", "0.5", "inf", "-inf", "nan", "1e400", "Infinity", "", "abc", " 3 ", "1_000"]),
    st.booleans(),
    st.none(),
    json_values,
)
contexts = st.one_of(
    st.fixed_dictionaries({}, optional=dict.fromkeys(CONTEXT_FIELDS, number_like)),
    st.dictionaries(st.sampled_from(CONTEXT_FIELDS) | st.text(max_size=12), number_like, max_size=4),
    json_values,
)
learner_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.:@-]{1,128}", fullmatch=True),
    st.text(letters, min_size=129, max_size=300),
    mixed_text(300),
    json_values,
)
field_values: dict[str, st.SearchStrategy[Any]] = {
    "text": mixed_text() | json_values,
    "texts": st.lists(mixed_text(2000), max_size=100) | st.lists(json_values, max_size=5) | json_values,
    "learner_id": learner_ids,
    "context": contexts,
}
requests_like = st.builds(
    lambda fields, extra: {**fields, **extra},
    st.fixed_dictionaries({}, optional=field_values),
    st.one_of(st.just({}), st.dictionaries(st.text(max_size=8), json_values, max_size=2)),
)
valid_context = st.fixed_dictionaries(
    {},
    optional={
        # the documented ranges (gateway/schemas.py): at most a week on a task, 100k errors in a row
        "time_on_task_seconds": st.floats(0, 7 * 24 * 3600) | st.integers(0, 7 * 24 * 3600),
        "recent_error_rate": st.floats(0, 1),
        "consecutive_errors": st.integers(0, 100_000),
    },
)
valid_requests = st.builds(
    lambda texts, extra: {**texts, **extra},
    st.fixed_dictionaries({"texts": st.lists(valid_text(200), min_size=1, max_size=MAX_TEXTS)})
    | st.fixed_dictionaries({"text": valid_text(MAX_TEXT_CHARS)}),
    st.fixed_dictionaries(
        {},
        optional={
            "learner_id": st.from_regex(r"[A-Za-z0-9_.:@-]{1,128}", fullmatch=True),
            "context": valid_context,
        },
    ),
)


@st.composite
def mutated_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with one field replaced by anything (a wrong type, a bad value) or a key added."""
    payload = dict(draw(valid_requests))
    field = draw(st.sampled_from([*FIELDS, "extra key", "drop"]))
    if field == "extra key":
        payload[draw(st.text(max_size=8))] = draw(json_values)
    elif field == "drop":
        payload.pop(draw(st.sampled_from(sorted(payload))))
    else:
        payload[field] = draw(field_values[field])
    return payload


def encode(payload: Any, ascii_only: bool) -> bytes:
    """JSON bytes; lone surrogates as \\ud800 escapes (ascii) or as surrogate-pass UTF-8 bytes (invalid)."""
    return json.dumps(payload, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(50, 500) | st.integers(501, 5000))
    inner = draw(st.sampled_from([b"", b'"x"', b"1", b"null", b'{"text":"a"}']))
    shape = draw(st.sampled_from(["lists", "in_text", "in_texts", "dicts", "context", "unbalanced"]))
    lists = b"[" * depth + inner + b"]" * depth
    if shape == "lists":
        return lists
    if shape == "in_text":
        return b'{"text":' + lists + b"}"
    if shape == "in_texts":
        return b'{"texts":' + lists + b"}"
    dicts = b'{"a":' * depth + (inner or b"1") + b"}" * depth
    if shape == "dicts":
        return dicts
    if shape == "context":
        return b'{"text":"a","context":' + dicts + b"}"
    return b"[" * depth + b'{"text":"a"' * draw(st.integers(0, 1))


@st.composite
def raw_tokens(draw: st.DrawFn) -> bytes:
    """Numbers JSON cannot express or Python reads specially, where a field expects a number or text."""
    token = draw(
        st.sampled_from(
            [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1e-400", b"-0", b"0e0", b"1E+2"]
            + [b"9" * n for n in (19, 20, 309, 310, 400)]
            + [b"1" + b"0" * 309, b'"' + b"1" + b"0" * 320 + b'"', b"4" + b"0" * 5000]
        )
    )
    where = draw(st.sampled_from([*CONTEXT_FIELDS, "text", "texts", "learner_id"]))
    text = draw(st.sampled_from([b'"a"', b'"I finally get it"', b'""', b"1"]))
    if where in CONTEXT_FIELDS:
        return b'{"text":' + text + b',"context":{"' + where.encode() + b'":' + token + b"}}"
    if where == "texts":
        return b'{"texts":["ok",' + token + b"]}"
    return b'{"' + where.encode() + b'":' + token + (b"" if where == "text" else b',"text":"a"') + b"}"


@st.composite
def surrogate_escapes(draw: st.DrawFn) -> bytes:
    sur = draw(st.sampled_from([b"\\ud800", b"\\udfff", b"\\ud83d", b"\\ude00", b"\\udc00\\ud800"]))
    pre = draw(st.sampled_from([b"", b"a", b" ", b"\\ud83d\\ude00"]))
    template = draw(
        st.sampled_from(
            [
                b'{"text":"%s"}',
                b'{"texts":["ok","%s"]}',
                b'{"text":"a","learner_id":"%s"}',
                b'{"text":"a","%s":1}',
                b'{"text":"a","context":{"%s":1}}',
                b'{"%s":"a"}',
                b'{"text":"a","context":{"recent_error_rate":"%s"}}',
            ]
        )
    )
    return template.replace(b"%s", pre + sur)


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    body = bytearray(encode(draw(valid_requests | requests_like), draw(st.booleans())))
    how = draw(st.sampled_from(["flip", "truncate", "insert", "cesu"]))
    at = draw(st.integers(0, len(body)))
    if how == "flip" and body:
        body[min(at, len(body) - 1)] = draw(st.integers(0, 255))
    elif how == "truncate":
        del body[at:]
    elif how == "insert":
        body[at:at] = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xf4\x90\x80\x80"]))
    else:
        body = bytearray(b'{"text":"a\xed\xa0\x80b"}')
    return bytes(body)


@st.composite
def other_encodings(draw: st.DrawFn) -> bytes:
    text = json.dumps(draw(valid_requests), ensure_ascii=False)
    codec = draw(st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1"]))
    return text.encode(codec, "replace")


raw_bodies = st.one_of(
    st.binary(max_size=2000),
    deep_nesting(),
    raw_tokens(),
    surrogate_escapes(),
    corrupted(),
    other_encodings(),
    st.builds(encode, requests_like, st.booleans()),
)

JSON_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/vnd.api+json",
    "APPLICATION/JSON",
]
OTHER_TYPES = [
    "text/plain",
    "text/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/jsonx",
    "application/octet-stream",
    "json",
]
content_types = st.one_of(
    st.sampled_from(JSON_TYPES),
    st.sampled_from([*OTHER_TYPES, ""]),
    st.text(letters, max_size=60),
    st.none(),  # no content-type header at all
)
