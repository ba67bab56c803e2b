"""Which model to serve: MODEL when given, else the documented hub model if the hub answers, else
the offline student (trained here once, then cached)."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HUB_MODEL = "SamLowe/roberta-base-go_emotions"
STUDENT_DIR = REPO_ROOT / "build" / "models" / "student"
EXPORTS_DIR = REPO_ROOT / "build" / "exports"
HUB_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelChoice:
    ref: str  # hub id or local directory
    kind: str  # "given" | "hub" | "student"
    reason: str


def hub_reachable(model_id: str, timeout: float = HUB_TIMEOUT_S) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ) not in ("", "0"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/api/models/{model_id}", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bool(response.status < 400)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def choose_model(
    explicit: str | None = None, hub_model: str = DEFAULT_HUB_MODEL, timeout: float = HUB_TIMEOUT_S
) -> ModelChoice:
    if explicit:
        where = "local directory" if Path(explicit).is_dir() else "hub id"
        return ModelChoice(explicit, "given", f"MODEL={explicit} given ({where})")
    if hub_reachable(hub_model, timeout):
        return ModelChoice(hub_model, "hub", f"the Hugging Face hub answered; using {hub_model}")
    return ModelChoice(
        str(STUDENT_DIR),
        "student",
        f"the Hugging Face hub did not answer within {timeout:.0f} s (offline?); using the offline student "
        f"fine-tuned here from all-MiniLM-L6-v2",
    )
