"""Gateway settings: every option from the environment (``GATEWAY_`` prefix) or a ``.env`` file."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080

    # Triton (gRPC): where, which model, how long one call may take.
    triton_url: str = "127.0.0.1:8001"
    triton_model: str = "goemotions"
    triton_timeout_s: float = Field(default=5.0, gt=0)
    labels_file: Path = REPO_ROOT / "model_repository" / "labels.json"

    # Input limits.
    max_texts: int = Field(default=32, ge=1, le=1024)
    max_text_chars: int = Field(default=5000, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)

    # Overload: requests past this many in flight get 429 at once instead of queueing.
    max_concurrency: int = Field(default=64, ge=1)
    retry_after_s: int = Field(default=1, ge=1)

    # Result cache and learner history: in-process by default, Redis when a URL is given.
    cache_backend: Literal["memory", "redis", "off"] = "memory"
    cache_size: int = Field(default=100_000, ge=1)
    cache_ttl_s: float = Field(default=3600.0, gt=0)
    trajectory_backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None

    policy_file: Path | None = None  # None: gateway/learning/policy.toml

    # Per-client rate limit (per API key; per client address when auth is off). 0 = off.
    rate_limit_per_minute: int = Field(default=0, ge=0)
    # Browser origins allowed by CORS; empty = CORS off (no CORS headers at all).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # API keys: auth is off while both are empty. A key file holds one key per line.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # GATEWAY_API_KEYS="k1,k2" as well as a JSON list.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    def resolved_api_keys(self) -> list[str]:
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            keys += [line.strip() for line in self.api_keys_file.read_text().splitlines() if line.strip()]
        return keys


@lru_cache
def get_settings() -> Settings:
    return Settings()
