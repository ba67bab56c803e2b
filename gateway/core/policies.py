"""Learning-state policies by version, switchable while the gateway runs.

The book holds the policy the gateway started with and, with ``GATEWAY_POLICY_DIR``, every valid policy file
in that folder, each under its version (``Policy.identity``: a digest of its values, so a version names
exactly one set of numbers). The folder's ``active`` file names the deployment's version; a tenant may
choose its own (``tenants/<tenant>``), which applies to its analyses only. ``PUT /v1/policy`` writes these
files, and every replica re-reads the folder every ``GATEWAY_POLICY_CHECK_S`` seconds, so one switch
reaches them all without a restart. Each analysis reads its tenant's policy once and reports its version.

A policy whose trajectory storage limits (``ttl_seconds``, ``max_history``) differ from the start-up
policy's is refused: the learner store was sized at start-up, and changing them needs a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.core.tenants import DEFAULT_TENANT, TENANT_PATTERN
from gateway.learning.policy import Policy, PolicyError, load_policy

log = logging.getLogger(__name__)

ACTIVE_FILE = "active"
TENANTS_DIR = "tenants"  # tenants/<tenant>: that tenant's own choice of version


class UnknownPolicy(LookupError):
    """No valid policy of that version is in the book."""


@dataclass(frozen=True)
class PolicyEntry:
    version: str
    source: str  # the file it came from
    policy: Policy


# (name, mtime_ns, size) of every file the last scan saw: nothing changed, nothing to re-read
_Signature = tuple[tuple[str, int, int], ...]


class PolicyBook:
    def __init__(
        self,
        initial: Policy,
        source: str,
        directory: Path | None = None,
        on_switch: Callable[[str], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        """Raises PolicyError when the folder holds an invalid policy or ``active`` names an unknown
        version at start-up (a gateway should not start on a policy nobody meant)."""
        self._initial = initial
        self._builtin = PolicyEntry(initial.identity, source, initial)
        self._entries: dict[str, PolicyEntry] = {initial.identity: self._builtin}
        self._rejected: dict[str, str] = {}  # file name -> why it is not in the book
        self._active = self._builtin
        self._tenants: dict[str, PolicyEntry] = {}  # tenants' own choices (the rest use the default)
        self._directory = directory
        self._signature: _Signature | None = None
        self._on_switch = on_switch or (lambda version: None)
        self._on_error = on_error or (lambda: None)
        if directory is not None:
            if not directory.is_dir():
                raise PolicyError(f"{directory}: policy folder not found")
            self.refresh(strict=True)
        self._on_switch(self._active.version)

    @property
    def current(self) -> Policy:
        """The deployment's policy (what a tenant without its own choice gets)."""
        return self._active.policy

    def current_for(self, tenant: str) -> Policy:
        return self.active_for(tenant).policy

    def active_for(self, tenant: str) -> PolicyEntry:
        return self._tenants.get(tenant, self._active)

    def chosen_by(self, tenant: str) -> bool:
        """Whether ``tenant`` chose its own version (else it follows the deployment's)."""
        return tenant in self._tenants

    @property
    def active(self) -> PolicyEntry:
        return self._active

    @property
    def switchable(self) -> bool:
        return self._directory is not None

    def versions(self) -> list[PolicyEntry]:
        return sorted(self._entries.values(), key=lambda e: e.source)

    def rejected(self) -> dict[str, str]:
        return dict(self._rejected)

    def activate(self, version: str, tenant: str = DEFAULT_TENANT) -> PolicyEntry:
        """Make ``version`` the deployment's policy (``tenant`` is the default tenant: the operator) or
        ``tenant``'s own, here and (with a folder) for every replica reading it."""
        entry = self._entries.get(version)
        if entry is None:
            raise UnknownPolicy(version)
        if self._directory is not None:
            pointer = self._pointer_path(tenant)
            pointer.parent.mkdir(exist_ok=True)
            partial = pointer.with_name(f".{pointer.name}.{os.getpid()}.tmp")
            partial.write_text(version + "\n")
            os.replace(partial, pointer)  # atomic: a replica never reads half a version
        if tenant == DEFAULT_TENANT:
            self._switch(entry, "activated")
        else:
            self._tenants[tenant] = entry
            log.info("learning-state policy of tenant %s -> %s", tenant, entry.version)
        return entry

    def forget(self, tenant: str) -> None:
        """``tenant`` follows the deployment's policy again (idempotent; the default tenant has no choice
        of its own to forget)."""
        if tenant == DEFAULT_TENANT:
            return
        if self._directory is not None:
            self._pointer_path(tenant).unlink(missing_ok=True)
        if self._tenants.pop(tenant, None) is not None:
            log.info("learning-state policy of tenant %s -> the deployment's", tenant)

    def refresh(self, strict: bool = False) -> bool:
        """Re-read the folder when anything in it changed; True when the active version changed. Not
        ``strict`` (while serving), a bad file or pointer is logged and counted; the active policy stays."""
        if self._directory is None:
            return False
        signature = self._scan_signature()
        if signature == self._signature:
            return False
        self._signature = signature
        entries = {self._builtin.version: self._builtin}
        rejected: dict[str, str] = {}
        for path in sorted(self._directory.glob("*.toml")):
            try:
                policy = load_policy(path)
                self._check_compatible(policy, path)
            except PolicyError as exc:
                if strict:
                    raise
                rejected[path.name] = str(exc)
                continue
            entries.setdefault(policy.identity, PolicyEntry(policy.identity, str(path), policy))
        for name, why in rejected.items():
            if self._rejected.get(name) != why:
                log.error("policy file %s left out: %s", name, why)
                self._on_error()
        self._entries, self._rejected = entries, rejected
        self._refresh_tenants(strict)
        wanted = self._pointer(self._directory / ACTIVE_FILE)
        if wanted is None or wanted == self._active.version:
            return False
        entry = entries.get(wanted)
        if entry is None:
            message = f"{self._directory / ACTIVE_FILE} names {wanted!r}, which no valid policy file has"
            if strict:
                raise PolicyError(message)
            log.error("%s; staying on %s", message, self._active.version)
            self._on_error()
            return False
        self._switch(entry, "read from the folder")
        return True

    def _refresh_tenants(self, strict: bool) -> None:
        assert self._directory is not None
        chosen: dict[str, PolicyEntry] = {}
        folder = self._directory / TENANTS_DIR
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.name.startswith("."):
                continue
            wanted = self._pointer(path)
            entry = self._entries.get(wanted or "")
            if entry is None:
                message = f"{path} names {wanted!r}, which no valid policy file has"
                if strict:
                    raise PolicyError(message)
                log.error("%s; tenant %s stays on its previous choice", message, path.name)
                self._on_error()
                if path.name in self._tenants:
                    chosen[path.name] = self._tenants[path.name]
                continue
            chosen[path.name] = entry
        self._tenants = chosen

    async def watch(
        self, interval_s: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        """Re-read the folder every ``interval_s`` until cancelled (the services run this)."""
        while True:
            await sleep(interval_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:
                log.exception("policy folder check failed")
                self._on_error()

    def _switch(self, entry: PolicyEntry, how: str) -> None:
        if entry.version != self._active.version:
            log.info(
                "learning-state policy %s -> %s (%s, %s)",
                self._active.version,
                entry.version,
                how,
                entry.source,
            )
        self._active = entry
        self._on_switch(entry.version)

    def _pointer_path(self, tenant: str) -> Path:
        assert self._directory is not None
        if tenant == DEFAULT_TENANT:
            return self._directory / ACTIVE_FILE
        if not TENANT_PATTERN.fullmatch(tenant):  # a file name under our folder, never a path
            raise ValueError(f"not a tenant name: {tenant!r}")
        return self._directory / TENANTS_DIR / tenant

    @staticmethod
    def _pointer(path: Path) -> str | None:
        try:
            return path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _scan_signature(self) -> _Signature:
        assert self._directory is not None
        seen = []
        tenants = self._directory / TENANTS_DIR
        for path in [
            *sorted(self._directory.iterdir()),
            *(sorted(tenants.iterdir()) if tenants.is_dir() else []),
        ]:
            if path.name == ACTIVE_FILE or path.suffix == ".toml" or path.parent == tenants:
                try:
                    stat = path.stat()
                except FileNotFoundError:  # removed while we looked
                    continue
                seen.append((path.name, stat.st_mtime_ns, stat.st_size))
        return tuple(seen)

    def _check_compatible(self, policy: Policy, path: Path) -> None:
        now, then = policy.trajectory, self._initial.trajectory
        if (now.ttl_seconds, now.max_history) != (then.ttl_seconds, then.max_history):
            raise PolicyError(
                f"{path}: trajectory ttl_seconds/max_history ({now.ttl_seconds}, {now.max_history}) differ "
                f"from the start-up policy's ({then.ttl_seconds}, {then.max_history}): the learner store "
                "was sized at start-up; that change needs a restart"
            )
