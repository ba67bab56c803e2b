"""Tutor alerts: when a learner's intervention level reaches what their tenant asked to hear about, a signed
webhook tells the tenant's system (a tutor dashboard, a pager), so a platform need not watch every answer.

The operator lists each tenant's webhook in ``GATEWAY_ALERTS_FILE`` (JSON):

    {"acme": {"url": "https://lms.example/hooks/emotions", "secret": "<32+ characters>",
              "min_level": "significant"}}

An analysed text with a ``learner_id`` whose ``intervention_level`` is ``min_level`` or higher becomes one
event (``learner.intervention``): the learner, the result id, the level, the risk score, the readiness
state, the primary emotion, the learning signals detected, the model and policy versions; never the text.
A learner alerted once is not alerted again for ``GATEWAY_ALERT_COOLDOWN_S`` unless the level rises above
the one alerted: decided by the sender, off the request path, in the learner store's Redis when it is
there (one cool-down for every replica), else per replica. Erasing a learner drops their cool-down and
what is still queued for them.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from contract.names import LEARNING_SIGNALS
from gateway.backends.webhooks import Delivery, WebhookSender
from gateway.core.analysis import Analysis
from gateway.core.tenants import TENANT_PATTERN, learner_key
from gateway.learning.policy import INTERVENTION_LEVELS

log = logging.getLogger(__name__)

EVENT_TYPE = "learner.intervention"
MIN_SECRET_CHARS = 32


@dataclass(frozen=True)
class Hook:
    url: str
    secret: str
    min_level: str


def read_hooks(path: Path) -> dict[str, Hook]:
    """Each tenant's webhook from the alerts file; ValueError naming what is wrong."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"GATEWAY_ALERTS_FILE {path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"GATEWAY_ALERTS_FILE {path}: a JSON object of tenant -> webhook")
    hooks = {}
    for tenant, entry in data.items():
        where = f"GATEWAY_ALERTS_FILE {path}, tenant {tenant!r}"
        if not TENANT_PATTERN.fullmatch(tenant):
            raise ValueError(f"{where}: not a tenant id")
        if not isinstance(entry, dict) or set(entry) - {"url", "secret", "min_level"}:
            raise ValueError(f"{where}: give url, secret and min_level (nothing else)")
        url, secret, level = entry.get("url"), entry.get("secret"), entry.get("min_level", "significant")
        if not isinstance(url, str):
            raise ValueError(f"{where}: url must be an http(s) URL")
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{where}: url must be an http(s) URL")
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"{where}: url must be https (plain http only to this machine)")
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"{where}: secret must be at least {MIN_SECRET_CHARS} characters")
        if level not in INTERVENTION_LEVELS[1:]:
            raise ValueError(f"{where}: min_level must be one of {list(INTERVENTION_LEVELS[1:])}")
        hooks[tenant] = Hook(url, secret, level)
    return hooks


class Alerts:
    """Which analyses become alert candidates (the tenant's level) and their events; ``sender`` applies the
    cool-down (off the request path) and delivers them."""

    def __init__(self, hooks: dict[str, Hook], sender: WebhookSender) -> None:
        self.hooks = hooks
        self.sender = sender

    def consider(self, analysis: Analysis, tenant: str, learner_id: str | None) -> None:
        """Queue an alert for each text of ``analysis`` at or over the tenant's level (never raises)."""
        hook = self.hooks.get(tenant)
        if hook is None or learner_id is None:
            return
        try:
            self._consider(analysis, tenant, learner_id, hook)
        except Exception:  # an alert must never fail the answer it is about
            log.exception("could not queue an alert")

    def _consider(self, analysis: Analysis, tenant: str, learner_id: str, hook: Hook) -> None:
        learner = learner_key(tenant, learner_id)
        floor = INTERVENTION_LEVELS.index(hook.min_level)
        for index, result in enumerate(analysis.results):
            level = INTERVENTION_LEVELS.index(result.state.intervention_level)
            if level < floor:
                continue
            event_id = uuid.uuid4().hex
            event = {
                "type": EVENT_TYPE,
                "id": event_id,
                "created": datetime.now(UTC).isoformat(),
                "tenant": tenant,
                "learner_id": learner_id,
                "result_id": analysis.result_id(index),
                "intervention_level": result.state.intervention_level,
                "risk_score": result.state.risk_score,
                "readiness_state": result.state.readiness_state,
                "primary_emotion": result.primary_emotion,
                "signal_labels": [x for x in result.prediction.labels if x in LEARNING_SIGNALS],
                "model_version": result.prediction.model_version,
                "policy_version": analysis.policy_version,
            }
            body = json.dumps(event, separators=(",", ":")).encode()
            self.sender.submit(Delivery(hook.url, hook.secret.encode(), body, event_id, learner, level))

    async def forget(self, tenant: str, learner_id: str) -> None:
        await self.sender.forget(learner_key(tenant, learner_id))
