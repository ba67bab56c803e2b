"""Who is calling: API keys belong to a tenant and carry scopes.

Keys live in a keys file (``GATEWAY_API_KEYS_FILE``, JSON) that holds only each key's SHA-256, never
the key: ``{"keys": [{"id": "acme-1", "tenant": "acme", "scopes": ["analyse"], "sha256": "<hex>"}]}``.
Keys are long random tokens, so an unsalted SHA-256 cannot be reversed by guessing; a presented key is
hashed and compared with every stored hash in constant time. ``python -m gateway keys create`` makes a
key, prints it once and stores its hash. The older ``GATEWAY_API_KEYS`` (plain keys in the environment)
still works: each is a key of the ``default`` tenant with every scope. With no key at all, auth is off
(local development): every request is the ``default`` tenant with every scope.

A learner id is only meaningful inside its tenant: every learner store and audit read or write is keyed
by (tenant, learner id).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.settings import MIN_API_KEY_CHARS, Settings

DEFAULT_TENANT = "default"
# Tenant and key ids: no ':' (the learner store key is "<tenant>:<learner id>"), nothing to escape.
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEY_PREFIX = "gek_"  # makes a leaked key easy to recognise (and to scan for)


class Scope(StrEnum):
    ANALYSE = "analyse"  # POST /v1/emotions and the stream
    LEARNERS_READ = "learners:read"  # a learner's trajectory and audit history
    LEARNERS_ERASE = "learners:erase"  # DELETE /v1/learners/{id}
    METRICS = "metrics"  # GET /metrics
    POLICY_ADMIN = "policy:admin"  # GET/PUT /v1/policy: list versions, switch the active one


ALL_SCOPES = frozenset(Scope)
# A key shipped to browsers is public in all but name: it may only analyse.
BROWSER_SCOPES = frozenset({Scope.ANALYSE})


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: its tenant, the key's id (None when auth is off) and the key's scopes.
    What the auth dependency returns; rate limits count per tenant or per key from it."""

    tenant: str
    key_id: str | None
    scopes: frozenset[Scope] = field(default=ALL_SCOPES)

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes


# Auth off (no keys configured): local development, one tenant, every scope.
DEV_PRINCIPAL = Principal(DEFAULT_TENANT, None, ALL_SCOPES)


@dataclass(frozen=True)
class KeyRecord:
    """One entry of the keys file: the key itself is never stored, only its SHA-256."""

    id: str
    tenant: str
    scopes: frozenset[Scope]
    sha256: str
    browser: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "tenant": self.tenant,
            "scopes": sorted(self.scopes),
            "sha256": self.sha256,
        }
        if self.browser:
            out["browser"] = True
        return out


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def parse_scopes(values: Iterable[str], where: str) -> frozenset[Scope]:
    scopes = set()
    for value in values:
        try:
            scopes.add(Scope(value))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ValueError(f"{where}: unknown scope {value!r}; scopes are {known}") from None
    if not scopes:
        raise ValueError(f"{where}: give at least one scope")
    return frozenset(scopes)


def check_record(record: KeyRecord, where: str) -> None:
    if not TENANT_PATTERN.fullmatch(record.tenant):
        raise ValueError(
            f"{where}: tenant {record.tenant!r} must be 1-64 of a-z, 0-9, '_' and '-' (starting with a "
            "letter or digit)"
        )
    if not KEY_ID_PATTERN.fullmatch(record.id):
        raise ValueError(f"{where}: key id {record.id!r} must be 1-64 of A-Z, a-z, 0-9, '_', '.' and '-'")
    if not SHA256_HEX.fullmatch(record.sha256):
        raise ValueError(f"{where}: sha256 must be 64 lower-case hex digits (the key's SHA-256)")
    if record.browser and not record.scopes <= BROWSER_SCOPES:
        raise ValueError(f"{where}: a browser key may only have the 'analyse' scope")


FIELDS = {"id", "tenant", "scopes", "sha256", "browser"}


def _record(raw: object, where: str) -> KeyRecord:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: each key is an object with id, tenant, scopes and sha256")
    unknown = set(raw) - FIELDS
    if unknown:
        # e.g. a "key" field: the keys file must never hold a key in plain text
        raise ValueError(
            f"{where}: unknown fields {sorted(unknown)}; a key entry holds only {sorted(FIELDS)} "
            "(never the key itself)"
        )
    missing = {"id", "tenant", "scopes", "sha256"} - set(raw)
    if missing:
        raise ValueError(f"{where}: missing {sorted(missing)}")
    scopes = raw["scopes"]
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ValueError(f"{where}: scopes is a list of strings")
    for name in ("id", "tenant", "sha256"):
        if not isinstance(raw[name], str):
            raise ValueError(f"{where}: {name} is a string")
    browser = raw.get("browser", False)
    if not isinstance(browser, bool):
        raise ValueError(f"{where}: browser is true or false")
    record = KeyRecord(raw["id"], raw["tenant"], parse_scopes(scopes, where), raw["sha256"], browser)
    check_record(record, where)
    return record


def read_keys_file(path: Path) -> list[KeyRecord]:
    """The records of a keys file; ValueError (saying what to fix) for anything else."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError(
            f"{path}: not a JSON keys file. Since tenants and scopes, GATEWAY_API_KEYS_FILE holds "
            '{"keys": [{"id", "tenant", "scopes", "sha256"}]} and never plain keys; create keys with '
            "`python -m gateway keys create --tenant T --scopes analyse --file PATH`"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or set(data) != {"keys"}:
        raise ValueError(f'{path}: a keys file is {{"keys": [...]}}')
    records = [_record(raw, f"{path}: keys[{i}]") for i, raw in enumerate(data["keys"])]
    check_unique(records, str(path))
    return records


def check_unique(records: Sequence[KeyRecord], where: str) -> None:
    ids = [r.id for r in records]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{where}: key ids must be unique")
    if len({r.sha256 for r in records}) != len(records):
        raise ValueError(f"{where}: the same key appears twice")


def write_keys_file(path: Path, records: Sequence[KeyRecord]) -> None:
    """Replace the keys file atomically (readable by its owner only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"keys": [r.to_json() for r in records]}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_key() -> str:
    """A random key: 256 bits, URL-safe, recognisable by its prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(
    path: Path, tenant: str, scopes: Iterable[str], key_id: str | None = None, browser: bool = False
) -> tuple[KeyRecord, str]:
    """Add a new key for ``tenant`` to the keys file (created if missing); the record and the key. The
    key is returned once and stored nowhere: only its hash goes to the file."""
    records = read_keys_file(path) if path.exists() else []
    scope_set = parse_scopes(scopes, "--scopes")
    key = new_key()
    record = KeyRecord(
        key_id or f"{tenant}-{secrets.token_hex(4)}", tenant, scope_set, key_hash(key), browser
    )
    check_record(record, "new key")
    check_unique([*records, record], str(path))
    write_keys_file(path, [*records, record])
    return record, key


def revoke_key(path: Path, key_id: str) -> bool:
    """Remove a key from the keys file; False when no key has that id."""
    records = read_keys_file(path)
    kept = [r for r in records if r.id != key_id]
    if len(kept) == len(records):
        return False
    write_keys_file(path, kept)
    return True


class Keyring:
    """Every configured key. Empty: auth is off."""

    def __init__(self, records: Sequence[KeyRecord]) -> None:
        check_unique(records, "the configured keys")
        self.records = list(records)

    def __bool__(self) -> bool:
        return bool(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def tenants(self) -> set[str]:
        return {r.tenant for r in self.records}

    def authenticate(self, given: str) -> Principal | None:
        """The principal of the key ``given``, or None. Compares with every stored hash (the time taken
        does not say which one, or how much of one, matched)."""
        digest = key_hash(given).encode()
        found: KeyRecord | None = None
        for record in self.records:
            if hmac.compare_digest(digest, record.sha256.encode()):
                found = record
        return Principal(found.tenant, found.id, found.scopes) if found is not None else None


def keyring_from(settings: Settings) -> Keyring:
    """The keys the settings configure: the keys file's, and each ``GATEWAY_API_KEYS`` key as a key of
    the default tenant with every scope. Raises ValueError (or OSError for an unreadable file)."""
    records = [
        KeyRecord(f"env-{i}", DEFAULT_TENANT, ALL_SCOPES, key_hash(key))
        for i, key in enumerate(settings.resolved_api_keys(), start=1)
    ]
    if settings.api_keys_file is not None:
        records += read_keys_file(settings.api_keys_file)
    return Keyring(records)


__all__ = [
    "ALL_SCOPES",
    "DEFAULT_TENANT",
    "DEV_PRINCIPAL",
    "MIN_API_KEY_CHARS",
    "KeyRecord",
    "Keyring",
    "Principal",
    "Scope",
    "create_key",
    "keyring_from",
    "learner_key",
    "read_keys_file",
]


def learner_key(tenant: str, learner_id: str) -> str:
    """The key a learner's data is stored under: "<tenant>:<learner id>". A tenant never holds ':' (its
    pattern), so two (tenant, learner) pairs never share a key."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ValueError(f"not a tenant id: {tenant!r}")
    return f"{tenant}:{learner_id}"
